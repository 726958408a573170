"""Stand-in for torchvision (oracle tests only): just ``transforms`` for Qwen-VL's ``visual.py``."""
from . import transforms  # noqa: F401

__version__ = "0.0.0+standin"
