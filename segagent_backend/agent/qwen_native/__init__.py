"""Native Qwen-VL-Chat (the base of the released SegAgent-Qwen) on transformers 5.x, no remote code.

- :mod:`.vision`: the ViT + resampler vision tower and the release's image preprocessing;
- :mod:`.convert`: checkpoint names -> transformers' ``Qwen2ForCausalLM`` (+ the Qwen2Config);
- :mod:`.tokenizer`: the tiktoken tokenizer (``qwen.tiktoken``) with the ``<img>`` span handling;
- :mod:`.model`: :class:`QwenVLChatNative` (image splicing, forward, generate with stop words);
- :mod:`.loader`: :func:`load_qwen_vl_chat_native` (config.json + weights + qwen.tiktoken only);
- :mod:`.save`: :func:`save_qwen_vl_chat_native` (the inverse: a folder under the original names).
"""
from .loader import load_native_model, load_qwen_vl_chat_native
from .save import save_qwen_vl_chat_native
from .model import MAX_POSITIONS, PromptTooLongError, QwenVLChatNative, stop_words_processor
from .tokenizer import IMAGE_PLACEHOLDER, QwenTokenizer
from .vision import QwenVisionTower, preprocess_images, released_jpeg

__all__ = ["IMAGE_PLACEHOLDER", "MAX_POSITIONS", "PromptTooLongError", "QwenTokenizer", "QwenVLChatNative",
           "QwenVisionTower", "load_native_model", "load_qwen_vl_chat_native", "preprocess_images",
           "released_jpeg", "save_qwen_vl_chat_native", "stop_words_processor"]
