"""docs/design.md's promises about the code's shape: imports point down the layers, no import cycles, and the
measured table is what `scripts/design-metrics` measures today (regenerate it with `--write`)."""
from __future__ import annotations

import importlib.machinery
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "design-metrics"


@pytest.fixture(scope="module")
def metrics():
    loader = importlib.machinery.SourceFileLoader("design_metrics", str(SCRIPT))
    spec = importlib.util.spec_from_loader("design_metrics", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_no_module_imports_a_higher_layer(metrics):
    mods = metrics.modules()
    graph = {n: metrics.imports(n, p, set(mods)) for n, p in mods.items()}
    assert metrics.upward_imports(graph) == []


def test_no_import_cycles(metrics):
    mods = metrics.modules()
    graph = {n: metrics.imports(n, p, set(mods)) for n, p in mods.items()}
    assert metrics.cycles(graph) == []


def test_the_checks_see_a_violation(metrics):
    """The rules catch what they are for: an agent module importing the service, a two-module cycle."""
    graph = {"segagent_backend.agent.engine": {"segagent_backend.queue.jobs"}, "segagent_backend.queue.jobs": set()}
    assert metrics.upward_imports(graph) == ["segagent_backend.agent.engine -> segagent_backend.queue.jobs"]
    assert metrics.cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]


def test_design_doc_table_is_current():
    run = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
