"""Inert stand-ins: Qwen-VL's ``chat_stream`` imports these; the oracle never streams."""


class NewGenerationMixin:
    def generate(self, *args, **kwargs):
        raise NotImplementedError("streaming generation is not available in the oracle stand-in")

    sample_stream = generate


class StreamGenerationConfig:
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("streaming generation is not available in the oracle stand-in")
