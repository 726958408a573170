"""Every command's first minute, in the environment a newcomer has (nothing but PATH, HOME and a fresh
MODEL_DIR): a service a setting names that does not answer, a bad setting, a bad option is ONE line on
standard error naming what to fix, exit status 2, no traceback."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SEGAGENT = REPO / ".venv" / "bin" / "segagent"


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DOWN = closed_port()
REDIS_DOWN = {"REDIS_URL": f"redis://:hunter2@127.0.0.1:{DOWN}/0"}
LS_DOWN = {"LABEL_STUDIO_URL": f"http://127.0.0.1:{DOWN}", "LABEL_STUDIO_API_KEY": "token"}


def newcomer(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    command = [str(SEGAGENT)] if SEGAGENT.exists() else [sys.executable, "-m", "segagent_backend.cli"]
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "MODEL_DIR": str(tmp_path / "models"),
             "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), **env}
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=120, env=clean, cwd=tmp_path)


# (command line, environment, words the one line must hold)
CASES = {
    "predict: bad option": (["predict", "--click", "1,2"], {}, ["segagent predict:", "--image", "--help"]),
    "serve: bad integer": (["serve"], {"WORKERS": "two"}, ["WORKERS='two'", "whole number"]),
    "worker: Redis down": (["worker"], REDIS_DOWN, ["REDIS_URL=redis://***@127.0.0.1", "does not answer"]),
    "worker: bad queue": (["worker", "--queues", "fast"], {}, ["--queues", "interactive,batch,train"]),
    "jobs: Redis down": (["jobs"], REDIS_DOWN, ["Redis at REDIS_URL=", "does not answer"]),
    "preannotate: Redis down": (["preannotate", "--project", "1"], {**REDIS_DOWN, **LS_DOWN}, ["REDIS_URL"]),
    "preannotate: no project": (["preannotate"], {}, ["--project"]),
    "refine: Redis down": (["refine", "--project", "1"], {**REDIS_DOWN, **LS_DOWN}, ["REDIS_URL"]),
    "audit: no policy": (["audit", "--project", "1"], LS_DOWN, ["SEGAGENT_POLICY"]),
    "versions: empty folder": (["versions", "register", "."], {}, ["holds no model"]),
    "trajectories: no folder": (["trajectories", "--images", "none", "--masks", "none", "--out", "t.json"], {},
                                ["images folder", "does not exist"]),
    "train: no base": (["train", "--data", "x", "--out", "o"], {}, ["--base", "SEGAGENT_POLICY"]),
    "training: bad float": (["training", "list"], {"SEGAGENT_HOLDOUT": "a fifth"}, ["SEGAGENT_HOLDOUT='a fifth'",
                                                                                     "must be a number"]),
    "eval: no manifest": (["eval", "--noc", "--manifest", "manifest.json", "--out", "runs"], {}, ["--manifest"]),
    "settings: bad integer": (["settings"], {"SEGAGENT_MAX_STEPS": "seven"}, ["SEGAGENT_MAX_STEPS='seven'",
                                                                              "whole number"]),
}


@pytest.mark.parametrize("case", CASES)
def test_one_line_and_exit_status_2(case, tmp_path):
    args, env, words = CASES[case]
    done = newcomer(tmp_path, *args, **env)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert lines[0].startswith(f"segagent {args[0]}:"), lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    assert "hunter2" not in done.stderr  # the Redis password is never printed


def test_label_studio_down_is_one_line_naming_its_setting(tmp_path, redis_url):
    """With Redis answering, `segagent preannotate` meets Label Studio not answering."""
    done = newcomer(tmp_path, "preannotate", "--project", "1", REDIS_URL=redis_url, **LS_DOWN)
    (line,) = done.stderr.strip().splitlines()
    assert done.returncode == 2 and line.startswith("segagent preannotate: Label Studio at LABEL_STUDIO_URL=")
    assert "start it, or fix LABEL_STUDIO_URL" in line
