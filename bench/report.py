"""bench/REPORT.md from the figures the benchmarks recorded (``bench.common.record``): one section per bench.

    .venv/bin/python -m bench.report [--results DIR] [--out FILE]

``make bench`` runs every benchmark, then this. Each bench writes ``bench/results/<bench>.json`` at the end
of its run: its figures (ratios side by side, as measured in that one run), the date, the machine (CPU
model, cores, torch threads, GPU) and the commit. The report has a header (date, machine, commit), one
section per bench with its tables, curves drawn as PNGs beside the JSON files (OpenCV), and one line
for every bench without results (not run, skipped for want of data, or failed).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from .common import REPO, git_commit, machine, results_dir

BENCH_DIR = REPO / "bench"
NOT_BENCHES = {"__init__", "common", "report"}


def bench_names(bench_dir: Path = BENCH_DIR) -> list[str]:
    """Every bench module: bench/*.py but the package, the helpers and this report."""
    return sorted(p.stem for p in bench_dir.glob("*.py") if p.stem not in NOT_BENCHES)


def make_bench_names(makefile: Path = REPO / "Makefile") -> list[str]:
    """The benches the Makefile's ``bench`` target runs (``-m bench.NAME`` lines), in order."""
    try:
        text = makefile.read_text()
    except OSError:
        return []
    target = re.search(r"^bench:.*?(?=^\S|\Z)", text, re.M | re.S)
    found = re.findall(r"-m bench\.(\w+)", target.group(0) if target else "")
    return [n for n in found if n != "report"]


# ----- formatting -------------------------------------------------------------------------------------

def fmt(value: Any) -> str:
    """A cell: 3 significant digits for fractions, no exponent for big numbers."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.1f}"
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        text = ", ".join(fmt(v) for v in value)
        return text if len(text) <= 60 else text[:57] + "..."
    return str(value).replace("|", "\\|").replace("\n", " ")


def flatten(row: dict, prefix: str = "") -> dict:
    """Nested dicts of a row as ``outer.inner`` columns."""
    out = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def is_table(value: Any) -> bool:
    """A list of row dicts, or a dict whose values are all row dicts."""
    if isinstance(value, list):
        return bool(value) and all(isinstance(v, dict) for v in value)
    return isinstance(value, dict) and bool(value) and all(isinstance(v, dict) for v in value.values())


def table(value: Any, label: str = "") -> list[str]:
    """Markdown rows of a table figure: one line per row, the rows' keys (union, first-seen order) as columns."""
    if isinstance(value, dict):
        rows = [(str(k), flatten(v)) for k, v in value.items()]
    else:
        rows = [("", flatten(v)) for v in value]
    columns: list[str] = []
    for _, row in rows:
        columns += [c for c in row if c not in columns]
    head = ([label] if isinstance(value, dict) else []) + columns
    lines = ["| " + " | ".join(fmt(h) for h in head) + " |", "|" + "---|" * len(head)]
    for name, row in rows:
        cells = ([name] if isinstance(value, dict) else []) + [fmt(row.get(c)) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def figures_markdown(figures: dict) -> list[str]:
    """The tables first (each under its name), then every single figure in one ``figure | value`` table."""
    lines: list[str] = []
    singles = {}
    for key, value in figures.items():
        if is_table(value):
            lines += [f"**{key}**", ""] + table(value, "") + [""]
        elif isinstance(value, dict):
            singles.update(flatten(value, f"{key}: "))
        else:
            singles[key] = value
    if singles:
        lines += ["| figure | value |", "|---|---|"] + [f"| {fmt(k)} | {fmt(v)} |" for k, v in singles.items()] + [""]
    return lines


def hardware_line(m: Optional[dict]) -> str:
    """CPU model, cores, GPU (when the bench used one), Python: what stays the same from bench to bench."""
    if not m:
        return "not recorded"
    parts = [f"{m.get('cpu') or 'unknown CPU'}, {m.get('cores')} cores"]
    if m.get("gpu"):
        parts.append(f"GPU {m['gpu']}")
    parts.append(f"Python {m.get('python')}")
    return ", ".join(parts)


def machine_line(m: Optional[dict]) -> str:
    """The hardware and what the bench set: torch's version and threads, and whether it ran on a GPU."""
    if not m:
        return "not recorded"
    line = hardware_line(m)
    if m.get("torch_threads") is None:
        return line + " (torch not loaded)"
    return line + f", torch {m.get('torch')} with {m['torch_threads']} thread(s)" + ("" if m.get("gpu") else ", no GPU")


# ----- plots ------------------------------------------------------------------------------------------

COLOURS = [(180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148)]  # BGR


def points(series: Sequence) -> list[tuple[float, float]]:
    """``[y, ...]`` (x = 1, 2, ..) or ``[[x, y], ...]``."""
    if series and isinstance(series[0], (list, tuple)):
        return [(float(x), float(y)) for x, y in series]
    return [(float(i + 1), float(y)) for i, y in enumerate(series)]


def draw_plot(plot: dict, path: Path, width: int = 720, height: int = 420) -> Optional[Path]:
    """A line chart of ``plot`` (see ``bench.common.record``) as a PNG, drawn with OpenCV; None without data."""
    import cv2
    import numpy as np

    curves = {name: points(s) for name, s in (plot.get("series") or {}).items() if s}
    if not curves:
        return None
    xs = [x for c in curves.values() for x, _ in c]
    ys = [y for c in curves.values() for _, y in c]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5 * (abs(y0) or 1), y1 + 0.5 * (abs(y1) or 1)
    left, right, top, bottom = 70, 20, 55, 50
    whole_x = all(float(x).is_integer() for x in xs)
    img = np.full((height, width, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX

    def px(x: float, y: float) -> tuple[int, int]:
        return (int(round(left + (x - x0) / (x1 - x0) * (width - left - right))),
                int(round(height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom))))

    cv2.rectangle(img, (left, top), (width - right, height - bottom), (0, 0, 0), 1)
    for i in range(5):  # grid and tick labels
        fy = y0 + (y1 - y0) * i / 4
        fx = x0 + (x1 - x0) * i / 4
        _, yy = px(x0, fy)
        xx, _ = px(fx, y0)
        cv2.line(img, (left, yy), (width - right, yy), (225, 225, 225), 1)
        cv2.putText(img, fmt(fy), (5, yy + 4), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(img, fmt(round(fx)) if whole_x else fmt(fx), (xx - 10, height - bottom + 18), font, 0.4,
                    (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, str(plot.get("title", ""))[:90], (left, 22), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, str(plot.get("x", "")), (width // 2 - 20, height - 12), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, str(plot.get("y", "")), (5, top - 8), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    for k, (name, curve) in enumerate(curves.items()):
        colour = COLOURS[k % len(COLOURS)]
        pts = np.array([px(x, y) for x, y in curve], np.int32)
        cv2.polylines(img, [pts], False, colour, 2, cv2.LINE_AA)
        for p in pts:
            cv2.circle(img, (int(p[0]), int(p[1])), 3, colour, -1, cv2.LINE_AA)
        ly = top + 20 + 18 * k
        cv2.line(img, (width - right - 200, ly - 4), (width - right - 175, ly - 4), colour, 2)
        cv2.putText(img, str(name)[:24], (width - right - 168, ly), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        return None
    return path


# ----- the report -------------------------------------------------------------------------------------

#: setup keys that say how much a bench measured (images, samples, repetitions), in the order they are named
SAMPLE_KEYS = ("images", "limit", "traces", "samples", "sft_samples", "episodes", "steps", "jobs", "clicks", "clients",
               "requests", "repeats", "decode_repeats", "cold", "warm")


def sample_line(record: dict) -> str:
    """``Sample size: images 2, repeats 5.``: what the figures of a section rest on (from its setup, and the
    request counts of a bench whose figures have phases), or that the bench did not record it."""
    setup = record.get("setup") or {}
    parts = [f"{k} {fmt(setup[k])}" for k in SAMPLE_KEYS if setup.get(k) not in (None, "", False)]
    phases = (record.get("figures") or {}).get("phases")
    if isinstance(phases, dict):
        parts += [f"{name} {fmt(p['requests'])} requests" for name, p in phases.items()
                  if isinstance(p, dict) and "requests" in p]
    if not parts:
        return "Sample size: not recorded by this bench."
    small = any(k in ("images", "limit", "episodes") and isinstance(setup.get(k), int) and setup[k] < 5 for k in setup)
    return "Sample size: " + ", ".join(parts) + (" (a small sample: rough figures)." if small else ".")

def load_records(results: Path, names: Iterable[str]) -> tuple[dict, dict]:
    """(bench -> record) for every ``<bench>.json`` in ``results`` written by ``record``, and (bench -> why
    not) for files that are there but are no record (unreadable, or written before ``record`` existed)."""
    records, unusable = {}, {}
    for name in names:
        path = results / f"{name}.json"
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            unusable[name] = f"`{path.name}` is unreadable ({type(exc).__name__})"
            continue
        if not isinstance(data, dict) or "figures" not in data or "machine" not in data:
            unusable[name] = f"`{path.name}` has no recorded figures (written before `bench.common.record`)"
            continue
        records[name] = data
    return records, unusable


def write_report(results: Optional[Path] = None, out: Optional[Path] = None, benches: Optional[Sequence[str]] = None,
                 make_bench: Optional[Sequence[str]] = None, commit: Optional[str] = None,
                 now: Optional[datetime.datetime] = None, note: str = "") -> str:
    """Write ``out`` (default bench/REPORT.md) from the records in ``results`` (default bench/results) and
    return its text. ``benches``: the benches to report (default every bench module); ``make_bench``: those
    ``make bench`` runs (default: read from the Makefile), only to say why one has no results; ``note``: a
    paragraph under the header (e.g. how the runs were made smaller)."""
    results = Path(results) if results is not None else results_dir()
    out = Path(out) if out is not None else BENCH_DIR / "REPORT.md"
    benches = list(benches) if benches is not None else bench_names()
    make_bench = list(make_bench) if make_bench is not None else make_bench_names()
    commit = commit if commit is not None else (git_commit() or "unknown")
    now = now or datetime.datetime.now(datetime.timezone.utc)
    here = machine()
    records, unusable = load_records(results, benches)

    lines = ["# Benchmark report", "",
             f"Written {now.isoformat(timespec='seconds')} by `python -m bench.report` (the last step of "
             f"`make bench`) at commit `{commit}`.", ""]
    if note:
        lines += [note, ""]
    measured = sorted({hardware_line(r.get("machine")) for r in records.values()})
    lines.append(f"- Machine: {'; '.join(measured) if measured else hardware_line(here)}"
                 + (" (the benches ran on different machines)" if len(measured) > 1 else ""))
    dates = sorted(str(r.get("date")) for r in records.values())
    if dates:
        lines.append(f"- Benches run between {dates[0]} and {dates[-1]} (each section gives its own run's date)")
    stale = sorted(n for n, r in records.items() if r.get("commit") and r.get("commit") != commit)
    if stale:
        lines.append("- Recorded at another commit than this report's (the working tree may differ from either): "
                     + ", ".join(f"`{n}`" for n in stale))
    lines.append(f"- Results: {len(records)} of {len(benches)} benches"
                 + (f"; not in this report: {', '.join(f'`{n}`' for n in benches if n not in records)}"
                    if len(records) < len(benches) else ""))
    lines += ["", "Every figure of a section comes from one run of that bench: ratios are measured side by side "
              "under the same load, never against a table measured elsewhere.", ""]

    for name in benches:
        lines += [f"## {name}", ""]
        record = records.get(name)
        if record is None:
            why = unusable.get(name) or f"no `{name}.json` in the results"
            if name in unusable:
                hint = f"rerun it (`make bench` or `python -m bench.{name}`)"
            elif name in make_bench:
                hint = "it runs in `make bench`: it was skipped (e.g. its data set or Redis is missing) or failed"
            else:
                hint = f"it is not in `make bench`: run `python -m bench.{name}`"
            lines += [f"Not run in this report: {why}; {hint}.", ""]
            continue
        lines.append(f"Measured {record.get('date')} at commit `{record.get('commit') or 'unknown'}` on "
                     f"{machine_line(record.get('machine'))}.")
        setup = {k: v for k, v in (record.get("setup") or {}).items() if v is not None}
        lines.append(sample_line(record))
        if setup:
            lines.append("Setup: " + ", ".join(f"{k} {fmt(v)}" for k, v in setup.items()) + ".")
        lines.append("")
        lines += figures_markdown(record.get("figures") or {})
        if record.get("plot"):
            png = draw_plot(record["plot"], results / f"{name}.png")
            if png is not None:
                rel = os.path.relpath(png, out.parent)
                lines += [f"![{record['plot'].get('title', name)}]({rel})", ""]
    text = "\n".join(lines).rstrip() + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=None, help="the records' folder (default bench/results)")
    p.add_argument("--out", type=Path, default=None, help="the report (default bench/REPORT.md)")
    p.add_argument("--note", default="", help="a paragraph under the header (e.g. that the runs were made smaller)")
    args = p.parse_args(argv)
    text = write_report(args.results, args.out, note=args.note)
    out = args.out or BENCH_DIR / "REPORT.md"
    print(f"written: {out} ({text.count(chr(10) + '## ')} benches)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
