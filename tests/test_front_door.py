"""The README's commands exactly as a newcomer types them: a bare environment, any working directory.

Every test here starts processes the way a user's shell would (``env -i PATH=/usr/bin:/bin``), never
by the absolute paths the other tests know: a suite that passed while ``make run`` failed for
everyone is why this file exists.
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
SEGAGENT = REPO / ".venv" / "bin" / "segagent"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bare_env(home: Path, **extra: str) -> dict[str, str]:
    """What ``env -i PATH=/usr/bin:/bin HOME=...`` leaves a process, plus ``extra``."""
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), **extra}


def wait_for_health(proc: subprocess.Popen, url: str, seconds: float = 90) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode}:\n{proc.communicate()[0][-3000:]}")
        try:
            reply = requests.get(f"{url}/health", timeout=2)
            if reply.status_code == 200:
                return reply.json()
        except requests.RequestException:
            pass
        time.sleep(0.3)
    stop(proc)
    pytest.fail(f"no /health within {seconds} s:\n{proc.communicate()[0][-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the whole process group (make -> segagent -> gunicorn -> its workers)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def start(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def readme_commands() -> list[str]:
    """Every command line of the README's ``bash`` blocks (continuations joined, comments dropped)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def test_make_run_in_a_bare_environment(tmp_path):
    """``make run`` as the README's first command, from the repository root, with nothing but PATH."""
    assert "make run" in readme_commands()
    port = free_port()
    proc = start(["make", "run"], REPO, bare_env(tmp_path, PORT=str(port), MODEL_DIR=str(tmp_path / "models")))
    try:
        health = wait_for_health(proc, f"http://127.0.0.1:{port}")
        assert health["status"] == "UP"
    finally:
        stop(proc)


def test_serve_from_another_directory(tmp_path):
    """``segagent serve`` needs neither gunicorn on PATH nor the repository as working directory."""
    port = free_port()
    proc = start([str(SEGAGENT), "serve", "--host", "127.0.0.1", "--port", str(port)], tmp_path,
                 bare_env(tmp_path, MODEL_DIR=str(tmp_path / "models")))
    try:
        assert wait_for_health(proc, f"http://127.0.0.1:{port}")["status"] == "UP"
    finally:
        stop(proc)


def test_serve_on_a_port_in_use_says_which_setting_to_change(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([str(SEGAGENT), "serve", "--host", "127.0.0.1"], cwd=tmp_path, capture_output=True,
                              text=True, timeout=60, env=bare_env(tmp_path, PORT=str(port)))
    assert done.returncode == 2
    assert "PORT" in done.stderr and str(port) in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_bad_setting_stops_make_run_naming_the_variable(tmp_path):
    done = subprocess.run(["make", "run"], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=bare_env(tmp_path, PORT=str(free_port()), SEGAGENT_SEGMENTER="bogus"))
    assert done.returncode != 0
    assert "SEGAGENT_SEGMENTER" in done.stderr and "Traceback" not in done.stderr


def segagent_invocations() -> list[list[str]]:
    """The README's ``segagent`` command lines, as argv after the program name."""
    found = []
    for line in readme_commands():
        words = shlex.split(line)
        for i, word in enumerate(words):
            if word.endswith("segagent") and "/" in word or word == "segagent":
                found.append(words[i + 1:])
                break
    return found


def test_every_readme_segagent_command_parses(tmp_path):
    """Each ``segagent`` line of the README names a real command and only options it has."""
    invocations = segagent_invocations()
    assert len(invocations) >= 8
    helps: dict[str, str] = {}
    for argv in invocations:
        command = argv[0]
        if command not in helps:
            done = subprocess.run([str(SEGAGENT), command, "--help"], capture_output=True, text=True,
                                  timeout=120, env=bare_env(tmp_path))
            assert done.returncode == 0, f"segagent {command}: {done.stderr}"
            helps[command] = done.stdout
        for option in (w.split("=")[0] for w in argv[1:] if w.startswith("--")):
            assert option in helps[command], f"README: `segagent {command}` has no option {option}"


def test_readme_predict_example_runs_as_written(tmp_path):
    """The quick local example, with the README's own file names, in a bare environment."""
    import cv2
    import numpy as np

    line = next(c for c in readme_commands() if " predict " in c and "--click" in c)
    image = np.full((480, 640, 3), (80, 110, 70), np.uint8)
    cv2.circle(image, (320, 240), 90, (40, 40, 210), -1)
    words = shlex.split(line)
    cv2.imwrite(str(tmp_path / words[words.index("--image") + 1]), image)
    words[0] = str(REPO / words[0]) if words[0].startswith(".venv") else words[0]
    done = subprocess.run(words, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=bare_env(tmp_path, MODEL_DIR=str(tmp_path / "models")))
    assert done.returncode == 0, done.stderr
    for flag in ("--json", "--png"):
        if flag in words:
            assert (tmp_path / words[words.index(flag) + 1]).stat().st_size > 0


def test_readme_has_no_build_machine_notes():
    """A user's manual: no paths outside the repository, nothing about our build machines."""
    assert "../shared" not in README and "/work/" not in README
    assert "build machines" not in README
