"""bench.report: REPORT.md from hand-made records (no bench is run)."""
import datetime
import json

from bench.report import make_bench_names, write_report

MACHINE = {"cpu": "Test CPU 9000", "cores": 2, "python": "3.11.7", "torch": "2.13.0", "torch_threads": 1, "gpu": None}


def test_report_from_records(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "alpha.json").write_text(json.dumps({
        "bench": "alpha", "date": "2026-12-03T19:00:00+00:00", "commit": "abc1234", "machine": MACHINE,
        "setup": {"repeats": 5},
        "figures": {"per model": {"tiny": {"decoder alone ms": 2.5, "cached / decoder": 1.0375},
                                  "vit_b": {"decoder alone ms": 40.0, "cached / decoder": 1.1}},
                    "speed-up": 3.25},
        "plot": {"title": "IoU", "x": "clicks", "y": "mean IoU", "series": {"ours": [0.5, 0.7, 0.9]}}}))
    (results / "beta.json").write_text(json.dumps({
        "bench": "beta", "date": "2026-12-03T19:05:00+00:00", "commit": "abc1234",
        "machine": {**MACHINE, "gpu": "NVIDIA H200"}, "figures": {"queue / in-process (p50)": 1.42}}))
    (results / "gamma.json").write_text(json.dumps({"load": {"ok": 3}}))  # no record: written before record()
    out = tmp_path / "REPORT.md"
    now = datetime.datetime(2026, 12, 3, 20, 0, tzinfo=datetime.timezone.utc)

    text = write_report(results, out, benches=["alpha", "beta", "gamma", "delta"], make_bench=["alpha", "delta"],
                        commit="abc1234", now=now, note="Reduced sizes.")

    assert out.read_text() == text
    assert "2026-12-03T20:00:00+00:00" in text and "`abc1234`" in text  # the report's date and commit
    assert "Test CPU 9000, 2 cores" in text and "torch 2.13.0 with 1 thread(s)" in text  # the machine
    assert "Measured 2026-12-03T19:00:00+00:00" in text and "GPU NVIDIA H200" in text
    assert "| tiny | 2.5 | 1.04 |" in text and "| vit_b | 40 | 1.1 |" in text  # ratios side by side
    assert "| speed-up | 3.25 |" in text and "| queue / in-process (p50) | 1.42 |" in text
    assert "Setup: repeats 5." in text
    assert "Sample size: repeats 5.\n" in text and "Sample size: not recorded by this bench." in text  # beta: none

    assert "## delta\n\nNot run in this report: no `delta.json`" in text and "it runs in `make bench`" in text
    assert "## gamma\n\nNot run in this report: `gamma.json` has no recorded figures" in text and "rerun it" in text
    assert "Reduced sizes." in text
    assert "not in this report: `gamma`, `delta`" in text
    assert (results / "alpha.png").stat().st_size > 1000 and "](results/alpha.png)" in text


def test_sample_size_line_names_small_samples_and_request_counts():
    from bench.report import sample_line

    assert sample_line({"setup": {"images": 2, "repeats": 1, "wall_s": 3.0}}) == \
        "Sample size: images 2, repeats 1 (a small sample: rough figures)."
    assert sample_line({"setup": {"clients": 8}, "figures": {"phases": {"soak": {"requests": 808}}}}) == \
        "Sample size: clients 8, soak 808 requests."


def test_make_bench_names_reads_the_bench_target(tmp_path):
    makefile = tmp_path / "Makefile"
    makefile.write_text("test:\n\t$(PY) -m bench.nope\n\nbench: install\n\t$(PY) -m bench.one\n"
                        "\tscripts/with-redis $(PY) -m bench.two\n\t$(PY) -m bench.report\n\nclean:\n\trm -rf x\n")
    assert make_bench_names(makefile) == ["one", "two"]


def test_record_writes_figures_date_and_machine(tmp_path, monkeypatch):
    from bench.common import record

    monkeypatch.setenv("SEGAGENT_BENCH_RESULTS", str(tmp_path))
    path = record("demo", {"a / b": 1.5}, setup={"repeats": 3}, extra={"raw": [1, 2]})
    data = json.loads(path.read_text())
    assert path == tmp_path / "demo.json"
    assert data["figures"] == {"a / b": 1.5} and data["setup"] == {"repeats": 3} and data["raw"] == [1, 2]
    assert data["bench"] == "demo" and data["date"].startswith("20") and data["machine"]["cores"] >= 1
    assert {"cpu", "torch_threads", "gpu"} <= set(data["machine"])
