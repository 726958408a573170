"""Per-click cost of the SimpleClick tool (segmenters/simpleclick), as the release runs it.

    .venv/bin/python -m bench.simpleclick_cost [--repeats N] [--size HxW] [--skip-vit-b] [--threads T]

Models (random weights, built locally, saved in the published checkpoints' layout and loaded through the
production ``load_simpleclick``):
  tiny   plain ViT dim 64, depth 8, trained at 224 (position embedding interpolated to 448)
  vit_b  the published ViT-B shape (dim 768, depth 12, 12 heads, FPN 128-1024, head 256): ~96 M parameters

SimpleClick feeds the clicks into the ViT, so there is no per-image embedding to cache: every click runs
the whole network at 448 x 448. Timed on one (H, W, 3) uint8 image, a click added to two earlier ones with
the previous state (zoom-in region + probability map), medians:
  click (release)   segment(): zoom-in, flip (a batch of 2), the network, back to the image; what a user waits
  click, no flip    the same without the mirrored pass (not the release's setting)
  network alone     one forward pass of the batch of 2 at 448 x 448
Ratios are side by side in one run (the CPU is shared: rounds of the three modes are interleaved).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from segagent_backend.agent.segmenters.cache import EmbeddingCache
from segagent_backend.agent.segmenters.simpleclick import SimpleClickConfig, SimpleClickModel, SimpleClickSegmenter
from segagent_backend.agent.segmenters.simpleclick.checkpoint import load_simpleclick, save_simpleclick
from segagent_backend.agent.types import Click

from .common import ms, record

MODELS = {
    "tiny": SimpleClickConfig(img_size=(224, 224), embed_dim=64, depth=8, num_heads=4, mlp_ratio=2.0,
                              neck_out_dims=(16, 32, 64, 128), head_in_channels=(16, 32, 64, 128), head_channels=32),
    "vit_b": SimpleClickConfig(img_size=(448, 448), embed_dim=768, depth=12, num_heads=12),
}


def bench_model(name: str, path: Path, image: np.ndarray, repeats: int) -> dict:
    model = load_simpleclick(path, "cpu")
    params = sum(p.numel() for p in model.parameters()) / 1e6
    release = SimpleClickSegmenter(model, EmbeddingCache(1 << 30), namespace=f"bench-{name}")
    no_flip = SimpleClickSegmenter(model, EmbeddingCache(1 << 30), namespace=f"bench-{name}-noflip", with_flip=False)
    h, w = image.shape[:2]
    clicks = [Click(w * 0.5, h * 0.5), Click(w * 0.2, h * 0.2, positive=False), Click(w * 0.55, h * 0.6)]
    states = {}
    for tool in (release, no_flip):
        tool.set_image(image)
        out = tool.segment(clicks[:1])
        states[id(tool)] = tool.segment(clicks[:2], prev_logits=out.logits).logits
    x, maps, prev = torch.rand(2, 3, 448, 448), torch.zeros(2, 2, 448, 448), torch.zeros(2, 1, 448, 448)

    def net() -> None:
        with torch.inference_mode():
            model(x, maps, prev)

    times: dict[str, list[float]] = {"click (release)": [], "click, no flip": [], "network alone": []}
    net()  # warm-up
    for _ in range(repeats):
        times["click (release)"].append(ms(lambda: release.segment(clicks, prev_logits=states[id(release)])))
        times["click, no flip"].append(ms(lambda: no_flip.segment(clicks, prev_logits=states[id(no_flip)])))
        times["network alone"].append(ms(net))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"model": name, "parameters M": params, "median_ms": med, "min_ms": {k: min(v) for k, v in times.items()},
            "click / network": med["click (release)"] / med["network alone"],
            "flip / no flip": med["click (release)"] / med["click, no flip"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds (default 10 for tiny, 3 for vit_b)")
    ap.add_argument("--size", default="480x640", help="image HxW (default 480x640)")
    ap.add_argument("--skip-vit-b", action="store_true", help="tiny model only")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.lower().split("x"))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in MODELS.items():
            if name == "vit_b" and args.skip_vit_b:
                continue
            torch.manual_seed(0)
            path = save_simpleclick(SimpleClickModel(cfg), Path(tmp) / f"{name}.pth")
            print(f"timing {name} ...", file=sys.stderr)
            results.append(bench_model(name, path, image, args.repeats or (10 if name == "tiny" else 3)))
            path.unlink()
    print(f"image {h}x{w} RGB uint8, CPU, torch threads={torch.get_num_threads()}, medians")
    print(f"{'model':<6} {'params':>8} {'click (release)':>16} {'no flip':>10} {'network':>10} {'click/net':>10} {'flip/no':>8}")
    for r in results:
        m = r["median_ms"]
        print(f"{r['model']:<6} {r['parameters M']:>7.1f}M {m['click (release)']:>13.1f} ms {m['click, no flip']:>7.1f} ms "
              f"{m['network alone']:>7.1f} ms {r['click / network']:>9.2f}x {r['flip / no flip']:>7.2f}x")
    record("simpleclick_cost", {"per model (medians)": {r["model"]: {
        "parameters M": r["parameters M"], "click (release) ms": r["median_ms"]["click (release)"],
        "click, no flip ms": r["median_ms"]["click, no flip"], "network alone (batch 2) ms": r["median_ms"]["network alone"],
        "click / network": r["click / network"], "flip / no flip": r["flip / no flip"]} for r in results}},
        setup={"image": f"{h}x{w}", "repeats": args.repeats or "10 (tiny), 3 (vit_b)", "threads": torch.get_num_threads(),
               "skip_vit_b": args.skip_vit_b})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
