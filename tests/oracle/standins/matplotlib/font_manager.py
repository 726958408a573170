"""Inert stand-in."""


class FontProperties:
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("drawing is not available in the oracle stand-in")
