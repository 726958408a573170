"""What a SAM 3 text start costs (``agent.grounding``): the first phrase on an image vs another phrase on an
image whose vision features are cached, and the share of our own pre- and post-processing.

    .venv/bin/python -m bench.text_start [--tiny] [--cold N] [--warm N] [--size HxW] [--threads T]

Model: the default ``Sam3Config`` (SAM 3's detector as released: ViT-L/14 at 1008, CLIP text encoder,
DETR encoder/decoder, 200 queries; ~840 M parameters) with random weights (none can be downloaded
here), built in memory; ``--tiny``: the tests' tiny random model instead (a smoke run). The tokenizer
and processor config are the tests' tiny ones (tokenizing costs microseconds either way).

Modes, on (H, W, 3) uint8 images, medians:
  cold         ``TextGrounder.instances`` on an image never seen: preprocess, vision encoder, text encoder,
               DETR, mask decoder, post-processing (each run a new image: a cache miss)
  cached       ``instances`` with another phrase on an image already encoded: the vision features come
               from the shared embedding cache
  preprocess   our square resize + normalisation of one image (the stock processor needs torchvision)
  postprocess  ``instances_from_outputs`` keeping the best 8 queries, resized to the image (threshold 0)
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from segagent_backend.agent.grounding import MAX_CANDIDATES, TextGrounder
from segagent_backend.agent.grounding.sam3_text import instances_from_outputs
from segagent_backend.agent.segmenters.cache import EmbeddingCache
from segagent_backend.agent.segmenters.hf_sam_preprocess import OwnPreprocessor
from tests.tiny_sam_family import make_tiny_sam3_text

from .common import ms, record

PHRASES = ("person", "red car", "dog", "white cup", "tree", "bicycle")


def build(tiny: bool, folder: Path) -> TextGrounder:
    """The grounder under test: the tiny folder through the production loader, or a default-config model."""
    make_tiny_sam3_text(folder)
    tiny_grounder = TextGrounder.from_pretrained(folder, "cpu", EmbeddingCache(4 * 2**30))
    if tiny:
        return tiny_grounder
    import transformers

    print("building a random SAM 3 detector of the default config ...", file=sys.stderr)
    torch.manual_seed(0)
    model = transformers.Sam3Model(transformers.Sam3Config()).eval()
    side = int(model.config.image_size)
    preprocessor = OwnPreprocessor(dataclasses.replace(tiny_grounder.preprocessor.spec, size=(side, side)))
    return TextGrounder(model, tiny_grounder.tokenizer, preprocessor, EmbeddingCache(4 * 2**30))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="the tests' tiny random model (a smoke run)")
    ap.add_argument("--cold", type=int, default=2, help="first phrases on new images (default 2)")
    ap.add_argument("--warm", type=int, default=5, help="other phrases on a cached image (default 5)")
    ap.add_argument("--size", default="1080x1920", help="image HxW (default 1080x1920)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1: on a shared CPU more threads wait on busy cores)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.lower().split("x"))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(args.cold)]
    with tempfile.TemporaryDirectory() as tmp:
        grounder = build(args.tiny, Path(tmp) / "sam3")
    params = sum(p.numel() for p in grounder.model.parameters()) / 1e6

    cold = [ms(lambda: grounder.instances(image, PHRASES[0], 0.5)) for image in images]
    warm = [ms(lambda: grounder.instances(images[0], PHRASES[1 + i % (len(PHRASES) - 1)], 0.5))
            for i in range(args.warm)]
    preprocess = [ms(lambda: grounder.preprocessor(images[0])) for _ in range(3)]
    with torch.inference_mode():
        text = grounder.tokenizer(PHRASES[0], padding="max_length", max_length=32, return_tensors="pt")
        out = grounder.model(vision_embeds=grounder.vision_features(images[0]), **text)
    postprocess = [ms(lambda: instances_from_outputs(out.pred_logits[0], out.presence_logits[0], out.pred_masks[0],
                                                         (h, w), 0.0, MAX_CANDIDATES)) for _ in range(3)]
    med = {name: statistics.median(values) for name, values in
          (("cold", cold), ("cached", warm), ("preprocess", preprocess), ("postprocess", postprocess))}
    figures = {"model": "tiny (tests)" if args.tiny else "default Sam3Config", "parameters M": round(params, 1),
               "cold ms": round(med["cold"], 1), "cached ms": round(med["cached"], 1),
               "preprocess ms": round(med["preprocess"], 1), "postprocess ms": round(med["postprocess"], 1),
               "cached / cold": round(med["cached"] / med["cold"], 3),
               "(pre + post) / cold": round((med["preprocess"] + med["postprocess"]) / med["cold"], 3)}
    print(f"image {h}x{w} RGB uint8, CPU, torch threads={torch.get_num_threads()}, medians")
    for key, value in figures.items():
        print(f"  {key:<20} {value}")
    record("text_start", {"SAM 3 text start (medians)": {figures.pop("model"): figures}}, setup=vars(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
