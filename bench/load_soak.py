"""Load and soak over gunicorn: concurrent interactive clicks, /health under that load, worker memory.

Starts the service exactly as ``segagent serve`` runs it (gunicorn gthread, 1 worker, THREADS + 2
threads, the admission of ``cli/serve.py``) on 127.0.0.1 and a free port: embedded mode, GrabCut, no
policy. Task images are PNGs (synthetic disks, ``--size``) served by a loopback HTTP server, allowed
with SEGAGENT_MEDIA_ALLOW_HOSTS=127.0.0.1:<port> and SEGAGENT_MEDIA_ALLOW_PRIVATE=true.

Each client is an annotator: every POST /predict carries ALL its clicks so far on its current image
(1, 2, .., ``--clicks``, then the next image), so the step cache makes each request one tool call, and
every client's clicks differ from the others'. A prober GETs /health every 0.1 s throughout.

* warm-up: one request per client (not counted), then the worker's RSS is read;
* load: ``--clients`` clients x ``--requests`` requests each;
* soak: the same clients until ``--soak`` requests in all; the worker's RSS (``/proc/PID/status``
  VmRSS) sampled every ``--sample-every`` requests: memory at the soak's start vs its end;
* overload: 2 x THREADS clients x ``--overload-requests`` each: more than the admission lets in at
  once, so some get the documented 503 "busy" (Retry-After: 1; the client waits that long and sends
  the same click again). Counted apart from errors.

Errors = any other non-2xx reply, a 2xx without a prediction, or a transport error: all must be 0.
Figures are printed and written as JSON (``--json``, default bench/results/load_soak.json), not asserted.

    .venv/bin/python -m bench.load_soak [--clients 8] [--requests 40] [--soak 3000] [--threads 8]
                                        [--size 160x120] [--max-side 96] [--clicks 5] [--json OUT]

The tool is made cheap (a small image, GrabCut at ``--max-side``) so that a soak of thousands of
requests fits in minutes on a small machine: what is measured is the service around the tool (HTTP,
media cache, admission, model lock, step cache, memory); ``bench/click_cost.py`` measures the tools.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import requests
from PIL import Image

from tests.conftest import make_disk_image
from tests.service.payloads import keypoint, predict_body

from .common import record

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "load_soak.json"
SEGAGENT = Path(sys.executable).with_name("segagent")


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----- the service -----------------------------------------------------------------------------------

def start_service(tmp: Path, media_port: int, threads: int, max_side: int) -> tuple[subprocess.Popen, str, Path]:
    """``segagent serve`` on 127.0.0.1:<free port>; returns the process, its URL and its log file."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "SEGAGENT_POLICY")}
    env.update(MODEL_DIR=str(tmp / "models"), WORKERS="1", THREADS=str(threads), SEGAGENT_SEGMENTER="grabcut",
               SEGAGENT_GRABCUT_MAX_SIDE=str(max_side),
               SEGAGENT_PRELOAD="true", LOG_LEVEL="WARNING", SEGAGENT_MEDIA_ALLOW_HOSTS=f"127.0.0.1:{media_port}",
               SEGAGENT_MEDIA_ALLOW_PRIVATE="true")
    log = tmp / "service.log"
    proc = subprocess.Popen([str(SEGAGENT), "serve", "--host", "127.0.0.1", "--port", str(port)], cwd=tmp,
                            env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the service exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/health", timeout=2).json().get("model") == "ready":
                return proc, url, log
        except (requests.RequestException, ValueError):
            pass
        time.sleep(0.2)
    stop_service(proc)
    raise SystemExit(f"no ready /health within 120 s:\n{log.read_text()[-3000:]}")


def stop_service(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def worker_pid(master: int) -> int:
    """The one gunicorn worker: the master's child process."""
    children = Path(f"/proc/{master}/task/{master}/children")
    if children.is_file() and children.read_text().split():
        return int(children.read_text().split()[0])
    for stat in Path("/proc").glob("[0-9]*/stat"):  # no /proc/.../children: scan for the parent pid
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == master:
            return int(stat.parent.name)
    raise SystemExit(f"no gunicorn worker under pid {master}")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no VmRSS for pid {pid}")


# ----- the clients -----------------------------------------------------------------------------------

@dataclass
class Tally:
    """What one phase's requests got."""

    latencies: list[float] = field(default_factory=list)  # seconds of each 2xx click
    ok: int = 0
    busy: int = 0  # the admission's 503 (retried after Retry-After)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, seconds: float, status: Optional[int], body: str) -> None:
        with self.lock:
            if status is not None and 200 <= status < 300 and '"result"' in body:
                self.ok += 1
                self.latencies.append(seconds)
            elif status == 503 and '"busy"' in body:
                self.busy += 1
            else:
                self.errors += 1
                if len(self.error_samples) < 5:
                    self.error_samples.append(f"{status}: {body[:300]}")

    def figures(self, wall: float) -> dict:
        lat = np.asarray(self.latencies) * 1000
        pct = (lambda q: round(float(np.percentile(lat, q)), 1)) if lat.size else (lambda q: None)
        return {"requests": self.ok + self.busy + self.errors, "ok": self.ok, "busy_503": self.busy,
                "errors": self.errors, "error_samples": self.error_samples, "wall_s": round(wall, 1),
                "ok_per_s": round(self.ok / wall, 1) if wall else None,
                "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99), "max_ms": pct(100)}


class Annotator:
    """One client: clicks 1..n on an image (all so far in each request), then the next image."""

    def __init__(self, index: int, url: str, images: list[str], size: tuple[int, int], clicks: int):
        self.index, self.url, self.images, self.size, self.clicks = index, url, images, size, clicks
        self.session = requests.Session()
        self.sent = 0  # requests answered with a prediction, over all phases

    def regions(self, step: int) -> tuple[str, list[dict]]:
        """The image and the clicks of this annotator's ``step``-th request (the disk is centred)."""
        image = (self.index + step // self.clicks) % len(self.images)
        n = step % self.clicks + 1
        w, h = self.size
        k = self.index
        regions = []
        for i in range(n):  # inside the disk (positive) and in the corners (negative), per annotator
            if i % 3 == 2:
                x, y, positive = 8 + 3 * (k % 8) + i, 10 + 2 * i, False
            else:
                angle = 0.7 * i + 0.4 * k
                x, y, positive = 50 + 12 * np.cos(angle), 50 + 12 * np.sin(angle), True
            regions.append(keypoint(float(x), float(y), w, h, positive=positive, rid=f"a{k}c{i}"))
        return self.images[image], regions

    def run(self, count: int, tally: Tally, stop: Optional[threading.Event] = None) -> None:
        for _ in range(count):
            if stop is not None and stop.is_set():
                return
            image, regions = self.regions(self.sent)
            body = predict_body(image, regions, task_id=1000 * self.index + self.sent)
            while True:
                started = time.perf_counter()
                try:
                    reply = self.session.post(f"{self.url}/predict", json=body, timeout=60)
                    status, text = reply.status_code, reply.text
                except requests.RequestException as exc:
                    status, text = None, f"{type(exc).__name__}: {exc}"
                tally.add(time.perf_counter() - started, status, text)
                if status == 503 and '"busy"' in text:
                    time.sleep(float(reply.headers.get("Retry-After", "1")))
                    continue  # the same click again, as the annotator would
                break
            self.sent += 1


class HealthProbe:
    """GET /health every ``every`` s (timeout 5 s) on its own thread: latencies and failures, per phase."""

    def __init__(self, url: str, every: float = 0.1):
        self.url, self.every = url, every
        self.session = requests.Session()
        self.samples: list[tuple[str, float, bool]] = []  # (phase, seconds, ok)
        self.phase = "idle"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "HealthProbe":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                ok = self.session.get(f"{self.url}/health", timeout=5).status_code == 200
            except requests.RequestException:
                ok = False
            self.samples.append((self.phase, time.perf_counter() - started, ok))
            self._stop.wait(self.every)

    def figures(self, phases: tuple[str, ...]) -> dict:
        chosen = [(s, ok) for p, s, ok in self.samples if p in phases]
        lat = np.asarray([s for s, _ in chosen]) * 1000
        if not lat.size:
            return {"probes": 0}
        return {"probes": int(lat.size), "failed": sum(1 for _, ok in chosen if not ok),
                "p50_ms": round(float(np.percentile(lat, 50)), 1), "p95_ms": round(float(np.percentile(lat, 95)), 1),
                "max_ms": round(float(lat.max()), 1), "over_1s": int((lat > 1000).sum())}


def run_phase(annotators: list[Annotator], per_client: list[int]) -> tuple[Tally, float]:
    tally = Tally()
    threads = [threading.Thread(target=a.run, args=(n, tally)) for a, n in zip(annotators, per_client)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return tally, time.perf_counter() - started


def run_soak(annotators: list[Annotator], total: int, worker: int, sample_every: int) -> tuple[Tally, float, list]:
    """The clients until ``total`` requests answered; RSS sampled every ``sample_every`` of them."""
    tally, stop = Tally(), threading.Event()
    samples = [(0, round(rss_mb(worker), 1))]
    threads = [threading.Thread(target=a.run, args=(10**9, tally, stop)) for a in annotators]
    started = time.perf_counter()
    for t in threads:
        t.start()
    next_sample = sample_every
    while True:
        done = tally.ok + tally.errors
        if done >= next_sample:
            samples.append((done, round(rss_mb(worker), 1)))
            next_sample += sample_every
        if done >= total:
            break
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    samples.append((tally.ok + tally.errors, round(rss_mb(worker), 1)))
    return tally, wall, samples


# ----- main ------------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8, help="concurrent annotators (load and soak)")
    parser.add_argument("--requests", type=int, default=40, help="requests per client in the load phase")
    parser.add_argument("--soak", type=int, default=3000, help="requests in the soak phase")
    parser.add_argument("--overload-requests", type=int, default=10, help="requests per client when overloaded (0: skip)")
    parser.add_argument("--threads", type=int, default=8, help="THREADS of the service (model requests admitted at once)")
    parser.add_argument("--size", default="160x120", help="image size WxH")
    parser.add_argument("--max-side", type=int, default=96,
                        help="SEGAGENT_GRABCUT_MAX_SIDE: a cheap tool, so the service is what is measured")
    parser.add_argument("--clicks", type=int, default=5, help="clicks per image before an annotator moves on")
    parser.add_argument("--images", type=int, default=12, help="distinct images")
    parser.add_argument("--sample-every", type=int, default=250, help="soak requests between RSS samples")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"figures as JSON (default {RESULTS.relative_to(REPO)})")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))

    tmp = Path(tempfile.mkdtemp(prefix="load-soak-"))
    media = tmp / "media"
    media.mkdir()
    for j in range(args.images):  # the disk moves a little from image to image: every image differs
        centre = (width // 2 + (j % 4) - 2, height // 2 + (j // 4) - 1)
        Image.fromarray(make_disk_image(width, height, centre, min(width, height) // 4)[0]).save(media / f"{j}.png")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(media)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    media_port = server.server_address[1]
    images = [f"http://127.0.0.1:{media_port}/{j}.png" for j in range(args.images)]

    proc, url, log = start_service(tmp, media_port, args.threads, args.max_side)
    try:
        worker = worker_pid(proc.pid)
        annotators = [Annotator(k, url, images, (width, height), args.clicks) for k in range(args.clients)]
        with HealthProbe(url) as probe:
            run_phase(annotators, [1] * len(annotators))  # warm-up: images downloaded, models ready
            rss_start = rss_mb(worker)
            probe.phase = "load"
            load, load_wall = run_phase(annotators, [args.requests] * len(annotators))
            rss_after_load = rss_mb(worker)
            probe.phase = "soak"
            soak, soak_wall, rss_samples = run_soak(annotators, args.soak, worker, args.sample_every)
            overload = overload_wall = None
            if args.overload_requests:
                probe.phase = "overload"
                crowd = [Annotator(100 + k, url, images, (width, height), args.clicks) for k in range(2 * args.threads)]
                overload, overload_wall = run_phase(crowd, [args.overload_requests] * len(crowd))
            probe.phase = "done"
        rss_end = rss_mb(worker)
        alive = proc.poll() is None and worker_pid(proc.pid) == worker  # the same worker throughout
    finally:
        stop_service(proc)
        server.shutdown()

    soak_start, soak_end = rss_samples[0][1], rss_samples[-1][1]
    figures = {
        "config": {"clients": args.clients, "threads": args.threads, "gunicorn_threads": args.threads + 2,
                   "workers": 1, "segmenter": "grabcut", "grabcut_max_side": args.max_side, "image": f"{width}x{height}", "clicks_per_image": args.clicks,
                   "images": args.images, "cpus": os.cpu_count(), "python": platform.python_version()},
        "load": load.figures(load_wall),
        "soak": soak.figures(soak_wall),
        "overload": overload.figures(overload_wall) if overload is not None else None,
        "health": {"load": probe.figures(("load",)), "soak": probe.figures(("soak",)),
                   "overload": probe.figures(("overload",)) if overload is not None else None},
        "rss_mb": {"after_warmup": round(rss_start, 1), "after_load": round(rss_after_load, 1),
                   "soak_start": soak_start, "soak_end": soak_end, "end": round(rss_end, 1),
                   "soak_growth_mb": round(soak_end - soak_start, 1),
                   "soak_growth_pct": round(100 * (soak_end - soak_start) / soak_start, 1),
                   "growth_from_warmup_mb": round(rss_end - rss_start, 1),
                   "soak_samples": rss_samples},
        "same_worker_throughout": alive,
    }
    print_table(figures)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
        print(f"\nwritten: {args.json}")
    r = figures["rss_mb"]
    record("load_soak", {"phases": {p: {k: figures[p][k] for k in ("requests", "ok", "busy_503", "errors", "ok_per_s",
                                                                  "p50_ms", "p95_ms", "max_ms")}
                                    | {f"/health {k}": v for k, v in figures["health"][p].items()}
                                    for p in ("load", "soak", "overload") if figures[p] is not None},
                         "RSS soak growth %": r["soak_growth_pct"],
                         "RSS growth from warm-up MB": r["growth_from_warmup_mb"],
                         "same worker throughout": alive},
           setup=figures["config"], extra=figures,
           plot={"title": "worker RSS during the soak", "x": "requests", "y": "RSS MB",
                 "series": {"worker RSS": r["soak_samples"]}})
    return 0


def print_table(f: dict) -> None:
    c = f["config"]
    print(f"\nGrabCut clicks over gunicorn (1 worker, THREADS={c['threads']} -> {c['gunicorn_threads']} threads), "
          f"{c['image']} images (GrabCut max side {c['grabcut_max_side']}), {c['cpus']} CPUs")
    print("| phase | clients | requests | 2xx | busy 503 | errors | 2xx/s | p50 ms | p95 ms | max ms "
          "| /health p50 ms | /health p95 ms | /health max ms | /health failed |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for phase, clients in (("load", c["clients"]), ("soak", c["clients"]), ("overload", 2 * c["threads"])):
        p, h = f[phase], f["health"][phase]
        if p is None:
            continue
        print(f"| {phase} | {clients} | {p['requests']} | {p['ok']} | {p['busy_503']} | {p['errors']} | "
              f"{p['ok_per_s']} | {p['p50_ms']} | {p['p95_ms']} | {p['max_ms']} | {h.get('p50_ms')} | "
              f"{h.get('p95_ms')} | {h.get('max_ms')} | {h.get('failed')} |")
    r = f["rss_mb"]
    print(f"\nworker RSS: {r['after_warmup']} MB after warm-up, {r['after_load']} MB after load, soak "
          f"{r['soak_start']} -> {r['soak_end']} MB ({r['soak_growth_mb']:+} MB, {r['soak_growth_pct']:+}%)")
    print("RSS during the soak (requests, MB):", ", ".join(f"{n}: {mb}" for n, mb in r["soak_samples"]))
    for phase in ("load", "soak", "overload"):
        if f[phase] and f[phase]["error_samples"]:
            print(f"{phase} errors:", *f[phase]["error_samples"], sep="\n  ")


if __name__ == "__main__":
    sys.exit(main())
