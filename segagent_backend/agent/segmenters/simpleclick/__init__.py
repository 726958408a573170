"""SimpleClick (plain ViT-B/L/H, ICCV 2023), the paper's best tool, native: see ``model`` (the network),
``clicks`` (the click encoding), ``inference`` (the release's NoBRS + zoom-in + flip), ``checkpoint`` (reading
the published ``.pth`` files without running their pickled code) and ``segmenter`` (the ``Segmenter``)."""
from .checkpoint import load_simpleclick, read_checkpoint
from .inference import THRESHOLD, ClickState, predict
from .model import SimpleClickConfig, SimpleClickModel
from .segmenter import SimpleClickSegmenter

__all__ = ["ClickState", "SimpleClickConfig", "SimpleClickModel", "SimpleClickSegmenter", "THRESHOLD",
           "load_simpleclick", "predict", "read_checkpoint"]
