"""Supervised fine-tuning of the SegAgent policy on SFT samples (transformers ``Trainer`` + peft).

    result = finetune(samples, "Qwen/Qwen2-VL-2B-Instruct", Path("runs/sft"), FinetuneConfig())
    policy = HFVLMPolicy.from_pretrained(result.model_dir)

The base is loaded with the production loader (:func:`load_hf_vlm`); samples are encoded exactly as
the policy prompts at inference (``trainer.sft_data``); the loss is on the answer tokens only.
``method="lora"`` adapts the LANGUAGE model's linear layers (targeted by module path: LLaVA's
CLIP has ``q_proj`` too); ``"full"`` trains the language model, its embeddings and head and the
vision-language projector. The vision encoder stays frozen either way, as in SegAgent.

``out`` layout: ``checkpoints/`` (Trainer checkpoints; a rerun with the same ``out`` resumes from the
latest one), ``model/`` (a complete checkpoint folder, LoRA merged, written to a temporary folder
and renamed, so a crash never leaves half of one), ``loss.png``, ``train_log.json`` and
``run.json`` (what must not change between a run and its resumption).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from segagent_backend.agent.loading import resolve_device
from segagent_backend.agent.policies.hf_vlm import load_hf_vlm, save_processor, stop_token_ids

from .samples import SFTSample
from .sft_data import SFTCollator, SFTDataset, end_of_turn_id, split_target

METHODS = ("lora", "full")
PRECISIONS = ("auto", "bf16", "fp32")
VISION_MODULES = ("visual", "vision_tower", "vision_model")  # the vision encoder's attribute names
PROJECTOR_MODULES = ("multi_modal_projector", "merger", "mm_projector")  # trained by "full"
# a resumed run must agree with the checkpoint on these
RUN_KEYS = ("method", "batch_size", "gradient_accumulation", "lora_r", "lora_alpha", "lora_dropout", "seed",
            "forced_prefix")


@dataclass
class FinetuneConfig:
    """How to train. ``learning_rate`` None: 2e-4 for LoRA, 1e-5 (SegAgent's) for full fine-tuning.

    ``epochs`` over the samples, unless ``max_steps`` (optimizer steps) caps the run first. The
    effective batch is ``batch_size * gradient_accumulation``. ``precision`` auto: bf16 with
    gradient checkpointing on CUDA, fp32 on CPU; ``gradient_checkpointing`` None follows it.
    """

    method: str = "lora"
    epochs: float = 2.0
    learning_rate: Optional[float] = None
    batch_size: int = 8
    gradient_accumulation: int = 1
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    seed: int = 0
    save_steps: int = 200
    max_steps: Optional[int] = None
    device: str = "auto"
    precision: str = "auto"
    gradient_checkpointing: Optional[bool] = None
    lr_scheduler: str = "cosine"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    save_total_limit: int = 2
    num_workers: int = 0  # data loader processes encoding samples (0: in the training process)
    forced_prefix: bool = True  # train what a policy with this forced_prefix setting writes

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown fine-tuning method {self.method!r}: use {' or '.join(METHODS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}: use {', '.join(PRECISIONS)}")
        for name in ("batch_size", "gradient_accumulation", "save_steps", "save_total_limit", "lora_r"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.epochs <= 0 or (self.max_steps is not None and self.max_steps < 1):
            raise ValueError("epochs must be > 0 and max_steps >= 1 (or None)")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")

    @property
    def lr(self) -> float:
        if self.learning_rate is not None:
            return float(self.learning_rate)
        return 2e-4 if self.method == "lora" else 1e-5


@dataclass
class FinetuneResult:
    """model_dir: the merged checkpoint folder; losses: the training loss per logged step (the whole
    run, resumed parts included); steps: optimizer steps in total; samples_seen / seconds /
    samples_per_second: this call's training loop only (not loading or saving)."""

    model_dir: Path
    losses: list[float]
    steps: int
    samples_seen: int
    seconds: float
    samples_per_second: float
    resumed_from: Optional[Path] = None
    loss_steps: list[int] = field(default_factory=list)


def _submodule(model: torch.nn.Module, names: Sequence[str]) -> list[tuple[str, torch.nn.Module]]:
    """(qualified name, module) of the outermost modules whose own name is one of ``names``."""
    found: list[tuple[str, torch.nn.Module]] = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in names and not any(name.startswith(f + ".") for f, _ in found):
            found.append((name, module))
    return found


def language_model_linear_names(model: torch.nn.Module) -> list[str]:
    """Qualified names of every ``nn.Linear`` inside the language model (the LoRA targets)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    prefix = next((n for n, m in model.named_modules() if m is decoder), None) if decoder is not None else None
    if not prefix:
        prefix = next((n for n, _ in _submodule(model, ("language_model",))), None)
    if not prefix:
        raise ValueError(f"cannot find the language model of {type(model).__name__}")
    lm = model.get_submodule(prefix)
    names = [f"{prefix}.{n}" for n, m in lm.named_modules() if isinstance(m, torch.nn.Linear)]
    if not names:
        raise ValueError(f"{type(model).__name__}: no linear layer in the language model {prefix!r}")
    return names


def freeze_vision_encoder(model: torch.nn.Module, keep_projector: bool = True) -> list[str]:
    """Freeze the vision encoder (the projector stays trainable with ``keep_projector``); its names."""
    vision = _submodule(model, VISION_MODULES)
    if not vision:
        raise ValueError(f"cannot find the vision encoder of {type(model).__name__} (looked for {VISION_MODULES})")
    for _, module in vision:
        module.requires_grad_(False)
    if keep_projector:
        for _, module in _submodule(model, PROJECTOR_MODULES):
            module.requires_grad_(True)
    return [n for n, _ in vision]


def _prepare(model, config: FinetuneConfig, checkpointing: bool):
    """The model to train: LoRA-wrapped (peft) or partly frozen (full), with gradient checkpointing."""
    if checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x; the old name is deprecated
            model.activation_checkpointing_enable(kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.config.use_cache = False
    if config.method == "full":
        model.requires_grad_(True)
        freeze_vision_encoder(model)
        return model
    from peft import LoraConfig, get_peft_model

    if checkpointing:
        model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need a grad input
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=language_model_linear_names(model), bias="none")
    with warnings.catch_warnings():  # peft reads transformers' deprecated is_gradient_checkpointing
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, lora)


def _trainer_class():
    from transformers import Trainer

    class CountingTrainer(Trainer):
        """Counts the samples its training steps actually process."""

        samples_seen = 0

        def training_step(self, model, inputs, *args, **kwargs):
            self.samples_seen += int(inputs["input_ids"].shape[0])
            return super().training_step(model, inputs, *args, **kwargs)

    return CountingTrainer


def _check_run(out: Path, run: dict, resume: Optional[str]) -> None:
    path = out / "run.json"
    if resume and path.is_file():
        before = json.loads(path.read_text())
        diff = {k: (before.get(k), run[k]) for k in run if before.get(k) != run[k]}
        if diff:
            raise ValueError(f"{out} holds checkpoints of a different run ({diff}, as (was, now)): use another "
                             f"output folder or delete {out / 'checkpoints'}")
    _write_atomic(path, json.dumps(run, indent=2))


def _write_atomic(path: Path, text: Union[str, bytes]) -> None:
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temp.write_bytes(text if isinstance(text, bytes) else text.encode())
    os.replace(temp, path)


def _export(model, processor, out: Path) -> Path:
    """Save the trained model (LoRA merged) + processor as ``out/model``, via a temp folder + rename."""
    for stale in out.glob(".model.*"):
        shutil.rmtree(stale, ignore_errors=True)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if hasattr(model, "activation_checkpointing_disable"):
        model.activation_checkpointing_disable()
    else:
        model.gradient_checkpointing_disable()
    model.config.use_cache = True
    temp = out / f".model.tmp-{os.getpid()}"
    model.eval().save_pretrained(temp)
    save_processor(processor, temp)
    final = out / "model"
    if final.exists():
        old = out / f".model.old-{os.getpid()}"
        os.replace(final, old)
        os.replace(temp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(temp, final)
    return final


def finetune(samples: Sequence[SFTSample], base: Union[str, Path], out: Path, config: Optional[FinetuneConfig] = None,
             progress: bool = True) -> FinetuneResult:
    """Fine-tune ``base`` (a checkpoint folder or hub id) on ``samples``; write ``out`` (see the module).

    Reruns with the same ``out`` resume from the latest checkpoint in ``out/checkpoints`` (same
    method, batch and LoRA settings required; epochs / max_steps may grow). Raises ValueError for no
    samples, a bad config or a target that is not a SegAgent answer, ModelLoadError for a bad base.
    ``config`` None: ``FinetuneConfig()``; ``progress``: Trainer's progress bar.
    """
    from transformers import TrainingArguments, set_seed
    from transformers.trainer_callback import PrinterCallback
    from transformers.trainer_utils import get_last_checkpoint

    if not samples:
        raise ValueError("no SFT samples to train on")
    config = config if config is not None else FinetuneConfig()
    for sample in samples:  # before the (slow) load: a target that is not an answer fails at once
        split_target(sample, config.forced_prefix)
    out = Path(out)
    dev = resolve_device(config.device)
    bf16 = config.precision == "bf16" or (config.precision == "auto" and dev.type == "cuda")
    checkpointing = dev.type == "cuda" if config.gradient_checkpointing is None else config.gradient_checkpointing
    model, processor = load_hf_vlm(base, device=config.device, dtype=torch.bfloat16 if bf16 else torch.float32)
    eot = end_of_turn_id(processor, stop_token_ids(model, processor.tokenizer))
    dataset = SFTDataset(samples, processor, eot, config.forced_prefix)
    pad_id = processor.tokenizer.pad_token_id if processor.tokenizer.pad_token_id is not None else eot

    out.mkdir(parents=True, exist_ok=True)
    checkpoints = out / "checkpoints"
    resume = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    where = Path(str(base)).expanduser()
    source = str(where.resolve()) if where.exists() else str(base)
    _check_run(out, dict({k: getattr(config, k) for k in RUN_KEYS}, base=source, samples=len(samples)), resume)

    set_seed(config.seed)  # LoRA's random init
    model = _prepare(model, config, checkpointing)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    args = TrainingArguments(
        output_dir=str(checkpoints), per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation, learning_rate=config.lr,
        num_train_epochs=config.epochs, max_steps=config.max_steps or -1, lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_steps, weight_decay=config.weight_decay, logging_strategy="steps",
        logging_steps=1, save_strategy="steps", save_steps=config.save_steps,
        save_total_limit=config.save_total_limit, report_to=[], remove_unused_columns=False,
        label_names=["labels"], seed=config.seed, data_seed=config.seed, bf16=bf16, use_cpu=dev.type == "cpu",
        disable_tqdm=not progress, dataloader_pin_memory=dev.type == "cuda",
        dataloader_num_workers=config.num_workers)
    trainer = _trainer_class()(model=model, args=args, train_dataset=dataset,
                               data_collator=SFTCollator(pad_id, torch.bfloat16 if bf16 else None))
    if not progress:
        trainer.remove_callback(PrinterCallback)

    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - start
    logged = [(int(e["step"]), float(e["loss"])) for e in trainer.state.log_history if "loss" in e]
    model_dir = _export(trainer.model, processor, out)
    seen = trainer.samples_seen
    result = FinetuneResult(model_dir, [loss for _, loss in logged], int(trainer.state.global_step), seen, seconds,
                            seen / seconds if seconds > 0 else 0.0, Path(resume) if resume else None,
                            [step for step, _ in logged])
    _write_atomic(out / "loss.png", draw_loss_curve(logged, f"{config.method} fine-tuning of {Path(str(base)).name}"))
    log = dict(base=str(base), config=asdict(config), learning_rate=config.lr, precision="bf16" if bf16 else "fp32",
               gradient_checkpointing=checkpointing, device=str(dev), samples=len(samples),
               trainable_parameters=trainable, steps=result.steps, samples_seen=seen, seconds=seconds,
               samples_per_second=result.samples_per_second, resumed_from=str(resume) if resume else None,
               losses=[{"step": s, "loss": v} for s, v in logged], model_dir=str(model_dir))
    _write_atomic(out / "train_log.json", json.dumps(log, indent=2))
    return result


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [low, high]."""
    span = max(high - low, 1e-12)
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def draw_loss_curve(points: Sequence[tuple[int, float]], title: str = "training loss",
                    size: tuple[int, int] = (800, 480)) -> bytes:
    """A PNG (bytes) of loss against step drawn with OpenCV: axes, ticks, labels, title."""
    import cv2
    import numpy as np

    width, height = size
    left, right, top, bottom = 80, 30, 50, 60
    img = np.full((height, width, 3), 255, np.uint8)
    font, black, grey = cv2.FONT_HERSHEY_SIMPLEX, (0, 0, 0), (225, 225, 225)
    (tw, _), _ = cv2.getTextSize(title, font, 0.6, 1)
    cv2.putText(img, title, ((width - tw) // 2, 30), font, 0.6, black, 1, cv2.LINE_AA)
    x0, x1, y0, y1 = left, width - right, height - bottom, top
    steps = [s for s, _ in points] or [0, 1]
    losses = [v for _, v in points if math.isfinite(v)] or [0.0, 1.0]
    smin, smax = min(steps), max(max(steps), min(steps) + 1)
    low, high = min(losses), max(losses)
    pad = 0.05 * (high - low) or 0.5
    # from 0 unless the curve would be a flat line at the top (a small drop over a high floor)
    lmin, lmax = (min(0.0, low) if low < 0.5 * high else low - pad), high + pad

    def px(step: float, loss: float) -> tuple[int, int]:
        return (int(round(x0 + (step - smin) / (smax - smin) * (x1 - x0))),
                int(round(y0 - (loss - lmin) / (lmax - lmin) * (y0 - y1))))

    for t in _nice_ticks(lmin, lmax):
        y = px(smin, t)[1]
        cv2.line(img, (x0, y), (x1, y), grey, 1)
        label = f"{t:g}"
        (lw, lh), _ = cv2.getTextSize(label, font, 0.45, 1)
        cv2.putText(img, label, (x0 - lw - 8, y + lh // 2), font, 0.45, black, 1, cv2.LINE_AA)
    for t in _nice_ticks(smin, smax):
        x = px(t, lmin)[0]
        cv2.line(img, (x, y0), (x, y0 + 5), black, 1)
        label = f"{t:g}"
        (lw, lh), _ = cv2.getTextSize(label, font, 0.45, 1)
        cv2.putText(img, label, (x - lw // 2, y0 + lh + 10), font, 0.45, black, 1, cv2.LINE_AA)
    cv2.line(img, (x0, y0), (x1, y0), black, 1)
    cv2.line(img, (x0, y0), (x0, y1), black, 1)
    (lw, _), _ = cv2.getTextSize("step", font, 0.5, 1)
    cv2.putText(img, "step", ((x0 + x1 - lw) // 2, height - 12), font, 0.5, black, 1, cv2.LINE_AA)
    label = np.full((24, 60, 3), 255, np.uint8)  # the y label, written horizontally then turned
    cv2.putText(label, "loss", (8, 17), font, 0.5, black, 1, cv2.LINE_AA)
    label = cv2.rotate(label, cv2.ROTATE_90_COUNTERCLOCKWISE)
    cy = (y0 + y1) // 2 - label.shape[0] // 2
    img[cy: cy + label.shape[0], 8: 8 + label.shape[1]] = label
    curve = np.array([px(s, v) for s, v in points if math.isfinite(v)], np.int32)
    if len(curve) > 1:
        cv2.polylines(img, [curve.reshape(-1, 1, 2)], False, (180, 90, 20), 2, cv2.LINE_AA)
    for x, y in curve if len(curve) <= 60 else ():
        cv2.circle(img, (int(x), int(y)), 3, (180, 90, 20), -1, cv2.LINE_AA)
    if points:
        last = f"last {points[-1][1]:.4g} at step {points[-1][0]}"
        (lw, _), _ = cv2.getTextSize(last, font, 0.45, 1)
        cv2.putText(img, last, (x1 - lw, y1 - 8), font, 0.45, (80, 80, 80), 1, cv2.LINE_AA)
    ok, png = cv2.imencode(".png", img)
    if not ok:
        raise RuntimeError("OpenCV could not encode the loss curve")
    return png.tobytes()
