"""Run Qwen-VL-Chat's ORIGINAL remote code on a checkpoint and dump what it computes (tests only).

Runs in the oracle environment (scripts/oracle-env): ``.venv/bin/python`` with
``PYTHONPATH=.venv-oracle/lib:tests/oracle/standins`` so transformers 4.32 is imported, never 5.x.

    python tests/oracle/run_oracle.py --checkpoint DIR --spec spec.json --out OUT [--code CODE_DIR]

A temporary folder receives the original ``*.py`` files, ``tokenizer_config.json`` and ``qwen.tiktoken`` from
CODE_DIR (default ``../shared/oracles/qwen-vl-chat``) plus links to the checkpoint's config and weights; the model and tokenizer
are loaded from it with ``trust_remote_code=True`` in float32 on CPU. spec.json is a list of tasks:

- ``{"kind": "tokenize", "name": N, "text": T}`` -> ``N.json``: {"ids": tokenizer.encode(T),
  "decoded": tokenizer.decode(ids)}
- ``{"kind": "logits", "name": N, "texts": [...], "columns": [ids]}`` -> ``N.json`` {"input_ids",
  "attention_mask"} (left padding with <|endoftext|>, as the policy does) and float32 logit summaries
  (see :func:`save_logits`)
- ``{"kind": "logits", "name": N, "input_ids": [[...]], "attention_mask": [[...]]}``: the same on raw ids
- ``{"kind": "visual", "name": N, "paths": [...]}`` -> ``N.npy`` the vision tower's (n, 256, dim) features
- ``{"kind": "generate", "name": N, "texts": [...], "max_new_tokens": K, "stop_words_ids": [[...]]}`` ->
  ``N.json`` {"input_ids", "attention_mask", "sequences"} (greedy)

``info.json`` records the transformers version and the load's missing/unexpected keys.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

PY_FILES = ("configuration_qwen.py", "modeling_qwen.py", "visual.py", "tokenization_qwen.py",
            "qwen_generation_utils.py")
DEFAULT_CODE = Path(__file__).resolve().parents[3] / "shared" / "oracles" / "qwen-vl-chat"


def stage(checkpoint: Path, code: Path, into: Path) -> Path:
    """The folder the original code loads from: its .py files + qwen.tiktoken + the checkpoint's files."""
    for name in PY_FILES + ("qwen.tiktoken", "tokenizer_config.json"):
        shutil.copyfile(code / name, into / name)
    for item in checkpoint.iterdir():
        if item.suffix == ".py" or item.name in ("qwen.tiktoken", "tokenizer_config.json") or not item.is_file():
            continue
        os.symlink(item.resolve(), into / item.name)
    return into


def save_logits(out: Path, name: str, logits, task: dict) -> None:
    """Full (B, L, V) logits are ~0.6 MB per position: by default keep what checks them cheaply:
    ``N.cols.npy`` (B, L, len(columns)), ``N.last.npy`` (B, V) at the last position, ``N.max.npy`` and
    ``N.lse.npy`` (B, L) max and logsumexp over the whole vocabulary; ``"full": true`` adds ``N.npy``."""
    import numpy as np
    import torch

    columns = torch.tensor(task.get("columns", list(range(0, logits.shape[-1], 997))), dtype=torch.long)
    np.save(out / f"{name}.cols.npy", logits[:, :, columns].numpy())
    np.save(out / f"{name}.last.npy", logits[:, -1].numpy())
    np.save(out / f"{name}.max.npy", logits.max(-1).values.numpy())
    np.save(out / f"{name}.lse.npy", torch.logsumexp(logits, -1).numpy())
    if task.get("full"):
        np.save(out / f"{name}.npy", logits.numpy())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--spec", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--code", type=Path, default=DEFAULT_CODE)
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="qwen-oracle-"))
    os.environ.setdefault("HF_HOME", str(workdir / "hf-home"))  # remote-code module cache stays private
    os.environ["HF_HUB_OFFLINE"] = os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import numpy as np
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not transformers.__version__.startswith("4.3"):
            print(f"run_oracle: transformers {transformers.__version__} imported; the oracle needs 4.32 "
                  "(PYTHONPATH=.venv-oracle/lib:tests/oracle/standins)", file=sys.stderr)
            return 2
        torch.manual_seed(0)
        (workdir / "model").mkdir()
        folder = stage(args.checkpoint, args.code, workdir / "model")
        tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=True)
        tokenizer.padding_side = "left"
        tokenizer.pad_token_id = tokenizer.eod_id
        model, info = AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=True, fp32=True,
                                                           output_loading_info=True)
        model = model.float().eval()
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "info.json").write_text(json.dumps({
            "transformers": transformers.__version__, "torch": torch.__version__,
            "missing_keys": sorted(info["missing_keys"]), "unexpected_keys": sorted(info["unexpected_keys"])}))
        for task in json.loads(args.spec.read_text()):
            name, kind = task["name"], task["kind"]
            if kind == "tokenize":
                ids = tokenizer.encode(task["text"])
                result = {"ids": ids, "decoded": tokenizer.decode(ids)}
            elif kind == "visual":
                with torch.no_grad():
                    features = model.transformer.visual.encode(task["paths"])
                np.save(args.out / f"{name}.npy", features.float().numpy())
                result = {"shape": list(features.shape)}
            else:
                if "input_ids" in task:  # raw ids (a checkpoint whose vocabulary is too small for the tokenizer)
                    enc = {"input_ids": torch.tensor(task["input_ids"]),
                           "attention_mask": torch.tensor(task["attention_mask"])}
                else:
                    enc = tokenizer(task["texts"], return_tensors="pt", padding="longest")
                result = {"input_ids": enc["input_ids"].tolist(), "attention_mask": enc["attention_mask"].tolist()}
                with torch.no_grad():
                    if kind == "logits":
                        logits = model(enc["input_ids"], attention_mask=enc["attention_mask"]).logits.float()
                        save_logits(args.out, name, logits, task)
                    elif kind == "generate":
                        out = model.generate(enc["input_ids"], attention_mask=enc["attention_mask"],
                                             stop_words_ids=task.get("stop_words_ids", [[151645], [151644]]),
                                             max_new_tokens=task["max_new_tokens"], do_sample=False,
                                             pad_token_id=tokenizer.eod_id, generation_config=model.generation_config)
                        result["sequences"] = out.tolist()
                    else:
                        raise ValueError(f"unknown task kind {kind!r}")
            (args.out / f"{name}.json").write_text(json.dumps(result))
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
