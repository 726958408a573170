"""Where each project's Label Studio serves task images: LABEL_STUDIO_URL when set, else what /setup said
(only with SEGAGENT_TRUST_SETUP on: /setup is unauthenticated, and what it names receives the token)."""
from __future__ import annotations

from typing import Any, Optional

from ..media import MediaSource
from ..settings import Settings


def project_id(project: Any) -> Optional[str]:
    """Label Studio sends ``"3.1746612998"`` (id.timestamp) or a number: the id is before the dot."""
    if project is None:
        return None
    return str(project).split(".", 1)[0] or None


class ProjectSources:
    """The media source of every project this process heard of in /setup."""

    def __init__(self, default: MediaSource, pinned: bool = False, trust_setup: bool = False):
        """``pinned``: the settings name Label Studio (LABEL_STUDIO_URL), so ``default`` always wins;
        ``trust_setup``: what /setup says is remembered (off: ``remember`` ignores it)."""
        self.default = default
        self.pinned = pinned
        self.trust_setup = trust_setup
        self._known: dict[str, MediaSource] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> "ProjectSources":
        return cls(MediaSource(settings.label_studio_url, settings.label_studio_api_key),
                   pinned=bool(settings.label_studio_url), trust_setup=settings.trust_setup)

    def remember(self, project: Any, hostname: Any, access_token: Any = None) -> None:
        """What /setup sent: ``hostname`` (http(s) URL) and ``access_token`` of the project's Label Studio.

        Ignored unless SEGAGENT_TRUST_SETUP is on and LABEL_STUDIO_URL unset: an unauthenticated /setup
        must not repoint where a project's media come from and where its token is sent."""
        if self.pinned or not self.trust_setup:
            return
        pid = project_id(project)
        if pid and isinstance(hostname, str) and hostname.startswith(("http://", "https://")):
            self._known[pid] = MediaSource(hostname, access_token if isinstance(access_token, str) else None)

    def heard_of(self, project: Any) -> Optional[MediaSource]:
        """What /setup said about ``project`` (None: nothing)."""
        return self._known.get(project_id(project) or "")

    def source_for(self, project: Any) -> MediaSource:
        """The settings win; else what /setup told us about this project's Label Studio; else the default."""
        if self.pinned:
            return self.default
        return self.heard_of(project) or self.default
