"""The native Qwen-VL-Chat (SegAgent-Qwen) as a fine-tuning target: which bases take this path, the model
the Trainer sees (loss on the answer tokens only) and where LoRA goes (the LM decoder's linears)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import torch

from .sft_data import IGNORE_INDEX

NATIVE_KIND = "qwen-vl-chat"  # the policy kind of the native Qwen-VL-Chat (SegAgent-Qwen) path


def is_qwen_vl_chat(base: Union[str, Path]) -> bool:
    """Whether ``base`` is a local Qwen-VL-Chat folder (config.json ``model_type: qwen`` with a vision block)."""
    path = Path(str(base)).expanduser() / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("model_type") == "qwen" and isinstance(config.get("visual"), dict)


def uses_native_path(base: Union[str, Path], policy_kind: Optional[str] = None) -> bool:
    """The native path trains ``policy_kind`` qwen-vl-chat and any Qwen-VL-Chat folder (which the hf-vlm
    loader cannot read: its modelling code is remote code)."""
    return policy_kind == NATIVE_KIND or is_qwen_vl_chat(base)


class NativeSFTModel(torch.nn.Module):
    """A :class:`~segagent_backend.agent.qwen_native.QwenVLChatNative` as a Trainer model.

    ``forward(input_ids, attention_mask, labels, pixel_values)`` runs the model's own ``embed`` (image
    features spliced, vision tower under no_grad) and its ``positions`` (row index), then the LM head only
    on the positions that predict a label: the mean cross entropy over the answer tokens, as
    ``Qwen2ForCausalLM`` computes it, without the (batch, length, 151936) logits of the prompt. The vision
    tower stays in eval mode.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.visual.eval()
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                pixel_values: Optional[torch.Tensor] = None) -> dict:
        from segagent_backend.agent.qwen_native.model import check_length

        check_length(input_ids.shape[1])
        device = self.model.device
        input_ids, attention_mask, labels = input_ids.to(device), attention_mask.to(device), labels.to(device)
        embeds = self.model.embed(input_ids, pixel_values)
        hidden = self.model.lm.model(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False,
                                     position_ids=self.model.positions(input_ids)).last_hidden_state
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        logits = self.model.lm.lm_head(hidden[:, :-1][keep]).float()
        return {"loss": torch.nn.functional.cross_entropy(logits, targets[keep])}


def native_lora_targets(wrapper: NativeSFTModel) -> list[str]:
    """Qualified names (in ``wrapper``) of the LM decoder's linear layers: q/k/v/o, gate/up/down."""
    names = [f"model.lm.model.{n}" for n, m in wrapper.model.lm.model.named_modules() if isinstance(m, torch.nn.Linear)]
    if not names:
        raise ValueError("no linear layer in the Qwen-VL-Chat language model")
    return names


def prepare_native(model, config, checkpointing: bool):
    """The trainable wrapper: LoRA on the LM decoder's linears, or (full) the whole LM; vision frozen."""
    model.requires_grad_(False)  # the vision tower (resampler included) is never trained
    if checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model.lm, "activation_checkpointing_enable"):
            model.lm.activation_checkpointing_enable(kwargs)
        else:
            model.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.lm.config.use_cache = False
    wrapper = NativeSFTModel(model)
    if config.method == "full":
        model.lm.requires_grad_(True)
        return wrapper
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=native_lora_targets(wrapper), bias="none")
    return get_peft_model(wrapper, lora)
