"""One module per Label Studio control tag; each decides whether it matches a control."""
from .brush_labels import BrushLabelsModel
from .keypoint_labels import ClickInput, TrajectoryOutput
from .rectangle_labels import BoxInput

__all__ = ["BrushLabelsModel", "ClickInput", "TrajectoryOutput", "BoxInput"]
