"""Interactive click latency through the whole service, with and without the step cache.

Each click of an annotator is one POST /predict carrying ALL clicks so far. This measures, in one
run and interleaved per image: the request latency with the production step cache (the previous
clicks' steps reused: one tool call per request), the same service with the step cache disabled
(every request replays all clicks), and the tool's own call for that click. The clicks are the
standard simulator's on the GrabCut set; images travel over a local HTTP server as in production
(downloaded once, then read from the media cache).

    .venv/bin/python -m bench.interactive_latency [--data DIR] [--images 10] [--clicks 5] [--json OUT]
"""
from __future__ import annotations

import argparse
import functools
import http.server
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from segagent_backend.agent.episode import StepCache
from segagent_backend.agent.segmenters.grabcut import GrabCutSegmenter
from segagent_backend.app import create_app
from segagent_backend.labelstudio.config import EXAMPLE_CONFIG
from segagent_backend.settings import Settings
from trainer.datasets import default_grabcut_dir, load_grabcut
from trainer.evaluation import run_noc

from .common import record

REPO = Path(__file__).resolve().parents[1]


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def simulated_clicks(sample, n: int) -> tuple[list, float]:
    """The simulator's first ``n`` clicks on ``sample`` with the GrabCut tool, and the tool's mean time per click."""
    run = run_noc(GrabCutSegmenter(), sample, max_clicks=n)
    return run.clicks, run.seconds / max(run.calls, 1)


def body(url: str, clicks, width: int, height: int) -> dict:
    regions = [{
        "original_width": width, "original_height": height, "image_rotation": 0, "id": f"k{i}",
        "from_name": "click", "to_name": "image", "type": "keypointlabels", "is_positive": c.positive,
        "value": {"x": 100.0 * c.x / width, "y": 100.0 * c.y / height, "width": 0.3, "keypointlabels": ["Object"]},
    } for i, c in enumerate(clicks)]
    return {"tasks": [{"id": 1, "data": {"image": url}}], "label_config": EXAMPLE_CONFIG,
            "project": "1.0", "params": {"context": {"result": regions}}}


def timed_post(client, payload) -> float:
    started = time.perf_counter()
    reply = client.post("/predict", json=payload)
    elapsed = time.perf_counter() - started
    assert reply.status_code == 200, reply.json
    return elapsed


def stats(values) -> dict:
    arr = np.asarray(values, dtype=np.float64) * 1000
    return {"p50_ms": float(np.median(arr)), "p95_ms": float(np.percentile(arr, 95)), "n": int(arr.size)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    root = args.data or default_grabcut_dir(REPO)
    if not (root / "manifest.json").is_file():
        print(f"skipped: GrabCut set not found at {root} (set --data or SEGAGENT_GRABCUT_DIR)")
        return 0
    samples = load_grabcut(root, limit=args.images)
    image_paths = {row["name"]: row["image"] for row in json.loads((root / "manifest.json").read_text())}

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    with tempfile.TemporaryDirectory() as tmp:
        port = server.server_address[1]
        env = {"MODEL_DIR": tmp, "SEGAGENT_PRELOAD": "false", "LOG_LEVEL": "WARNING",
               "SEGAGENT_MEDIA_ALLOW_HOSTS": f"127.0.0.1:{port}", "SEGAGENT_MEDIA_ALLOW_PRIVATE": "true"}
        cached_app = create_app(Settings.from_env(env))
        replay_app = create_app(Settings.from_env(env))
        replay_app.config["SEGAGENT_HOST"]._steps = StepCache(max_entries=0)  # every request replays
        cached, replay = cached_app.test_client(), replay_app.test_client()
        cold, warm_cached, warm_replay, tool = [], [], [], []
        for sample in samples:
            clicks, tool_seconds = simulated_clicks(sample, args.clicks)
            tool.append(tool_seconds)
            height, width = sample.gt.shape
            url = f"{base}/{image_paths[sample.name]}"
            cold.append(timed_post(cached, body(url, clicks[:1], width, height)))  # download + encode + 1 call
            timed_post(replay, body(url, clicks[:1], width, height))
            for k in range(2, len(clicks) + 1):
                warm_cached.append(timed_post(cached, body(url, clicks[:k], width, height)))
                warm_replay.append(timed_post(replay, body(url, clicks[:k], width, height)))
    server.shutdown()

    report = {
        "images": len(samples), "clicks_per_image": args.clicks,
        "first_click_cold": stats(cold), "click_with_step_cache": stats(warm_cached),
        "click_replaying_all_clicks": stats(warm_replay), "tool_call_alone (mean per image)": stats(tool),
    }
    report["replay_over_cached_p50"] = report["click_replaying_all_clicks"]["p50_ms"] / report["click_with_step_cache"]["p50_ms"]
    report["cached_over_tool_p50"] = report["click_with_step_cache"]["p50_ms"] / report["tool_call_alone (mean per image)"]["p50_ms"]
    print(f"Interactive /predict latency, GrabCut tool, {len(samples)} GrabCut images x {args.clicks} simulated clicks")
    print(f"{'':38s}{'p50 ms':>10s}{'p95 ms':>10s}{'n':>6s}")
    for key in ("first_click_cold", "click_with_step_cache", "click_replaying_all_clicks", "tool_call_alone (mean per image)"):
        s = report[key]
        print(f"{key:38s}{s['p50_ms']:10.1f}{s['p95_ms']:10.1f}{s['n']:6d}")
    print(f"replaying / step cache (p50): {report['replay_over_cached_p50']:.2f}x;  "
          f"request with step cache / tool call alone (p50): {report['cached_over_tool_p50']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    record("interactive_latency", report, setup=vars(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
