"""The Label Studio SDK client this service talks to (LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY)."""
from __future__ import annotations

from ..errors import RequestError
from ..settings import Settings


def label_studio(settings: Settings):
    """The SDK client for LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY (both required)."""
    from label_studio_sdk import LabelStudio

    if not settings.label_studio_url or not settings.label_studio_api_key:
        raise RequestError("pre-annotation talks to Label Studio: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY")
    return LabelStudio(base_url=settings.label_studio_url, api_key=settings.label_studio_api_key)
