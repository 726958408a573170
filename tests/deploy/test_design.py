"""docs/design.md's promises about the code's shape: imports point down the layers, no import cycles, and the
measured table is what `scripts/design-metrics` measures today (regenerate it with `--write`)."""
from __future__ import annotations

import ast
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


MUTABLE_CALLS = {"list", "dict", "set", "defaultdict", "OrderedDict", "deque", "Counter", "Lock", "local"}


def module_state(path: Path) -> list[str]:
    """Module-level names of ``path`` bound to a mutable container (or a lock, a thread-local), and any
    ``global`` statement: state a job could share with the next one behind the worker's back."""
    tree = ast.parse(path.read_text())
    found = [f"{path.name}: global {', '.join(n.names)}" for n in ast.walk(tree) if isinstance(n, ast.Global)]
    for node in tree.body:
        value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
        mutable = isinstance(value, (ast.List, ast.Dict, ast.Set, ast.ListComp, ast.DictComp, ast.SetComp)) or (
            isinstance(value, ast.Call) and getattr(value.func, "id", getattr(value.func, "attr", "")) in MUTABLE_CALLS)
        if mutable:
            found.append(f"{path.name}:{node.lineno}")
    return found


def test_queue_modules_hold_no_mutable_state():
    """A worker's jobs get everything through their WorkerContext; nothing in queue/ is shared behind it."""
    assert [s for p in sorted((REPO / "segagent_backend" / "queue").glob("*.py")) for s in module_state(p)] == []


def test_module_state_check_sees_state(tmp_path):
    sample = tmp_path / "jobs.py"
    sample.write_text("_resident = None\nCACHE = {}\nSEEN = set()\nNAMES = ('a',)\n"
                      "def install(x):\n    global _resident\n    _resident = x\n")
    assert module_state(sample) == ["jobs.py: global _resident", "jobs.py:2", "jobs.py:3"]
