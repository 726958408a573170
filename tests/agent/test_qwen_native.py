"""Native Qwen-VL-Chat against the ORIGINAL remote code (the oracle), on a tiny random checkpoint.

The checkpoint keeps the real vocabulary (151936 rows, the real ``qwen.tiktoken``) with a 128-wide LM and a
32-wide vision tower. The oracle (tests/oracle/run_oracle.py) runs Qwen-VL-Chat's own code with transformers
4.32 in a separate process (scripts/oracle-env builds its packages); both sides get the same folder and texts.

Skips, each with its reason: no ``../shared/oracles/qwen-vl-chat`` (original code + qwen.tiktoken), no
tiktoken, or (oracle comparisons only) no ``.venv-oracle``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.oracle.tiny_qwen import ORACLE_CODE, REPO, make_image, oracle_code_dir, random_state_dict, \
    save_checkpoint, tiny_config

pytestmark = [
    pytest.mark.skipif(oracle_code_dir() is None,
                       reason=f"Qwen-VL-Chat reference files (original code + qwen.tiktoken) absent at {ORACLE_CODE}"),
]
tiktoken = pytest.importorskip("tiktoken", reason="tiktoken is not installed (the native tokenizer needs it)")

from segagent_backend.agent.protocol import QWEN_VL_CHAT_PROMPT, answer_prefix  # noqa: E402
from segagent_backend.agent.qwen_native import (IMAGE_PLACEHOLDER, load_qwen_vl_chat_native,  # noqa: E402
                                                preprocess_images)

ORACLE_LIB = REPO / ".venv-oracle" / "lib"
STANDINS = REPO / "tests" / "oracle" / "standins"
RUNNER = REPO / "tests" / "oracle" / "run_oracle.py"
TOL = 1e-5
CHICKEN = "the brown chicken in front of more chickens"
UNICODE = "café Ünïcode 北京烤鸭 — 😀 cafe\u0301 ﬁsh “quoted” ½"
MAX_DIFF: dict[str, float] = {}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    config = tiny_config()
    return save_checkpoint(tmp_path_factory.mktemp("qwen-tiny"), config, random_state_dict(config))


@pytest.fixture(scope="module")
def native(tiny):
    assert not list(tiny.glob("*.py"))
    return load_qwen_vl_chat_native(tiny, device="cpu")


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> str:
    return str(make_image(tmp_path_factory.mktemp("qwen-img") / "overlay.png"))


def segagent_prompt(image: str, caption: str, prefix: bool = True) -> str:
    text = QWEN_VL_CHAT_PROMPT.format(image=image, caption=caption)
    return text + answer_prefix(caption) if prefix else text


def token_texts(image: str) -> dict[str, str]:
    return {
        "segagent": segagent_prompt(image, CHICKEN, prefix=False),
        "segagent_prefix": segagent_prompt(image, CHICKEN),
        "answer": answer_prefix(CHICKEN) + "87  Positive point: (760, 311)<|im_end|>",
        "unicode_caption": segagent_prompt(image, UNICODE),
        "tags": "<ref>person bottom left</ref><box>(68,308),(255,986)</box> Positive point: (679, 186)"
                "<|extra_7|><quad>(1,2),(3,4),(5,6),(7,8)</quad><|endoftext|>",
        "placeholder_span": f"<img>{IMAGE_PLACEHOLDER}</img>",
        "unicode_path": "Picture 1: <img>/tmp/dir é/ü 北.png</img>\n",
        "two_images": "Picture 1: <img>a.png</img>\nPicture 2: <img>/b/c.jpg</img>\nwhat?",
        "whitespace": "a\r\n\n  b\t\tc   \n 12345 1.5e-3 don't I'LL we've",
    }


def logits_tasks(image: str) -> dict[str, list[str]]:
    text = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhello "
            f"<ref>{UNICODE}</ref><|im_end|>\n<|im_start|>assistant\n")
    return {"text": [text], "image": [segagent_prompt(image, CHICKEN)],
            "batch": [segagent_prompt(image, UNICODE), "hi<ref>x</ref> Current IOU: "]}


def generate_texts(image: str) -> list[str]:
    return [segagent_prompt(image, CHICKEN), segagent_prompt(image, "dog"), "hi there<|im_end|>"]


def native_generate(native, texts, **kwargs) -> torch.Tensor:
    model, tok = native
    enc = tok(texts, return_tensors="pt", padding="longest")
    return model.generate(enc["input_ids"], attention_mask=enc["attention_mask"], **kwargs)


@pytest.fixture(scope="module")
def first_run(native, image) -> tuple[int, list[int]]:
    """(prompt length, native greedy sequence) of the first generate text alone, default stop words."""
    n = len(native[1].encode(generate_texts(image)[0]))
    return n, native_generate(native, generate_texts(image)[:1], max_new_tokens=8)[0].tolist()


@pytest.fixture(scope="module")
def oracle(tiny, image, first_run, tmp_path_factory) -> Path:
    """Runs the original code once on every task; returns its output folder."""
    if not (ORACLE_LIB / "transformers").is_dir():
        pytest.skip(f"oracle environment missing at {ORACLE_LIB}: run scripts/oracle-env (transformers 4.32)")
    n, first = first_run
    stop_pair = first[n + 1:n + 3]  # the 2nd and 3rd generated ids as a two-token stop word
    spec = [{"kind": "tokenize", "name": f"tok_{k}", "text": v} for k, v in token_texts(image).items()]
    spec += [{"kind": "logits", "name": f"logits_{k}", "texts": v} for k, v in logits_tasks(image).items()]
    spec += [{"kind": "generate", "name": "gen_default", "texts": generate_texts(image), "max_new_tokens": 8},
             {"kind": "generate", "name": "gen_stop", "texts": generate_texts(image)[:1], "max_new_tokens": 8,
              "stop_words_ids": [[151645], [151644], stop_pair]}]
    return run_oracle(tiny, spec, tmp_path_factory.mktemp("qwen-oracle-out"))


def run_oracle(checkpoint: Path, spec: list, out: Path) -> Path:
    """tests/oracle/run_oracle.py in the oracle environment (transformers 4.32); skips when it is missing."""
    if not (ORACLE_LIB / "transformers").is_dir():
        pytest.skip(f"oracle environment missing at {ORACLE_LIB}: run scripts/oracle-env (transformers 4.32)")
    spec_path = out / "spec.json"
    spec_path.write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = f"{ORACLE_LIB}{os.pathsep}{STANDINS}"
    proc = subprocess.run([sys.executable, str(RUNNER), "--checkpoint", str(checkpoint), "--spec", str(spec_path),
                           "--out", str(out), "--code", str(ORACLE_CODE)], env=env, capture_output=True,
                          text=True, timeout=600)
    if proc.returncode:
        pytest.fail(f"oracle failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    info = load(out, "info")
    assert info["transformers"] == "4.32.0"
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [], info  # the checkpoint is complete
    return out


def load(out: Path, name: str):
    return json.loads((out / f"{name}.json").read_text())


def test_oracle_is_the_original_code_on_transformers_4_32(oracle):
    assert load(oracle, "info")["transformers"] == "4.32.0"  # run_oracle also checked the keys


@pytest.mark.parametrize("name", list(token_texts("x.png")))
def test_token_ids_match_the_original_tokenizer(oracle, native, image, name):
    tok = native[1]
    text = token_texts(image)[name]
    want = load(oracle, f"tok_{name}")
    ids = tok.encode(text)
    assert ids == want["ids"]
    assert tok.decode(ids) == want["decoded"]


def test_placeholder_image_span_is_258_ids_like_the_original(oracle, native):
    tok = native[1]
    span = tok.image_span()
    assert span == load(oracle, "tok_placeholder_span")["ids"]
    assert len(span) == 258 and span[0] == 151857 and span[-1] == 151858
    assert span[1:1 + len(IMAGE_PLACEHOLDER)] == list(IMAGE_PLACEHOLDER.encode())
    assert set(span[1 + len(IMAGE_PLACEHOLDER):-1]) == {151859}


def check_logits(want: dict, got: torch.Tensor, out: Path, name: str) -> float:
    """Max |diff| to the oracle over valid (non-pad) positions: column sample, max, logsumexp, last row."""
    mask = np.asarray(want["attention_mask"], bool)
    got = got.float()
    columns = torch.tensor(list(range(0, got.shape[-1], 997)))
    pairs = [(np.load(out / f"{name}.cols.npy"), got[:, :, columns].numpy(), mask),
             (np.load(out / f"{name}.max.npy"), got.max(-1).values.numpy(), mask),
             (np.load(out / f"{name}.lse.npy"), torch.logsumexp(got, -1).numpy(), mask),
             (np.load(out / f"{name}.last.npy"), got[:, -1].numpy(), mask[:, -1])]
    worst = 0.0
    for ref, mine, valid in pairs:
        assert ref.shape == mine.shape
        worst = max(worst, float(np.abs(ref - mine)[valid].max()))
    return worst


@pytest.mark.parametrize("name", ["text", "image", "batch"])
def test_fp32_logits_match_the_original(oracle, native, image, name):
    model, tok = native
    want = load(oracle, f"logits_{name}")
    enc = tok(logits_tasks(image)[name], return_tensors="pt", padding="longest")
    assert enc["input_ids"].tolist() == want["input_ids"]
    assert enc["attention_mask"].tolist() == want["attention_mask"]
    with torch.no_grad():
        logits = model(enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        diff = check_logits(want, logits, oracle, f"logits_{name}")
        MAX_DIFF[name] = diff
        print(f"max |logit diff| {name}: {diff:.2e}")
        assert diff < TOL
        if name != "text":  # images handed over as pixels or features: the same LM input as from file paths
            n = int((enc["input_ids"] == 151857).sum())
            pixels = preprocess_images([image] * n)
            feats = model.encode_images(pixels)
            assert feats.shape == (n, 256, 128) and feats.dtype == torch.float32
            from_paths = model.embed(enc["input_ids"])
            assert torch.equal(model.embed(enc["input_ids"], pixel_values=pixels), from_paths)
            assert torch.equal(model.embed(enc["input_ids"], image_features=feats), from_paths)


def test_greedy_generation_with_stop_words_matches_the_original(oracle, native, image):
    want = load(oracle, "gen_default")
    got = native_generate(native, generate_texts(image), max_new_tokens=8)
    assert got.tolist() == want["sequences"]
    n = len(want["input_ids"][0])
    assert got[2, n - 1:].tolist() == [151645] + [151643] * 8  # prompt ends with <|im_end|>: eos at once, pads
    assert got.shape[1] == n + 8 and (got[:2, n:] != 151643).all()  # the others ran to max_new_tokens


def test_multi_token_stop_word_matches_the_original(oracle, native, image, first_run):
    want = load(oracle, "gen_stop")
    n, first = first_run
    assert n == len(want["input_ids"][0])
    stop = first[n + 1:n + 3]
    got = native_generate(native, generate_texts(image)[:1], max_new_tokens=8,
                          stop_words_ids=[[151645], [151644], stop])
    assert got.tolist() == want["sequences"]
    assert got[0, n:].tolist() == first[n:n + 3] + [151643]  # stopped right after the stop word, eos forced


def test_generate_with_pixels_and_placeholder_paths_matches_the_original(oracle, native, image):
    """The native policy's way: prompts name image.jpg (no file) and the pixels are handed over."""
    want = load(oracle, "gen_default")
    texts = [t.replace(image, IMAGE_PLACEHOLDER) for t in generate_texts(image)]
    got = native_generate(native, texts, max_new_tokens=8, pixel_values=preprocess_images([image, image]))
    n = len(want["input_ids"][0])
    assert got[:, n:].tolist() == [row[n:] for row in want["sequences"]]


def test_placeholder_prompt_gives_the_same_lm_input_as_the_real_path(native, image):
    """The ids inside the span differ, the embeddings the LM reads must not (features overwrite them)."""
    model, tok = native
    real = tok([segagent_prompt(image, CHICKEN)], return_tensors="pt")["input_ids"]
    fake = tok([segagent_prompt(IMAGE_PLACEHOLDER, CHICKEN)], return_tensors="pt")["input_ids"]
    assert real.shape == fake.shape and not torch.equal(real, fake)
    pixels = preprocess_images([image])
    with torch.no_grad():
        assert torch.equal(model.embed(real, pixel_values=pixels), model.embed(fake, pixel_values=pixels))


def test_tokenizer_surface(native):
    tok = native[1]
    assert len(tok) == 151860 and tok.eod_id == tok.pad_token_id == 151643
    assert tok.convert_tokens_to_ids(["<|im_end|>", "<|im_start|>"]) == [151645, 151644]
    assert tok.convert_tokens_to_ids("<img>") == 151857
    enc = tok(["a b c d", "a"], padding="longest")
    assert enc["input_ids"][1][:-1] == [151643] * (len(enc["input_ids"][0]) - 1)
    assert enc["attention_mask"][1] == [0] * (len(enc["input_ids"][0]) - 1) + [1]
    assert tok.decode(tok.encode("x<|im_end|>"), skip_special_tokens=True) == "x"
    assert tok.decode(tok.encode("cafe\u0301")) == "café"  # NFC
    with pytest.raises(ValueError, match="too long"):
        tok.encode("<img>" + "a" * 257 + "</img>")
    with pytest.raises(ValueError, match="Unclosed"):
        tok.encode("<img>a.png")


@pytest.fixture(scope="module")
def wide(tmp_path_factory, image) -> tuple[Path, Path, list[str]]:
    """The real head size (2 LM heads of 128 dims), 2 resampler heads, a 1000-id vocabulary; raw ids."""
    config = tiny_config(vocab_size=1000, layers=1, hidden=256, heads=2, vision_width=64, vision_heads=4,
                         vision_layers=1)
    folder = save_checkpoint(tmp_path_factory.mktemp("qwen-wide"), config, random_state_dict(config, seed=5),
                             tokenizer=False)
    other = str(make_image(tmp_path_factory.mktemp("qwen-img2") / "other.jpg", size=(37, 91), seed=1))
    ids = torch.randint(0, 1000, (2, 40), generator=torch.Generator().manual_seed(7))
    mask = torch.ones_like(ids)
    ids[1, :6], mask[1, :6] = 151643 % 1000, 0
    spec = [{"kind": "logits", "name": "logits_wide", "input_ids": ids.tolist(), "attention_mask": mask.tolist()},
            {"kind": "visual", "name": "visual_wide", "paths": [image, other]}]
    return folder, run_oracle(folder, spec, tmp_path_factory.mktemp("qwen-oracle-wide")), [image, other]


def test_head_dim_128_and_multi_head_resampler_match_the_original(wide):
    from segagent_backend.agent.qwen_native.loader import load_native_model

    folder, out, paths = wide
    model = load_native_model(folder, device="cpu")
    assert model.lm.model.layers[0].self_attn.head_dim == 128
    assert model.visual.attn_pool.attn.num_heads == 2
    want = load(out, "logits_wide")
    with torch.no_grad():
        logits = model(torch.tensor(want["input_ids"]), attention_mask=torch.tensor(want["attention_mask"])).logits
        features = model.encode_images(preprocess_images(paths))
    diff = check_logits(want, logits, out, "logits_wide")
    ref = np.load(out / "visual_wide.npy")
    vdiff = float(np.abs(ref - features.numpy()).max())
    MAX_DIFF.update(wide=diff, visual=vdiff)
    print(f"max |logit diff| wide: {diff:.2e}; max |feature diff|: {vdiff:.2e} (scale {np.abs(ref).max():.1f})")
    assert diff < TOL and vdiff < TOL * max(1.0, float(np.abs(ref).max()))
