"""Per-click cost of SamSegmenter with the embedding cache vs re-encoding the image on every click.

    .venv/bin/python -m bench.click_cost [--json OUT] [--repeats N] [--size HxW] [--skip-vit-b] [--threads T]

Models (random weights, built locally, loaded through the production ``load_sam``):
  tiny   segment_anything Sam at 1024 input, ViT embed_dim 32, depth 2
  vit_b  the real vit_b architecture (~13 s per image encode on a 2-core CPU)

Modes, timed on the same (H, W, 3) uint8 image and the same prompt (2 clicks + previous logits):
  decoder alone    segment() with the image already set
  cached click     set_image() of an already-cached image + segment(): an interactive request
  re-encode click  set_image() with caching disabled + segment(): what no cache would cost

The requirement: cached click <= 1.2 x decoder alone. Figures are medians (the CPU is shared);
decoder-alone and cached-click rounds are interleaved so load changes hit both alike.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from segagent_backend.agent.segmenters.cache import EmbeddingCache
from segagent_backend.agent.segmenters.sam import SamSegmenter, load_sam
from tests.tiny_models import import_segment_anything, make_tiny_sam_checkpoint, make_vit_b_checkpoint

from .common import record, time_click_modes

import_segment_anything()  # through the torchvision stand-in when no real torchvision exists

LIMIT = 1.2


def bench_model(name: str, checkpoint: Path, image: np.ndarray, repeats: int, reencode_repeats: int) -> dict:
    """Time the three modes for one checkpoint; returns medians (ms) and ratios."""
    model = load_sam(checkpoint, device="cpu")
    cached = SamSegmenter(model, EmbeddingCache(1 << 30), namespace=f"bench-{name}")
    uncached = SamSegmenter(model, EmbeddingCache(0), namespace=f"bench-{name}-nocache")  # stores nothing
    timed = time_click_modes(cached, uncached, image, repeats, reencode_repeats)
    return {"model": name, **timed, "meets_limit": timed["ratio_cached_vs_decoder"] <= LIMIT}


def print_table(results: list[dict]) -> None:
    head = f"{'model':<7} {'decoder alone':>14} {'cached click':>13} {'re-encode':>11} {'digest':>8} " \
           f"{'cached/dec':>11} {'reenc/dec':>10} {'reenc/cached':>13}  <= {LIMIT}x"
    print(head)
    print("-" * len(head))
    for r in results:
        m = r["median_ms"]
        print(f"{r['model']:<7} {m['decoder_alone']:>11.2f} ms {m['cached_click']:>10.2f} ms "
              f"{m['reencode_click']:>8.1f} ms {m['image_digest']:>5.2f} ms "
              f"{r['ratio_cached_vs_decoder']:>10.3f}x {r['ratio_reencode_vs_decoder']:>9.1f}x "
              f"{r['ratio_reencode_vs_cached']:>12.1f}x  {'PASS' if r['meets_limit'] else 'FAIL'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--repeats", type=int, default=30, help="timed clicks per cheap mode (default 30)")
    ap.add_argument("--reencode-repeats", type=int, default=None,
                    help="re-encode clicks (default: --repeats for tiny, 2 for vit_b)")
    ap.add_argument("--size", default="1080x1920", help="image HxW (default 1080x1920)")
    ap.add_argument("--skip-vit-b", action="store_true", help="tiny model only")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1: on a shared CPU more threads wait on busy cores)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.lower().split("x"))
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tiny = make_tiny_sam_checkpoint(Path(tmp) / "tiny.pth")
        results.append(bench_model("tiny", tiny, image, args.repeats, args.reencode_repeats or args.repeats))
        if not args.skip_vit_b:
            print("building a random vit_b checkpoint (~375 MB) ...", file=sys.stderr)
            vit_b = make_vit_b_checkpoint(Path(tmp) / "vit_b.pth")
            results.append(bench_model("vit_b", vit_b, image, args.repeats, args.reencode_repeats or 2))
            vit_b.unlink()

    print(f"image {h}x{w} RGB uint8, CPU, torch threads={torch.get_num_threads()}, medians")
    print_table(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"limit": LIMIT, "results": results}, indent=2))
    record("click_cost", {"per model (medians)": {r["model"]: {
        "decoder alone ms": r["median_ms"]["decoder_alone"], "cached click ms": r["median_ms"]["cached_click"],
        "re-encode click ms": r["median_ms"]["reencode_click"], "cached / decoder": r["ratio_cached_vs_decoder"],
        "re-encode / decoder": r["ratio_reencode_vs_decoder"], "re-encode / cached": r["ratio_reencode_vs_cached"],
        f"cached <= {LIMIT}x decoder": r["meets_limit"]} for r in results}}, setup=vars(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
