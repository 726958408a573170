"""One module per Label Studio control tag; each decides whether it matches a control."""
from .brush_labels import BrushLabelsModel
from .keypoint_labels import ClickInput, TrajectoryOutput
from .polygon_labels import PolygonLabelsModel
from .rectangle_labels import BoxInput

__all__ = ["BrushLabelsModel", "PolygonLabelsModel", "ClickInput", "TrajectoryOutput", "BoxInput"]
