"""The label config, read with the SDK's ``LabelInterface``: which tags this backend reads and writes."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

from label_studio_sdk.label_interface import LabelInterface

from ..errors import RequestError
from .control_models import BoxInput, BrushLabelsModel, ClickInput, TrajectoryOutput

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


class ConfigError(RequestError):
    """A label config this backend cannot work with; the message says what is missing."""

    def __init__(self, problem: str):
        super().__init__(f"{problem}. A working label config looks like:\n{EXAMPLE_CONFIG}", 400)
        self.problem = problem


@dataclass(frozen=True)
class LabelConfig:
    """The parts of a label config that matter here.

    image_name / image_field: the Image object and the task data key holding its URL.
    brush: where masks are written. clicks / box: smart controls bringing the annotator's prompts.
    trajectory: a plain KeyPointLabels control to show our clicks on. expression_field: the task
    data key holding the referring expression (None: use the brush label's text).
    """

    image_name: str
    image_field: str
    brush: BrushLabelsModel
    clicks: Optional[ClickInput]
    box: Optional[BoxInput]
    trajectory: Optional[TrajectoryOutput]
    expression_field: Optional[str]

    @property
    def interactive(self) -> bool:
        return self.clicks is not None or self.box is not None


def parse_label_config(xml: str, expression_field: Optional[str] = None) -> LabelConfig:
    """Parse ``xml`` (Label Studio's label config). Raises ConfigError when it cannot work."""
    if not isinstance(xml, str) or not xml.strip():
        raise ConfigError("the label config is empty")
    return _parse(xml, expression_field)


@lru_cache(maxsize=64)
def _parse(xml: str, expression_field: Optional[str]) -> LabelConfig:
    try:
        interface = LabelInterface(xml)
    except Exception as exc:  # the SDK raises several exception types for bad XML
        raise ConfigError(f"the label config is not valid XML ({exc})") from None
    controls = list(interface.controls or [])
    images = [o for o in (interface.objects or []) if o.tag.lower() == "image"]
    if not images:
        raise ConfigError("the label config has no <Image> object")
    brushes = [(c, i) for i in images for c in controls if BrushLabelsModel.is_control_matched(c, i.name)]
    if not brushes:
        raise ConfigError("the label config has no <BrushLabels> control pointing at an <Image> (toName)")
    brush, image = brushes[0]

    def first(model):
        found = [c for c in controls if model.is_control_matched(c, image.name)]
        return model(found[0]) if found else None

    return LabelConfig(
        image_name=image.name,
        image_field=image.value_name or image.name,
        brush=BrushLabelsModel(brush),
        clicks=first(ClickInput),
        box=first(BoxInput),
        trajectory=first(TrajectoryOutput),
        expression_field=expression_field or _expression_field(interface),
    )


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
