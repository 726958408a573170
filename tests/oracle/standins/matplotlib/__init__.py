"""Stand-in for matplotlib (oracle tests only): Qwen-VL's tokenizer imports it for drawing boxes."""
__version__ = "0.0.0+standin"
