"""The README's performance figures are the benches' own: each one is rebuilt here from the record its bench
wrote (``bench/results/<bench>.json``, what ``bench/REPORT.md`` is made from), formatted as the report
formats it, and must appear in the README as written; a bench the README cites must have a record.

When a bench is rerun, this test names the README sentences to update (``python -m tests.bench.test_readme_figures``
prints them all)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench.report import bench_names, fmt, load_records

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
RESULTS = REPO / "bench" / "results"


def records() -> dict:
    found, _ = load_records(RESULTS, bench_names())
    return {name: record["figures"] for name, record in found.items()}


def sentences(r: dict) -> dict[str, list[str]]:
    """bench -> the README's sentences quoting its figures, built from its record."""
    out: dict[str, list[str]] = {}
    if "click_cost" in r:
        tiny = r["click_cost"]["per model (medians)"]["tiny"]
        out["click_cost"] = [f"a cached click costs {fmt(tiny['cached / decoder'])}x the mask decoder alone, "
                             f"re-encoding every click {fmt(tiny['re-encode / decoder'])}x"]
    if "hf_sam_family" in r:
        ratios = [row["cached / decoder"] for row in r["hf_sam_family"]["per model (medians)"].values()]
        out["hf_sam_family"] = [f"a cached click costs {fmt(min(ratios))}-{fmt(max(ratios))}x the decoder alone"]
    if "grabcut_noc" in r:
        ours = r["grabcut_noc"]["configurations"]["ours"]
        published = r["grabcut_noc"]["configurations"]["graph cut (published)"]
        out["grabcut_noc"] = [
            f"NoC@85 {fmt(ours['NoC@85'])} and NoC@90 {fmt(ours['NoC@90'])} (published graph cut, all 50 images: "
            f"{fmt(published['NoC@85'])} and {fmt(published['NoC@90'])}) at {fmt(ours['s/click'])} s a click",
            f"NoC@85 {fmt(ours['NoC@85'])}, NoC@90 {fmt(ours['NoC@90'])} on the first "]
    if "grabcut_speed" in r:
        sets, ratio = r["grabcut_speed"]["sets"], r["grabcut_speed"]["after / before"]
        line = []
        for name in ("854x480", "native", "1920x1080"):
            after, before = sets[f"{name} all after"], sets[f"{name} all before"]
            line.append(f"{fmt(after['p50_ms'])} ms at the median against {fmt(before['p50_ms'])} ms "
                        f"({fmt(ratio[name]['p50 after/before'])}x)")
            line[-1] += f", NoC@90 {fmt(before['noc90'])} -> {fmt(after['noc90'])}"
        d = sets["854x480 all after"]
        out["grabcut_speed"] = [f"at 854x480 a click takes {line[0]}; at the images' own sizes {line[1]}; "
                                f"at 1920x1080 {line[2]}",
                                f"at 854x480 a click takes {fmt(d['p50_ms'])} ms at the median, "
                                f"{fmt(ratio['854x480']['p50 after/before'])}x the earlier tool's"]
    if "click_used" in r:
        person = r["click_used"]["person1"]["new"]
        out["click_used"] = [f"IoU {fmt(person['face'])} -> {fmt(person['face_then_shirt'])}"]
    if "queue_overhead" in r:
        latency = r["queue_overhead"]["latency"]
        out["queue_overhead"] = [
            f"a click through the queue takes {fmt(latency['click_through_queue']['p50_ms'])} ms at the median "
            f"against {fmt(latency['click_in_process']['p50_ms'])} ms in process "
            f"({fmt(r['queue_overhead']['queue / in-process click (p50)'])}x)"]
    if "loop_overhead" in r:
        out["loop_overhead"] = [f"in lockstep run {fmt(r['loop_overhead']['lockstep_speedup'])}x faster than one by one"]
    if "qwen_native" in r:
        q = r["qwen_native"]
        out["qwen_native"] = [
            f"writes {fmt(q['faithful / release: tokens per answer'])}x the tokens of the release's "
            f"echo-everything decoding in {fmt(q['faithful / release: step time'])}x the step time",
            f"in lockstep give {fmt(q['episodes']['lockstep_speedup'])}x the throughput of one by one",
            f"outside model and tool calls is {fmt(100 * q['episodes']['overhead_outside_generate_and_tool'])}% of a step"]
    if "text_start" in r:
        t = r["text_start"]["SAM 3 text start (medians)"]["default Sam3Config"]
        out["text_start"] = [f"({fmt(t['parameters M'])} M parameters, 1 CPU thread) takes {fmt(t['cold ms'] / 1000)} s "
                             f"on a new image and {fmt(t['cached / cold'])}x that",
                             f"another expression on the same image costs {fmt(t['cached / cold'])}x that"]
    if "load_soak" in r:
        soak = r["load_soak"]["phases"]["soak"]
        out["load_soak"] = [
            f"{fmt(soak['requests'])} clicks, {fmt(soak['errors'])} errors, click p50 {fmt(soak['p50_ms'] / 1000)} s / "
            f"p95 {fmt(soak['p95_ms'] / 1000)} s",
            f"/health p95 {fmt(soak['/health p95_ms'])} ms (max {fmt(soak['/health max_ms'])} ms), worker memory "
            f"{fmt(r['load_soak']['RSS soak growth %'])} % over the soak"]
        over = r["load_soak"]["phases"].get("overload")
        if over:
            out["load_soak"].append(f"{fmt(over['busy_503'])} of {fmt(over['requests'])} requests were told \"busy\"")
    return out


def readme_text() -> str:
    return re.sub(r"\s+", " ", README.read_text())


def test_every_readme_figure_is_its_bench_record():
    text = readme_text()
    missing = [f"{bench}: {s!r}" for bench, quoted in sentences(records()).items() for s in quoted if s not in text]
    assert not missing, "README figures that differ from bench/results (rerun of a bench?):\n" + "\n".join(missing)


def test_no_figure_of_a_bench_without_a_record():
    """A bench the README cites (``bench/NAME.py``, ``bench.NAME``) has a record, and every bench with a
    record in the README's summary is checked above."""
    text = README.read_text()
    cited = set(re.findall(r"bench[/.](\w+)(?:\.py)?", text)) & set(bench_names())
    have = records()
    assert not cited - set(have), f"README cites benches without a record: {sorted(cited - set(have))}"
    checked = set(sentences(have))
    summary = text[text.index("## Benchmarks"):text.index("## Design")]
    named = set(re.findall(r"^- `(\w+)` \(", summary, re.M))
    assert named and named <= checked, f"summary lines not checked against their record: {sorted(named - checked)}"


@pytest.mark.parametrize("stale", ["about 3 ms", "1.47x", "1.67x", "0.71x", "~0.1 s", "reaches NoC@90 4.64", "NoC@90 5.50",
                                   "1.04-1.15x", "~13 ms"])
def test_older_figures_are_gone(stale):
    assert stale not in readme_text()


if __name__ == "__main__":
    print(json.dumps(sentences(records()), indent=1))
