"""Inert stand-in: only the names Qwen-VL's tokenizer touches."""
TABLEAU_COLORS = {"tab:blue": "#1f77b4", "tab:orange": "#ff7f0e", "tab:green": "#2ca02c"}


def to_rgb(color):
    raise NotImplementedError("drawing is not available in the oracle stand-in")
