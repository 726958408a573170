"""Interactive sessions: which object a click refines, when Label Studio's screen no longer says.

Accepting a suggestion (Auto-Accept on, or the check mark) keeps the brush region in the annotation and
deletes the smart keypoints that made it (the editor's ``acceptAllSuggestions`` -> ``deleteAllDynamicregions``):
the next click arrives alone in the context, and a negative click alone would start (and empty) a new object.
So every interactive answer is remembered per task: the clicks, box and start mask that made it, the brush
region's id, the mask's bounds and the annotator. A request continues that object when

- its context still holds remembered prompts (Auto-Accept off: Label Studio sends every click so far), or
- its prompts are all new, the accepted region is still in the annotation (the task's draft names its id;
  no draft, or one saved before the accept, says nothing), and the new click is negative or near the mask.

A continued answer replays every click (so it equals what the same clicks give with Auto-Accept off) and
reuses the region's id: ``acceptSuggestion`` overwrites the area with the suggestion's id instead of adding
one. A lone positive click (or a box) away from the last mask starts a new object. Where nothing is
remembered (another process, a restart), a click on a brush region of the task's draft continues from that
region's mask.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Optional, Protocol

import numpy as np

from ..errors import RequestError
from .context import Prompt, brush_region
from .control_models.keypoint_labels import PercentClick
from .control_models.rectangle_labels import PercentBox

#: how long an object stays refinable after its last click (seconds)
SESSION_TTL = 3600
#: a click this far outside the last mask's bounds (fraction of their size, at least MIN_MARGIN % of the
#: image) is on another object
MARGIN, MIN_MARGIN = 0.25, 2.0


def new_region_id() -> str:
    return uuid.uuid4().hex[:10]


@dataclass
class Session:
    """The object one task's last interactive answer drew. Percent coordinates, as Label Studio's."""

    region_id: str
    prompt_ids: list[str]
    clicks: list[PercentClick]
    box: Optional[PercentBox] = None
    start: Optional[tuple[str, list, tuple[int, int]]] = None  # a draft's brush region it started from
    bounds: tuple[float, float, float, float] = (0.0, 0.0, 100.0, 100.0)  # x0, y0, x1, y1 of the mask
    user: Optional[str] = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Session":
        data = json.loads(text)
        data["clicks"] = [PercentClick(**c) for c in data["clicks"]]
        data["box"] = PercentBox(**data["box"]) if data["box"] else None
        data["start"] = (data["start"][0], data["start"][1], tuple(data["start"][2])) if data["start"] else None
        data["bounds"] = tuple(data["bounds"])
        return cls(**data)


@dataclass
class Continued:
    """The prompt to run (the remembered one merged in where the object continues) and its region id."""

    prompt: Prompt
    region_id: str
    remembered: list[str] = field(default_factory=list)  # prompt ids of the object before this request
    draft_start: Optional[tuple[str, list, tuple[int, int]]] = None  # a draft's region it continues


class SessionStore(Protocol):
    def get(self, key: str) -> Optional[Session]: ...

    def put(self, key: str, session: Session) -> None: ...


class MemorySessions:
    """This process's sessions: the most recent ``capacity``, each for ``ttl`` seconds (embedded mode)."""

    def __init__(self, capacity: int = 10_000, ttl: float = SESSION_TTL):
        self._items: "OrderedDict[str, tuple[float, Session]]" = OrderedDict()
        self._lock, self.capacity, self.ttl = threading.Lock(), capacity, ttl

    def get(self, key: str) -> Optional[Session]:
        with self._lock:
            stamped = self._items.get(key)
            if stamped is None or time.monotonic() - stamped[0] > self.ttl:
                self._items.pop(key, None)
                return None
            return stamped[1]

    def put(self, key: str, session: Session) -> None:
        with self._lock:
            self._items[key] = (time.monotonic(), session)
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)


class RedisSessions:
    """Sessions shared by every worker (queue mode: one annotator's clicks may reach different workers)."""

    def __init__(self, connection, prefix: str, ttl: int = SESSION_TTL):
        self.connection, self.prefix, self.ttl = connection, prefix, ttl

    def get(self, key: str) -> Optional[Session]:
        raw = self.connection.get(f"{self.prefix}:click-session:{key}")
        return Session.from_json(raw) if raw else None

    def put(self, key: str, session: Session) -> None:
        self.connection.set(f"{self.prefix}:click-session:{key}", session.to_json(), ex=self.ttl)


# ----- which object a request refines ------------------------------------------------------------------
def continue_object(prompt: Prompt, session: Optional[Session], task: Any, mask_controls: set[str],
                    max_pixels: Optional[int] = None) -> Continued:
    """The prompt to run for ``task`` and the brush region id to answer with (see the module docstring).
    ``mask_controls``: the names of the config's BrushLabels, whose regions in a draft are masks we drew."""
    if prompt.brushes:  # a smart BrushLabels brings its own start mask
        return Continued(prompt, new_region_id())
    user = draft_user(task)
    if session is not None and None not in (user, session.user) and user != session.user:
        session = None  # another annotator's object
    if session is not None and set(prompt.ids) & set(session.prompt_ids):  # Label Studio still holds them
        return _continued(prompt, session, replay=False)
    drafts = _draft_results(task)
    if session is not None and _still_there(session, drafts) and _near(prompt, session.bounds):
        return _continued(prompt, session, replay=True)
    region = _region_at(prompt, drafts, mask_controls, max_pixels)
    if region is not None:  # nothing remembered: continue from the accepted region the click is on
        return Continued(replace(prompt, brushes=[region[1]]), region[0], draft_start=region[1])
    return Continued(prompt, new_region_id())


def remember(continued: Continued, mask: np.ndarray, task: Any) -> Session:
    """The session after answering ``continued`` with ``mask`` ((H, W) bool, not empty)."""
    prompt = continued.prompt
    ids = list(dict.fromkeys(continued.remembered + prompt.ids))
    return Session(continued.region_id, ids, list(prompt.clicks), prompt.box, continued.draft_start,
                   _percent_bounds(mask), draft_user(task))


def _continued(prompt: Prompt, session: Session, replay: bool) -> Continued:
    """The remembered object continued. ``replay``: Label Studio dropped the remembered clicks, so they go
    first; else it sent them itself. A draft's region it started from stays its start."""
    clicks = session.clicks + prompt.clicks if replay else prompt.clicks
    merged = replace(prompt, clicks=clicks, box=prompt.box or session.box,
                     brushes=[session.start] if session.start else [],
                     label=prompt.label or (session.clicks[0].label if session.clicks else None))
    return Continued(merged, session.region_id, session.prompt_ids, session.start)


def _draft_results(task: Any) -> Optional[list[dict]]:
    """The regions of the task's drafts as Label Studio sent them with the request; None without a draft."""
    drafts = task.get("drafts") if isinstance(task, dict) else None
    if not isinstance(drafts, list) or not drafts:
        return None
    return [r for d in drafts if isinstance(d, dict) and isinstance(d.get("result"), list)
            for r in d["result"] if isinstance(r, dict)]


def draft_user(task: Any) -> Optional[str]:
    """The annotator whose draft came with the request (Label Studio sends the requester's drafts)."""
    drafts = task.get("drafts") if isinstance(task, dict) else None
    users = {str(d.get("user")) for d in drafts or [] if isinstance(d, dict) and d.get("user") is not None}
    return users.pop() if len(users) == 1 else None


def _still_there(session: Session, drafts: Optional[list[dict]]) -> bool:
    """The remembered region is in the annotation, or no draft says otherwise: none was saved yet, or the
    one sent was saved before the accept (it still holds the object's own keypoints)."""
    if drafts is None:
        return True
    ids = {r.get("id") for r in drafts}
    return session.region_id in ids or bool(ids & set(session.prompt_ids))


def _near(prompt: Prompt, bounds: tuple[float, float, float, float]) -> bool:
    """A negative click refines the object; a positive one must land near it; a box alone is a new object."""
    if not prompt.clicks:
        return False
    if any(not c.positive for c in prompt.clicks):
        return True
    x0, y0, x1, y1 = bounds
    dx, dy = max(MARGIN * (x1 - x0), MIN_MARGIN), max(MARGIN * (y1 - y0), MIN_MARGIN)
    first = prompt.clicks[0]
    return x0 - dx <= first.x <= x1 + dx and y0 - dy <= first.y <= y1 + dy


def _region_at(prompt: Prompt, drafts: Optional[list[dict]], mask_controls: set[str],
               max_pixels: Optional[int]) -> Optional[tuple[str, tuple[str, list, tuple[int, int]]]]:
    """(id, checked brush region) of the draft's mask the first click is on, or None."""
    if not drafts or not prompt.clicks:
        return None
    click = prompt.clicks[0]
    for i, region in enumerate(drafts):
        if region.get("type") != "brushlabels" or region.get("from_name") not in mask_controls:
            continue
        try:
            checked = brush_region(region, f"task.drafts.result[{i}]", max_pixels)
            mask = Prompt(brushes=[checked]).mask()
        except RequestError:
            continue  # not a region we can read: it cannot be the one refined
        height, width = mask.shape
        row, col = min(int(click.y * height / 100), height - 1), min(int(click.x * width / 100), width - 1)
        if mask[row, col] or (click.positive and _near(Prompt(clicks=[click]), _percent_bounds(mask))):
            return str(region.get("id") or new_region_id()), checked
    return None


def _percent_bounds(mask: np.ndarray) -> tuple[float, float, float, float]:
    """x0, y0, x1, y1 of the mask's pixels, in percent of its size."""
    rows, cols = np.nonzero(mask)
    if not len(rows):
        return (0.0, 0.0, 0.0, 0.0)
    height, width = mask.shape
    return (100.0 * cols.min() / width, 100.0 * rows.min() / height,
            100.0 * (cols.max() + 1) / width, 100.0 * (rows.max() + 1) / height)
