"""The native SegAgent-Qwen policy on a tiny random Qwen-VL-Chat: decoding modes, lockstep, loop overhead.

    .venv/bin/python -m bench.qwen_native [--episodes 8] [--steps 7] [--repeats 3] [--data DIR|grabcut] [--json OUT]

The checkpoint (2 layers, hidden 128, the real 151,936-token vocabulary and qwen.tiktoken, random weights) is
written by tests/oracle/tiny_qwen.py into a temporary folder and loaded through the production
``build_policy("qwen-vl-chat", ...)`` (QwenVLChatPolicy on the native model). The tokenizer file comes from
../shared/oracles/qwen-vl-chat; without it the benchmark says so and exits 0. Tool: GrabCutSegmenter (no
weights). Images: synthetic 160x120 disks by default (the model sees every overlay at 448x448 whatever its size;
small images keep GrabCut at ~0.1 s per click, where on the GrabCut set's 481x321 images it takes ~1 s and
would hide the policy's costs behind the tool's); ``--data DIR`` (a GrabCut-style folder with manifest.json)
or ``--data grabcut`` ($SEGAGENT_GRABCUT_DIR, else ../shared/datasets/grabcut) for real images and captions.
All three measurements in one run, 1 torch thread, medians of interleaved repeats (the machines are shared):

1. Decoding, one batched ``propose`` per step on the same observations (first-step masks, release parsing):
   release-faithful = forced prefix ``<ref>CAPTION</ref> Current IOU: `` in the prompt + the canonical-token
   grammar (the policy's default); the release's way = no forced prefix, no grammar, greedy until a stop word:
   the model writes the echo itself. Tokens generated per answer and per step, step time, malformed share.
   A random model never writes a stop word: the release mode runs to its budget (24 + echo tokens), so its
   token figure is the budget it needs; the real answer lengths (a trained model's) are printed beside.
2. Episodes in lockstep (one batched policy call per step) vs one by one, release protocol, the constrained
   policy (every answer is a click: every episode runs ``steps`` steps): throughput ratio, and the ratio of
   the time inside ``generate`` alone.
3. Overhead outside model calls in the lockstep run: loop time minus the time inside the model's
   ``generate`` and the tool's ``set_image``/``segment`` (timed by wrapping them), as a share of the step;
   split into input preparation (overlay, the release's JPEG round trip, 448 resize, tokenising: inside
   ``propose``, before ``generate``) and the rest (answer decoding and parsing, loop bookkeeping).

With the release's decoding under the release protocol a random model's answers are malformed and end the
episodes at once; one such run is reported (steps per episode, malformed share), not timed against the rest.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from segagent_backend.agent.loop import EpisodeRequest, LoopConfig, run_episodes
from segagent_backend.agent.policies import build_policy
from segagent_backend.agent.policies.base import Observation, PolicyStats
from segagent_backend.agent.policies.qwen_vl_chat import QwenVLChatPolicy
from segagent_backend.agent.protocol import answer_prefix, format_answer
from segagent_backend.agent.segmenters.grabcut import GrabCutSegmenter
from segagent_backend.agent.types import Click
from tests.oracle.tiny_qwen import ORACLE_CODE, random_state_dict, save_checkpoint, tiny_config
from trainer.datasets import default_grabcut_dir, load_grabcut

from .common import Timed, record

REPO = Path(__file__).resolve().parents[1]

CAPTION = "the brown chicken in front of more chickens"  # the synthetic images' caption (as bench/forced_prefix.py)


def disk_image(index: int, width: int = 160, height: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """A noisy grey-green background with a red disk (tests/conftest.py's make_disk_image), moved per index."""
    rng = np.random.default_rng(index)
    image = np.empty((height, width, 3), np.uint8)
    image[...] = (70, 110, 80)
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    cx, cy, r = width // 3 + 7 * (index % 6), height // 2 + 4 * (index % 5) - 8, height // 5 + index % 4
    yy, xx = np.mgrid[:height, :width]
    mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r ** 2
    image[mask] = np.clip(np.array([200, 40, 40]) + rng.normal(0, 6, (mask.sum(), 3)), 0, 255).astype(np.uint8)
    return image, mask


def samples(n: int, data: str | None) -> tuple[str, list[tuple[np.ndarray, np.ndarray, str]]]:
    """(images, [(image, gt, expression)]): synthetic disks, or the first n images of a GrabCut-style folder."""
    if data is None:
        return f"{n} synthetic 160x120 disk images", [(*disk_image(i), CAPTION) for i in range(n)]
    root = default_grabcut_dir(REPO) if data == "grabcut" else Path(data)
    if not (root / "manifest.json").is_file():
        raise SystemExit(f"--data: no manifest.json in {root}")
    rows = [(s.image, s.gt, s.expression or "the object") for s in load_grabcut(root, limit=n)]
    return f"the first {len(rows)} images of {root.name}", rows


def first_step_observations(rows) -> list[Observation]:
    """Step-1 observations: each image with a partial mask (the upper half of its object), release parsing."""
    out = []
    for image, gt, expression in rows:
        mask = gt.copy()
        ys = np.nonzero(gt.any(1))[0]
        if len(ys):
            mask[(ys[0] + ys[-1]) // 2:] = False
        out.append(Observation(image, mask, expression, step=1, release=True))
    return out


def decoding(policies: dict, obs: list[Observation], repeats: int) -> dict:
    """Interleaved ``propose`` calls per mode: step time (median), tokens per answer, malformed share."""
    for policy in policies.values():  # warm-up (and the grammar's one-time vocabulary pass)
        policy.propose(obs, 1)
        policy.stats = PolicyStats()
    times = {name: [] for name in policies}
    for _ in range(repeats):
        for name, policy in policies.items():
            before = policy.stats.seconds
            policy.propose(obs, 1)
            times[name].append(policy.stats.seconds - before)
    rows = {}
    for name, policy in policies.items():
        s = policy.stats
        budget = policy.max_new_tokens + policy.echo_tokens(obs)
        rows[name] = dict(tokens_per_answer=s.generated_tokens / s.answers,
                          tokens_per_step=s.generated_tokens / s.calls, step_ms=1e3 * statistics.median(times[name]),
                          malformed_share=s.malformed / s.answers, answers=s.answers, token_budget=budget)
    return rows


def episodes(policy: QwenVLChatPolicy, tool: GrabCutSegmenter, requests: list, steps: int, repeats: int) -> dict:
    """Lockstep vs one by one (interleaved), and where the lockstep step's time goes."""
    config = LoopConfig(max_steps=steps, protocol="release")
    run_episodes(policy, tool, requests, config)  # warm-up: images cached by the tool, kernels loaded
    counter = {"generate": 0.0, "inputs": 0.0, "tool": 0.0}
    policy.model.generate = Timed(policy.model.generate, counter, "generate")
    policy.pixels = Timed(policy.pixels, counter, "inputs")  # overlay + JPEG round trip + 448 resize
    policy.tokenizer = Timed(policy.tokenizer, counter, "inputs")  # the prompt's tokenising (decode passes through)
    tool.set_image = Timed(tool.set_image, counter, "tool")
    tool.segment = Timed(tool.segment, counter, "tool")
    lockstep, alone, shares, gen_lockstep, gen_alone = [], [], [], [], []
    for _ in range(repeats):
        for key in counter:
            counter[key] = 0.0
        started = time.perf_counter()
        answers = policy.stats.answers
        run_episodes(policy, tool, requests, config)
        answers = policy.stats.answers - answers  # one answer per episode and step
        lockstep.append(time.perf_counter() - started)
        shares.append({key: value / lockstep[-1] for key, value in counter.items()})
        gen_lockstep.append(counter["generate"])
        counter["generate"] = 0.0
        started = time.perf_counter()
        for request in requests:
            run_episodes(policy, tool, [request], config)
        alone.append(time.perf_counter() - started)
        gen_alone.append(counter["generate"])
    share = {key: statistics.median(s[key] for s in shares) for key in counter}
    return dict(policy_steps=answers, steps_per_episode=answers / len(requests), malformed=policy.stats.malformed,
                lockstep_seconds=statistics.median(lockstep), one_by_one_seconds=statistics.median(alone),
                lockstep_speedup=statistics.median(alone) / statistics.median(lockstep),
                generate_speedup=statistics.median(gen_alone) / statistics.median(gen_lockstep),
                step_ms=1e3 * statistics.median(lockstep) / steps,
                share_generate=share["generate"], share_tool=share["tool"], share_inputs=share["inputs"],
                overhead_outside_generate_and_tool=1.0 - share["generate"] - share["tool"],
                overhead_rest=1.0 - share["generate"] - share["tool"] - share["inputs"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=8, help="episodes = the batch of the decoding comparison")
    parser.add_argument("--steps", type=int, default=7, help="policy calls per episode (release protocol)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of the episode comparison")
    parser.add_argument("--decode-repeats", type=int, default=10, help="interleaved propose calls per decoding mode")
    parser.add_argument("--data", default=None,
                        help="a GrabCut-style folder (manifest.json), or 'grabcut' for the default GrabCut dir")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()
    if not (ORACLE_CODE / "qwen.tiktoken").is_file():
        print(f"skipped: the tiny Qwen-VL-Chat needs the real tokenizer file {ORACLE_CODE / 'qwen.tiktoken'}, "
              "which is not here")
        return 0
    import cv2
    import torch

    torch.set_num_threads(1)  # the machines are shared: one thread gives steadier ratios
    cv2.setNumThreads(1)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        config = tiny_config()
        folder = save_checkpoint(Path(tmp) / "tiny-qwen-vl-chat", config, random_state_dict(config))
        faithful = build_policy("qwen-vl-chat", str(folder), device="cpu")  # forced prefix + grammar (default)
    tokenizer = faithful.tokenizer
    release = QwenVLChatPolicy(faithful.model, tokenizer, faithful.convention, forced_prefix=False,
                               constrained=False, name="release decoding")
    images, rows = samples(args.episodes, args.data)

    decode = decoding({"release-faithful": faithful, "release (echo)": release}, first_step_observations(rows),
                      args.decode_repeats)

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    caption = rows[0][2]
    real = format_answer(caption, 0.87, Click(20, 30, positive=False), 64, 48, faithful.convention)
    real_tokens = dict(echo=count(real) + 1, forced=count(real[len(answer_prefix(caption)):]) + 1)  # + <|im_end|>

    requests = [EpisodeRequest(image, expression) for image, _, expression in rows]
    # the release's decoding in the release protocol: one untimed run (a random model's answers end episodes)
    release.stats = PolicyStats()
    echo_run = run_episodes(release, GrabCutSegmenter(), requests, LoopConfig(max_steps=args.steps, protocol="release"))
    echo_episodes = dict(steps_per_episode=release.stats.answers / len(requests),
                         malformed_share=release.stats.malformed / max(release.stats.answers, 1),
                         stop_reasons=sorted({r.stop_reason for r in echo_run}))

    loop = episodes(faithful, GrabCutSegmenter(), requests, args.steps, args.repeats)
    report = dict(model="tiny Qwen-VL-Chat (2 layers, hidden 128, vocab 151936, random)", images=images,
                  episodes=len(requests), steps=args.steps, repeats=args.repeats, decoding=decode,
                  real_answer=real, real_answer_tokens=real_tokens, release_decoding_episodes=echo_episodes,
                  loop=loop, wall_seconds=time.perf_counter() - started)

    f, e = decode["release-faithful"], decode["release (echo)"]
    print(f"{report['model']}, {images}, batch {len(requests)}, 1 torch thread; decoding: median of "
          f"{args.decode_repeats} interleaved steps; episodes: {len(requests)} x {args.steps} steps (release "
          f"protocol), median of {args.repeats} interleaved rounds")
    print()
    print("| measure | release-faithful (forced prefix + grammar) | release's decoding (echo, free, stop words) "
          "| faithful / release |")
    print("|---|---|---|---|")
    print(f"| tokens generated per answer | {f['tokens_per_answer']:.1f} | {e['tokens_per_answer']:.1f} "
          f"(budget {e['token_budget']}) | {f['tokens_per_answer'] / e['tokens_per_answer']:.2f}x |")
    print(f"| tokens generated per step (batch {len(requests)}) | {f['tokens_per_step']:.0f} | "
          f"{e['tokens_per_step']:.0f} | {f['tokens_per_step'] / e['tokens_per_step']:.2f}x |")
    print(f"| step time | {f['step_ms']:.0f} ms | {e['step_ms']:.0f} ms | {f['step_ms'] / e['step_ms']:.2f}x |")
    print(f"| malformed answers | {100 * f['malformed_share']:.0f}% | {100 * e['malformed_share']:.0f}% | |")
    print(f"| a trained model's answer ({real!r} + <\\|im_end\\|>) | {real_tokens['forced']} tokens | "
          f"{real_tokens['echo']} tokens | {real_tokens['forced'] / real_tokens['echo']:.2f}x |")
    print(f"| steps per episode in the release protocol (random model) | {loop['steps_per_episode']:.1f} | "
          f"{echo_episodes['steps_per_episode']:.1f} ({', '.join(echo_episodes['stop_reasons'])}) | |")
    print()
    print("| measure | value |")
    print("|---|---|")
    print(f"| {len(requests)} episodes in lockstep vs one by one (throughput) | {loop['lockstep_speedup']:.2f}x "
          f"({loop['one_by_one_seconds']:.1f} s / {loop['lockstep_seconds']:.1f} s); time in generate alone "
          f"{loop['generate_speedup']:.2f}x |")
    print(f"| lockstep step ({len(requests)} episodes) | {loop['step_ms']:.0f} ms: generate "
          f"{100 * loop['share_generate']:.1f}%, tool {100 * loop['share_tool']:.1f}% |")
    print(f"| overhead outside generate and the tool | {100 * loop['overhead_outside_generate_and_tool']:.2f}% "
          f"of the step: input preparation (overlay, JPEG round trip, 448 resize, tokenising) "
          f"{100 * loop['share_inputs']:.2f}%, the rest (decoding, parsing, loop) {100 * loop['overhead_rest']:.2f}% |")
    print(f"\nwall {report['wall_seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    record("qwen_native", {"decoding": {"release-faithful (forced prefix + grammar)": f,
                                        "release's decoding (echo)": e},
                           "faithful / release: tokens per answer": f["tokens_per_answer"] / e["tokens_per_answer"],
                           "faithful / release: step time": f["step_ms"] / e["step_ms"],
                           "a trained model's answer: forced / echo tokens":
                               real_tokens["forced"] / real_tokens["echo"],
                           "episodes": loop}, setup={**vars(args), "images": images})
    return 0


if __name__ == "__main__":
    sys.exit(main())
