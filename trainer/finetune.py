"""Supervised fine-tuning of the SegAgent policy on SFT samples (transformers ``Trainer`` + peft).

    result = finetune(samples, "Qwen/Qwen2-VL-2B-Instruct", Path("runs/sft"), FinetuneConfig())
    policy = HFVLMPolicy.from_pretrained(result.model_dir)

The base is loaded with the production loader (:func:`load_hf_vlm`); samples are encoded exactly as
the policy prompts at inference (``trainer.sft_data``); the loss is on the answer tokens only.
``method="lora"`` adapts the LANGUAGE model's linear layers (targeted by module path: LLaVA's
CLIP has ``q_proj`` too); ``"full"`` trains the language model, its embeddings and head and the
vision-language projector. The vision encoder stays frozen either way, as in SegAgent.

A Qwen-VL-Chat base (the released SegAgent-Qwen: config.json ``model_type: qwen``, or ``policy_kind``
``qwen-vl-chat``) takes the native path: loaded with ``load_qwen_vl_chat_native``, samples encoded as
``QwenVLChatPolicy`` prompts (``sft_data.encode_native_sample``), trained through :class:`NativeSFTModel`
(LoRA on the LM decoder's q/k/v/o/gate/up/down, or the whole LM with ``full``; the vision tower and its
resampler frozen), and ``model/`` written in the release's own layout (original tensor names,
``qwen.tiktoken``), so the same loader and policy serve it.

``out`` layout: ``checkpoints/`` (Trainer checkpoints; a rerun with the same ``out`` resumes from the
latest one), ``model/`` (a complete checkpoint folder, LoRA merged, written to a temporary folder
and renamed, so a crash never leaves half of one), ``loss.png``, ``train_log.json`` and
``run.json`` (what must not change between a run and its resumption).
"""
from __future__ import annotations

import json
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

from .loss_curve import draw_loss_curve
from .native_sft import NATIVE_KIND, prepare_native, uses_native_path
from .samples import SFTSample
from .sft_data import NativeSFTDataset, SFTCollator, SFTDataset, end_of_turn_id, split_target

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


def last_complete_checkpoint(checkpoints: Path) -> Optional[str]:
    """The newest ``checkpoint-N`` the Trainer finished writing (its ``trainer_state.json`` is written last);
    one cut short by a killed process is deleted, so the run resumes from the one before."""
    done = []
    for folder in checkpoints.glob("checkpoint-*") if checkpoints.is_dir() else ():
        if not folder.name.split("-")[-1].isdigit():
            continue
        try:
            json.loads((folder / "trainer_state.json").read_text())
            done.append((int(folder.name.split("-")[-1]), folder))
        except (OSError, ValueError):
            shutil.rmtree(folder, ignore_errors=True)
    return str(max(done)[1]) if done else None


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
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if hasattr(model, "activation_checkpointing_disable"):
        model.activation_checkpointing_disable()
    else:
        model.gradient_checkpointing_disable()
    model.config.use_cache = True

    def save(temp: Path) -> None:
        model.eval().save_pretrained(temp)
        save_processor(processor, temp)

    return _export_atomic(save, out)


def _export_atomic(save, out: Path) -> Path:
    """``save(temp folder)`` then rename it to ``out/model`` (a crash never leaves half a model folder)."""
    for stale in out.glob(".model.*"):
        shutil.rmtree(stale, ignore_errors=True)
    temp = out / f".model.tmp-{os.getpid()}"
    save(temp)
    final = out / "model"
    if final.exists():
        old = out / f".model.old-{os.getpid()}"
        os.replace(final, old)
        os.replace(temp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(temp, final)
    return final


def _export_native(trained, base: Path, out: Path) -> Path:
    """Merge LoRA; write ``out/model`` in the release's layout (original names, qwen.tiktoken, the base's
    generation config and code files) atomically; it loads with ``load_qwen_vl_chat_native``."""
    from segagent_backend.agent.qwen_native import save_qwen_vl_chat_native
    from segagent_backend.agent.qwen_native.tokenizer import VOCAB_FILE

    if hasattr(trained, "merge_and_unload"):
        trained = trained.merge_and_unload()
    model = trained.model
    if hasattr(model.lm, "activation_checkpointing_disable"):
        model.lm.activation_checkpointing_disable()
    else:
        model.lm.gradient_checkpointing_disable()
    model.lm.config.use_cache = True
    model.eval().requires_grad_(False)
    return _export_atomic(lambda temp: save_qwen_vl_chat_native(model, temp, base / VOCAB_FILE, extra_files_from=base),
                          out)


def finetune(samples: Sequence[SFTSample], base: Union[str, Path], out: Path, config: Optional[FinetuneConfig] = None,
             progress: bool = True, policy_kind: Optional[str] = None) -> FinetuneResult:
    """Fine-tune ``base`` (a checkpoint folder or hub id) on ``samples``; write ``out`` (see the module).

    Reruns with the same ``out`` resume from the latest checkpoint in ``out/checkpoints`` (same
    method, batch and LoRA settings required; epochs / max_steps may grow). Raises ValueError for no
    samples, a bad config or a target that is not a SegAgent answer, ModelLoadError for a bad base.
    ``config`` None: ``FinetuneConfig()``; ``progress``: Trainer's progress bar.

    ``policy_kind`` ``qwen-vl-chat``, or a Qwen-VL-Chat folder as ``base`` (config.json ``model_type:
    qwen``): the native path (:func:`load_qwen_vl_chat_native`, samples encoded as
    :class:`QwenVLChatPolicy` prompts, ``out/model`` in the release's layout, see :func:`_export_native`).
    """
    from transformers import TrainingArguments, set_seed
    from transformers.trainer_callback import PrinterCallback

    if not samples:
        raise ValueError("no SFT samples to train on")
    config = config if config is not None else FinetuneConfig()
    for sample in samples:  # before the (slow) load: a target that is not an answer fails at once
        split_target(sample, config.forced_prefix)
    out = Path(out)
    dev = resolve_device(config.device)
    bf16 = config.precision == "bf16" or (config.precision == "auto" and dev.type == "cuda")
    checkpointing = dev.type == "cuda" if config.gradient_checkpointing is None else config.gradient_checkpointing
    native = uses_native_path(base, policy_kind)
    dtype = torch.bfloat16 if bf16 else torch.float32
    if native:
        from segagent_backend.agent.qwen_native import load_qwen_vl_chat_native
        from segagent_backend.agent.qwen_native.tokenizer import EOD_ID

        model, tokenizer = load_qwen_vl_chat_native(base, device=config.device, dtype=dtype)
        dataset = NativeSFTDataset(samples, tokenizer, config.forced_prefix)
        pad_id = EOD_ID
    else:
        model, processor = load_hf_vlm(base, device=config.device, dtype=dtype)
        eot = end_of_turn_id(processor, stop_token_ids(model, processor.tokenizer))
        dataset = SFTDataset(samples, processor, eot, config.forced_prefix)
        pad_id = processor.tokenizer.pad_token_id if processor.tokenizer.pad_token_id is not None else eot

    out.mkdir(parents=True, exist_ok=True)
    checkpoints = out / "checkpoints"
    resume = last_complete_checkpoint(checkpoints)
    where = Path(str(base)).expanduser()
    base_checkpoint = str(where.resolve()) if where.exists() else str(base)
    run = dict({k: getattr(config, k) for k in RUN_KEYS}, base=base_checkpoint, samples=len(samples))
    if native:
        run["policy_kind"] = NATIVE_KIND
    _check_run(out, run, resume)

    set_seed(config.seed)  # LoRA's random init
    model = prepare_native(model, config, checkpointing) if native else _prepare(model, config, checkpointing)
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
    model_dir = _export_native(trainer.model, where, out) if native else _export(trainer.model, processor, out)
    seen = trainer.samples_seen
    result = FinetuneResult(model_dir, [loss for _, loss in logged], int(trainer.state.global_step), seen, seconds,
                            seen / seconds if seconds > 0 else 0.0, Path(resume) if resume else None,
                            [step for step, _ in logged])
    _write_atomic(out / "loss.png", draw_loss_curve(logged, f"{config.method} fine-tuning of {Path(str(base)).name}"))
    log = dict(base=str(base), policy_kind=NATIVE_KIND if native else "hf-vlm", config=asdict(config),
               learning_rate=config.lr, precision="bf16" if bf16 else "fp32",
               gradient_checkpointing=checkpointing, device=str(dev), samples=len(samples),
               trainable_parameters=trainable, steps=result.steps, samples_seen=seen, seconds=seconds,
               samples_per_second=result.samples_per_second, resumed_from=str(resume) if resume else None,
               losses=[{"step": s, "loss": v} for s, v in logged], model_dir=str(model_dir))
    _write_atomic(out / "train_log.json", json.dumps(log, indent=2))
    return result
