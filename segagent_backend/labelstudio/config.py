"""The label config, read with the SDK's ``LabelInterface``: which tags this backend reads and writes."""
from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import Optional

from label_studio_sdk.label_interface import LabelInterface

from ..errors import RequestError
from .control_models import BoxInput, BrushLabelsModel, ClickInput, PolygonLabelsModel, TrajectoryOutput
from .control_models.base import MaskOutput, is_smart

EXAMPLE_CONFIG = (
    '<View>\n'
    '  <Image name="image" value="$image" zoom="true"/>\n'
    '  <Text name="expression" value="$expression"/>\n'
    '  <BrushLabels name="mask" toName="image"><Label value="Object"/></BrushLabels>\n'
    '  <KeyPointLabels name="click" toName="image" smart="true"><Label value="Object" smart="true"/></KeyPointLabels>\n'
    '  <RectangleLabels name="box" toName="image" smart="true"><Label value="Object"/></RectangleLabels>\n'
    '  <KeyPointLabels name="trajectory" toName="image"><Label value="positive"/><Label value="negative"/></KeyPointLabels>\n'
    '</View>'
)

_TEXT_OBJECTS = ("text", "hypertext", "header")
# A parsed config costs ~50x its text in memory: the cache keeps at most this many characters of config
# text (~50 MB parsed), least recently used first out; a config larger than the budget is not kept.
CACHE_BUDGET_CHARS = 1_000_000
# Beyond any SEGAGENT_MAX_LABEL_CONFIG_KB: the HTTP layer applies the setting, this bounds every other caller.
HARD_MAX_CHARS = 4_000_000
# Label Studio configs never declare a DTD or entities; refusing them keeps XML entity tricks out of lxml.
_DTD = re.compile(r"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


class ConfigError(RequestError):
    """A label config this backend cannot work with; the message says what is missing."""

    def __init__(self, problem: str):
        super().__init__(f"{problem}. A working label config looks like:\n{EXAMPLE_CONFIG}", 400)
        self.problem = problem


@dataclass(frozen=True)
class LabelConfig:
    """The parts of a label config that matter here.

    image_name / image_field: the Image object and the task data key holding its URL.
    brush / polygons: where masks are written (BrushLabels as brush RLE, PolygonLabels as polygons; at
    least one, both when the config has both). clicks / box: smart controls bringing the annotator's prompts.
    trajectory: a plain KeyPointLabels control to show our clicks on. expression_field: the task
    data key holding the referring expression (None: use the brush label's text).
    """

    image_name: str
    image_field: str
    brush: Optional[BrushLabelsModel]
    clicks: Optional[ClickInput]
    box: Optional[BoxInput]
    trajectory: Optional[TrajectoryOutput]
    expression_field: Optional[str]
    polygons: Optional[PolygonLabelsModel] = None
    # a smart BrushLabels: the annotator's brush regions arrive in the context, a mask to refine
    brush_input: Optional[BrushLabelsModel] = None

    @property
    def interactive(self) -> bool:
        return self.clicks is not None or self.box is not None or self.brush_input is not None

    @property
    def outputs(self) -> list[MaskOutput]:
        """The controls a mask is written to, brush first."""
        return [c for c in (self.brush, self.polygons) if c is not None]

    @property
    def labels(self) -> list[str]:
        """The labels of the first mask control (the object's name when no expression field is set)."""
        return self.outputs[0].labels

    def to_json(self) -> dict:
        """The parsed config as JSON: names and labels, nothing to parse again (``from_json``)."""
        return {f.name: _control_json(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_json(cls, data: dict) -> "LabelConfig":
        """The config ``to_json`` wrote: rebuilt, not parsed (a queue worker trusts its web process's parse)."""
        return cls(**{name: (_CONTROLS[name](value["name"], value["labels"]) if name in _CONTROLS and value
                             else value) for name, value in data.items() if name in cls.__dataclass_fields__})


#: the LabelConfig fields holding a control, with their models
_CONTROLS = {"brush": BrushLabelsModel, "clicks": ClickInput, "box": BoxInput, "trajectory": TrajectoryOutput,
             "polygons": PolygonLabelsModel, "brush_input": BrushLabelsModel}


def _control_json(value):
    return {"name": value.name, "labels": list(value.labels)} if hasattr(value, "labels") else value


def parse_label_config(xml: str, expression_field: Optional[str] = None,
                       max_chars: Optional[int] = None) -> LabelConfig:
    """Parse ``xml`` (Label Studio's label config). Raises ConfigError when it cannot work.

    ``max_chars``: the largest config accepted (SEGAGENT_MAX_LABEL_CONFIG_KB; at most HARD_MAX_CHARS).
    """
    if not isinstance(xml, str) or not xml.strip():
        raise ConfigError("the label config is empty")
    limit = min(max_chars or HARD_MAX_CHARS, HARD_MAX_CHARS)
    if len(xml) > limit:
        raise RequestError(f"the label config has {len(xml)} characters, above {limit} "
                           f"(SEGAGENT_MAX_LABEL_CONFIG_KB)", 413)
    if _DTD.search(xml):
        raise ConfigError("the label config declares a DOCTYPE or ENTITY, which Label Studio configs never need")
    key = (xml, expression_field)
    with _cache_lock:
        found = _cache.get(key)
        if found is not None:
            _cache.move_to_end(key)
            return found
    try:
        config = _parse(xml, expression_field)
    except ConfigError:
        raise
    except (Exception, RecursionError):  # the SDK reading an odd (deep, strange) tree: the caller's config
        raise ConfigError("the label config cannot be read by Label Studio's SDK") from None
    _remember(key, config)
    return config


_cache: "OrderedDict[tuple[str, Optional[str]], LabelConfig]" = OrderedDict()
_cache_lock = threading.Lock()
_cache_chars = 0


def _remember(key: tuple[str, Optional[str]], config: LabelConfig) -> None:
    """Keep ``config`` while the cache's config text stays within CACHE_BUDGET_CHARS (LRU out first)."""
    global _cache_chars
    size = len(key[0])
    if size > CACHE_BUDGET_CHARS:
        return
    with _cache_lock:
        if key in _cache:
            return
        _cache[key] = config
        _cache_chars += size
        while _cache_chars > CACHE_BUDGET_CHARS:
            old, _ = _cache.popitem(last=False)
            _cache_chars -= len(old[0])


def cache_chars() -> int:
    """Characters of config text the parse cache holds now (bounded by CACHE_BUDGET_CHARS)."""
    return _cache_chars


def _parse(xml: str, expression_field: Optional[str]) -> LabelConfig:
    try:
        interface = LabelInterface(xml)
    except Exception as exc:  # the SDK raises several exception types for bad XML
        raise ConfigError(f"the label config is not valid XML ({_xml_problem(exc)})") from None
    controls = list(interface.controls or [])
    images = [o for o in (interface.objects or []) if o.tag.lower() == "image"]
    if not images:
        raise ConfigError("the label config has no <Image> object")
    # the first image with a BrushLabels control, else the first with a PolygonLabels control
    outputs = [i for model in (BrushLabelsModel, PolygonLabelsModel) for i in images
               if any(model.is_control_matched(c, i.name) for c in controls)]
    if not outputs:
        raise ConfigError("the label config has no <BrushLabels> or <PolygonLabels> control pointing at an "
                          "<Image> (toName)")
    image = outputs[0]

    def first(model):
        found = [c for c in controls if model.is_control_matched(c, image.name)]
        return model.of(found[0]) if found else None

    return LabelConfig(
        image_name=image.name,
        image_field=image.value_name or image.name,
        brush=first(BrushLabelsModel),
        polygons=first(PolygonLabelsModel),
        clicks=first(ClickInput),
        box=first(BoxInput),
        brush_input=_smart_brush(controls, image.name),
        trajectory=first(TrajectoryOutput),
        expression_field=expression_field or _expression_field(interface),
    )


def _smart_brush(controls: list, image_name: str) -> Optional[BrushLabelsModel]:
    """The first smart BrushLabels on the image (``smart``/``smartOnly`` or a smart label), or None."""
    found = [c for c in controls if BrushLabelsModel.is_control_matched(c, image_name) and is_smart(c)]
    return BrushLabelsModel.of(found[0]) if found else None


def _expression_field(interface: LabelInterface) -> Optional[str]:
    """The data key of the first text-like object (``<Text value="$expression"/>``)."""
    for obj in interface.objects or []:
        value = obj.value or ""
        if obj.tag.lower() in _TEXT_OBJECTS and value.startswith("$"):
            return value[1:]
    for node in interface._tree.iter():  # Header is a visual tag, not an object, in the SDK
        value = node.attrib.get("value", "")
        if str(node.tag).lower() == "header" and value.startswith("$"):
            return value[1:]
    return None


def _xml_problem(exc: Exception) -> str:
    """What is wrong, for the caller: the XML parser's own line/column message, never other exception text."""
    from lxml import etree

    if isinstance(exc, etree.XMLSyntaxError) and exc.msg:
        text = str(exc.msg)
        return text if len(text) <= 200 else text[:197] + "..."
    return "Label Studio's SDK cannot read it"
