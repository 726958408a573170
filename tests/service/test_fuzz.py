"""Schemathesis over every route of the served /openapi.json, in process (WSGI): no 5xx, ever, and every
error reply is JSON with an "error" key and no stack, path or exception name.

The app runs embedded (GrabCut, no policy, MODEL_DIR in a temporary folder) with a media policy that
allows nothing, and name resolution is limited to loopback for the duration: no case reaches the network.
Each POST route gets schema-conforming (positive) and schema-violating (negative) bodies, plus the
spec's own example (SEGAGENT_FUZZ_EXAMPLES per route and mode, default 50). The counts go to /tmp/fuzz-figures.txt (cases run, 5xx found) for the README.
"""
from __future__ import annotations

import json
import os
import socket
import time
from collections import Counter
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings, strategies as st
from schemathesis.generation import GenerationMode

FIGURES = Path("/tmp/fuzz-figures.txt")
# cases per POST route and mode; SEGAGENT_FUZZ_EXAMPLES=1000 for a long run (the default keeps the file ~30 s)
EXAMPLES_PER_MODE = {"POST": int(os.environ.get("SEGAGENT_FUZZ_EXAMPLES", "50")), "GET": 3}
LEAKS = ("Traceback", "/work/", "/tmp/", "TypeError", "ValueError", "KeyError", "AttributeError",
         "OverflowError", "RecursionError")

RUN: Counter = Counter()
SERVER_ERRORS: list[str] = []


@pytest.fixture(scope="module")
def no_network():
    """Only loopback names resolve while the fuzzer runs (media is refused by policy before that anyway)."""
    real = socket.getaddrinfo

    def loopback_only(host, *args, **kwargs):
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise socket.gaierror(socket.EAI_NONAME, "no network in the fuzz tests")
        return real(host, *args, **kwargs)

    socket.getaddrinfo = loopback_only
    yield
    socket.getaddrinfo = real


@pytest.fixture(scope="module")
def schema(tmp_path_factory, no_network):
    from segagent_backend.app import create_app
    from segagent_backend.settings import Settings

    env = {"MODEL_DIR": str(tmp_path_factory.mktemp("fuzz-models")), "SEGAGENT_PRELOAD": "false",
           "SEGAGENT_SEGMENTER": "grabcut", "SEGAGENT_MEDIA_ALLOW_HOSTS": "", "SEGAGENT_MEDIA_ALLOW_PRIVATE": "false",
           "SEGAGENT_MEDIA_TIMEOUT": "2", "LOG_LEVEL": "CRITICAL"}
    app = create_app(Settings.from_env(env))
    yield schemathesis.openapi.from_wsgi("/openapi.json", app)
    FIGURES.write_text(
        f"schemathesis {schemathesis.__version__ if hasattr(schemathesis, '__version__') else ''} "
        f"cases run: {sum(RUN.values())}\n"
        + "".join(f"  {key}: {n}\n" for key, n in sorted(RUN.items()))
        + f"5xx found: {len(SERVER_ERRORS)}\n" + "".join(f"  {e}\n" for e in SERVER_ERRORS[:20]))
    print(FIGURES.read_text())


def operations(schema) -> dict:
    return {(op.method.upper(), op.path): op for op in (r.ok() for r in schema.get_all_operations())}


# /openapi.json itself is described too; schemathesis leaves the route it loaded the spec from out
ROUTES = [("GET", "/"), ("GET", "/health"), ("POST", "/setup"), ("POST", "/predict"), ("POST", "/webhook"), ("POST", "/audit"),
          ("GET", "/versions"), ("GET", "/metrics")]


def test_the_spec_describes_every_route(schema):
    assert set(operations(schema)) == set(ROUTES)
    assert "/openapi.json" in schema.raw_schema["paths"]


def check(case, mode: str) -> None:
    started = time.perf_counter()
    response = case.call()
    key = f"{case.method.upper()} {case.path} {mode}"
    RUN[key] += 1
    body = response.content.decode("utf-8", "replace")
    if response.status_code >= 500:
        SERVER_ERRORS.append(f"{key}: {response.status_code} {body[:200]}")
    assert response.status_code < 500, (key, response.status_code, body[:500])
    assert time.perf_counter() - started < 5.0, key
    if response.status_code >= 400:
        reply = json.loads(body)
        assert isinstance(reply, dict) and isinstance(reply.get("error"), str) and reply["error"], body[:300]
        for leak in LEAKS:
            assert leak not in body, (leak, body[:300])


# GET routes take no input to violate: positive cases only
CASES = [(m, p, mode) for m, p in ROUTES for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
         if m == "POST" or mode == GenerationMode.POSITIVE]


@pytest.mark.parametrize("method,path,mode", CASES)
def test_no_case_is_a_server_error(schema, method, path, mode):
    operation = operations(schema)[(method, path)]
    strategies = [operation.as_strategy(generation_mode=mode)]
    if mode == GenerationMode.POSITIVE:
        strategies += schema.get_strategies_from_examples(operation)  # the spec's own example, mutated or not

    @settings(max_examples=EXAMPLES_PER_MODE[method], deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=st.one_of(strategies))
    def run(case):
        check(case, mode.value)

    run()
