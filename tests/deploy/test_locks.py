"""The locks: every environment the Makefile builds installs from pip-compile output that pins every package.

A lock is stale when its requirements*.txt changed and `make lock` was not run: a requirement the lock does
not satisfy, or a lock entry still credited to a line that is gone. The installed environments hold exactly
what their locks pin (torch aside: its one pin lives in requirements-torch.txt, its build differs by machine).
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
LOCKS = sorted(REPO.glob("requirements*.lock"))
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def pins(lock: Path) -> dict[str, str]:
    """{canonical name: version} of every ``name==version`` line."""
    found = (PIN.match(line) for line in lock.read_text().splitlines())
    return {canonicalize_name(m[1]): m[2] for m in found if m}


def left_out(lock: Path) -> set[str]:
    """The packages pip-compile names as unsafe and leaves unpinned (torch)."""
    text = lock.read_text()
    if "considered to be unsafe" not in text:
        return set()
    tail = text.split("considered to be unsafe", 1)[1].splitlines()[1:]
    return {canonicalize_name(line.lstrip("# ").strip()) for line in tail if line.strip("# ").strip()}


def compile_command(lock: Path) -> list[str]:
    """The pip-compile command line in the lock's header."""
    for line in lock.read_text().splitlines():
        if line.strip("# ").startswith("pip-compile "):
            return shlex.split(line.strip("# "))
    raise AssertionError(f"{lock.name}: no pip-compile command in its header (generate it with `make lock`)")


def inputs(lock: Path) -> list[Path]:
    """The requirements files the lock was compiled from (the command's positional arguments)."""
    return [REPO / arg for arg in compile_command(lock)[1:] if not arg.startswith("-")]


def requirements(path: Path) -> list[Requirement]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line and not line.startswith("-")]


def satisfied(requirement: Requirement, version: str) -> bool:
    # a local build label (torch's +cpu) is the same release
    return requirement.specifier.contains(Version(version).public, prereleases=True)


def test_every_makefile_environment_has_a_lock():
    names = {lock.name for lock in LOCKS}
    assert names == {"requirements.lock", "requirements-test.lock", "requirements-labelstudio.lock",
                     "requirements-oracle.lock", "requirements-simpleclick-oracle.lock"}
    makefile = (REPO / "Makefile").read_text()
    for lock in LOCKS:
        assert f"-o {lock.name}" in makefile, f"`make lock` does not regenerate {lock.name}"


@pytest.mark.parametrize("lock", LOCKS, ids=lambda p: p.name)
def test_the_lock_carries_nothing_of_this_machines_pip_configuration(lock):
    text = lock.read_text()
    for line in text.splitlines():
        assert not line.startswith(("-", "--")), f"{lock.name}: an option line {line!r}"
    assert "file://" not in text and "/opt/" not in text and "/etc/" not in text
    assert "--no-emit-index-url" in compile_command(lock) and "--no-emit-find-links" in compile_command(lock)


@pytest.mark.parametrize("lock", LOCKS, ids=lambda p: p.name)
def test_the_lock_is_regenerated_after_its_requirements_change(lock):
    pinned, unpinned = pins(lock), left_out(lock)
    for source in inputs(lock):
        named = set()
        for requirement in requirements(source):
            name = canonicalize_name(requirement.name)
            named.add(name)
            if name in unpinned:
                continue
            assert name in pinned, f"{source.name} asks for {name}, {lock.name} lacks it: run `make lock`"
            assert satisfied(requirement, pinned[name]), \
                f"{source.name} asks for {requirement}, {lock.name} pins {pinned[name]}: run `make lock`"
        # a line removed from the requirements leaves its pin credited to the file: stale
        credited = re.findall(rf"^([A-Za-z0-9][A-Za-z0-9._-]*)==\S+\n(?:\s+#.*\n)*?\s+#\s+(?:via )?-r {re.escape(source.name)}$",
                              lock.read_text(), re.M)
        for name in map(canonicalize_name, credited):
            assert name in named, f"{lock.name} still pins {name} for {source.name}, which no longer asks for it"


def test_the_test_lock_agrees_with_the_runtime_lock():
    runtime, test = pins(REPO / "requirements.lock"), pins(REPO / "requirements-test.lock")
    differ = {name: (runtime[name], test[name]) for name in runtime.keys() & test.keys() if runtime[name] != test[name]}
    assert not differ, f"requirements-test.lock must be compiled against requirements.lock: {differ}"


def installed(python: Path) -> dict[str, str]:
    """{canonical name: version} of what `pip freeze` lists for that interpreter's environment."""
    out = subprocess.run([str(python), "-m", "pip", "freeze"], capture_output=True, text=True, check=True).stdout
    found = (PIN.match(line) for line in out.splitlines())
    return {canonicalize_name(m[1]): m[2] for m in found if m}


def unlocked(installed: dict[str, str], locked: dict[str, str]) -> dict[str, str]:
    return {name: version for name, version in installed.items() if locked.get(name) != version}


def needed_by(name: str) -> set[str]:
    """Every installed distribution ``name`` needs, recursively, with the extras asked of each (markers of
    this environment)."""
    from importlib.metadata import PackageNotFoundError, requires

    found, todo = set(), [(name, ())]
    while todo:
        dist, extras = todo.pop()
        try:
            needs = requires(dist) or []
        except PackageNotFoundError:
            continue
        for requirement in map(Requirement, needs):
            marker = requirement.marker
            if marker is not None and not any(marker.evaluate({"extra": e}) for e in ("", *extras)):
                continue
            key = canonicalize_name(requirement.name)
            if (key, tuple(sorted(requirement.extras))) not in found:
                found.add((key, tuple(sorted(requirement.extras))))
                todo.append((requirement.name, tuple(requirement.extras)))
    return {key for key, _ in found}


def test_the_service_environment_holds_exactly_its_locks():
    locked = {**pins(REPO / "requirements.lock"), **pins(REPO / "requirements-test.lock")}
    extra = unlocked(installed(Path(sys.executable)), locked)
    (torch,) = requirements(REPO / "requirements-torch.txt")
    assert satisfied(torch, extra.pop("torch")), "torch is not the build requirements-torch.txt pins"
    # a CUDA build of torch brings its own exact pins (nvidia-*, triton, ...): the build's, not ours;
    # torchvision comes with it on CUDA machines
    builds = needed_by("torch") | {"torchvision"} | needed_by("torchvision")
    assert not {k: v for k, v in extra.items() if k not in builds}, "installed but not locked at this version"


def test_the_label_studio_environment_holds_exactly_its_lock():
    python = REPO / ".venv-ls" / "bin" / "python"
    if not python.exists():
        pytest.skip(".venv-ls is not built (make test builds it)")
    extra = unlocked(installed(python), pins(REPO / "requirements-labelstudio.lock"))
    assert not extra, "installed in .venv-ls but not locked at this version"


def test_the_oracle_environment_holds_exactly_its_lock():
    lib = REPO / ".venv-oracle" / "lib"
    if not lib.exists():
        pytest.skip(".venv-oracle is not built (scripts/oracle-env builds it)")
    found = {}
    for meta in lib.glob("*.dist-info/METADATA"):
        fields = dict(re.findall(r"^(Name|Version): (.+)$", meta.read_text(errors="replace"), re.M))
        found[canonicalize_name(fields["Name"])] = fields["Version"]
    assert found == pins(REPO / "requirements-oracle.lock")


def test_make_installs_from_the_locks_only():
    makefile = (REPO / "Makefile").read_text()
    installs = [line for line in makefile.splitlines() if re.search(r"pip\S* .*install", line, re.I)]
    assert len(installs) >= 4
    for line in installs:
        assert "requirements.txt" not in line and "requirements-test.txt" not in line, line
        assert "--no-deps" in line or "-c requirements.lock" in line, f"an install not held by a lock: {line}"
    oracle = (REPO / "scripts" / "oracle-env").read_text()
    assert "-r requirements-oracle.lock" in oracle and "-r requirements-oracle.txt" not in oracle
