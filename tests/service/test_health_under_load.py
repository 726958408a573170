"""The service under load: the model lock is shared step by step, and /health always answers.

* The model lock is first come, first served and an annotator's replay takes it per click step: a
  one-click request on another image is served after the current step of a 30-click replay, not after
  the whole replay; a click list already in the step cache needs no lock at all.
* ``segagent serve``'s admission: at most THREADS model requests inside the app at once, more get a
  JSON 503 "busy" with Retry-After at once; the light routes always get one of the spare threads.
* Over gunicorn, exactly as ``segagent serve`` runs it: with every admitted request busy (slow clicks
  holding the model lock in turns, image downloads trickling in), /health answers before any of them
  finishes. The latency figure itself is ``bench/load_soak.py``'s; here only the order is asserted.
"""
from __future__ import annotations

import http.server
import io
import os
import signal
import socket
import subprocess
import textwrap
import threading
import time

import numpy as np
import pytest
import requests
from PIL import Image
from werkzeug.test import Client

from payloads import keypoint, predict_body
from segagent_backend.agent.segmenters.base import Segmenter
from segagent_backend.agent.types import Click, Segmentation
from segagent_backend.admission import Admission
from segagent_backend.app import create_app
from segagent_backend.cli.serve import APP, LIGHT_THREADS, gunicorn_argv
from segagent_backend.model_host import FairLock, ModelHost
from segagent_backend.settings import Settings
from tests.conftest import make_disk_image

WAIT = 10  # seconds any wait for another thread may take before the test fails (never reached when right)
QUEUE_GRACE = 0.5  # seconds a started caller is given to queue on the model lock (it needs microseconds)


def wait_until(condition, seconds: float = WAIT, what: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


# ----- the model lock ------------------------------------------------------------------------------

def test_the_fair_lock_serves_waiters_in_arrival_order():
    lock, order = FairLock(), []
    lock.acquire()

    def take(i):
        with lock:
            order.append(i)

    threads = []
    for i in range(5):
        threads.append(threading.Thread(target=take, args=(i,)))
        threads[-1].start()
        wait_until(lambda: lock.waiting == i + 1, what=f"waiter {i} to queue")
    lock.release()
    for t in threads:
        t.join(WAIT)
    assert order == [0, 1, 2, 3, 4] and not lock.locked() and lock.waiting == 0
    with pytest.raises(RuntimeError):
        lock.release()


class Recording(Segmenter):
    """A quick tool (a disk per positive click) recording every call as (which image, clicks so far);
    ``on_segment`` runs first. Its logits count the calls of the episode, to check each step resumes
    from the previous one."""

    def __init__(self, cache, on_segment=None):
        super().__init__(cache)
        self.calls: list[tuple[str, int]] = []
        self.on_segment = on_segment

    def _encode(self, image):
        return image.shape[:2], 16

    def _use(self, embedding, image):
        pass

    def segment(self, clicks, box=None, prev_logits=None):
        who = "long" if self.image_size == LONG_IMAGE.shape[:2] else "short"
        self.calls.append((who, len(clicks)))
        if self.on_segment is not None:
            self.on_segment(who, len(clicks))
        assert (0 if prev_logits is None else int(prev_logits[0])) == len(clicks) - 1
        height, width = self.image_size
        yy, xx = np.mgrid[:height, :width]
        mask = np.zeros((height, width), bool)
        for c in clicks:
            mask ^= (xx - c.x) ** 2 + (yy - c.y) ** 2 <= 100
        return Segmentation(mask, np.array([len(clicks)]), 0.5)


LONG_IMAGE = make_disk_image(160, 120)[0]
SHORT_IMAGE = make_disk_image(200, 150, centre=(60, 50), radius=25)[0]
LONG_CLICKS = [(int(40 + 80 * np.sin(i)), int(60 + 40 * np.cos(i))) for i in range(30)]


def _host(make_settings, on_segment=None) -> tuple[ModelHost, list]:
    made = []

    def build(settings, cache):
        made.append(Recording(cache, on_segment))
        return made[0]

    host = ModelHost(make_settings(), build_segmenter=build)
    host.load()
    return host, made[0].calls


def _clicks(points):
    return [Click(x, y, i % 3 != 2) for i, (x, y) in enumerate(points)]


def test_a_single_click_is_not_kept_waiting_by_a_long_replay(make_settings):
    """A 30-click replay on one image, then one click on another: the click is served between two steps
    of the replay (right after the step under way when it queued), and finishes first. Before, the
    replay held the lock for its 30 steps and the click came after all of them."""
    finished, asking = [], threading.Event()

    def on_segment(who, n):
        if who == "long" and n == 1:  # hold step 1 (the lock) until the one-click caller waits for it:
            assert asking.wait(WAIT), "the one-click caller did not start"
            time.sleep(QUEUE_GRACE)  # it takes the lock's queue at once (a cache miss is all it does first)

    host, calls = _host(make_settings, on_segment)

    def long_replay():
        host.run_clicks(LONG_IMAGE, _clicks(LONG_CLICKS))
        finished.append("long")

    def one_click():
        asking.set()
        host.run_clicks(SHORT_IMAGE, _clicks([(60, 50)]))
        finished.append("short")

    long_thread = threading.Thread(target=long_replay)
    long_thread.start()
    wait_until(lambda: len(calls) >= 1, what="the long replay's first step")
    short_thread = threading.Thread(target=one_click)
    short_thread.start()
    short_thread.join(WAIT)
    long_thread.join(WAIT * 3)
    assert finished == ["short", "long"]
    assert calls.index(("short", 1)) == 1  # right after the long replay's step 1, before its 29 others
    assert [n for who, n in calls if who == "long"] == list(range(1, 31))  # one tool call per click


def test_clicks_already_in_the_step_cache_are_answered_while_the_model_is_busy(make_settings):
    host, calls = _host(make_settings)
    clicks = _clicks(LONG_CLICKS[:3])
    first = host.run_clicks(SHORT_IMAGE, clicks)
    calls.clear()
    answers = []
    with host._model_lock:  # another caller's long model call
        thread = threading.Thread(target=lambda: answers.append(host.run_clicks(SHORT_IMAGE, clicks)))
        thread.start()
        thread.join(WAIT)
        assert answers, "a cached click list waited for the model lock"
    assert calls == [] and np.array_equal(answers[0].mask, first.mask)


# ----- admission -----------------------------------------------------------------------------------

def test_admission_turns_away_one_model_request_too_many_and_never_a_light_route():
    inside, release = threading.Event(), threading.Event()

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/predict":
            inside.set()
            release.wait(WAIT)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b"{}"]

    busy = []
    admission = Admission(app, limit=1, on_busy=lambda path, method: busy.append((path, method)))
    first = threading.Thread(target=lambda: Client(admission).post("/predict", json={}))
    first.start()
    inside.wait(WAIT)
    refused = Client(admission).post("/predict", json={})
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    assert refused.json["busy"] is True and "retry" in refused.json["error"]
    for route in ("/health", "/", "/metrics", "/versions"):
        assert Client(admission).get(route).status_code == 200
    assert Client(admission).post("/setup", json={}).status_code == 503  # every other route counts
    assert busy == [("/predict", "POST"), ("/setup", "POST")] and admission.refused == 2
    assert admission.in_flight == 1
    release.set()
    first.join(WAIT)
    assert Client(admission).post("/predict", json={}).status_code == 200 and admission.in_flight == 0


def test_serve_runs_the_admitted_app_with_spare_threads(make_settings):
    settings = make_settings(THREADS="3")
    argv = gunicorn_argv(settings, "127.0.0.1", 9999)
    assert argv[argv.index("--threads") + 1] == str(3 + LIGHT_THREADS) and argv[-1] == APP
    app = create_app(settings)
    assert isinstance(app.wsgi_app, Admission) and app.wsgi_app.limit == 3
    client = app.test_client()
    assert client.get("/health").status_code == 200
    assert client.post("/predict", data="{").status_code == 400  # admitted, answered by the app
    assert app.wsgi_app.in_flight == 0


# ----- over gunicorn -------------------------------------------------------------------------------

STEP_SECONDS = 0.4  # one slow tool call (time.sleep releases the GIL, as a GPU model call does)
SLOW_CLICKS = 8  # clicks per slow request: >= 3.2 s of model time each
TRICKLE_SECONDS = 8  # a download sending one byte every 0.2 s, then hanging up

SLOW_APP = textwrap.dedent(f"""
    import time

    from segagent_backend.agent.segmenters.grabcut import GrabCutSegmenter
    from segagent_backend.app import create_app
    from segagent_backend.model_host import ModelHost
    from segagent_backend.settings import Settings


    class SlowGrabCut(GrabCutSegmenter):
        def segment(self, *args, **kwargs):
            time.sleep({STEP_SECONDS})
            return super().segment(*args, **kwargs)


    def app():
        settings = Settings.from_env()
        return create_app(settings, ModelHost(settings, build_segmenter=lambda s, cache: SlowGrabCut(cache)))
    """)


class Media(http.server.ThreadingHTTPServer):
    """/img/N.png: the disk image (a new URL per request, so each downloads); /slow/N.png trickles."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), MediaHandler)
        buffer = io.BytesIO()
        Image.fromarray(make_disk_image()[0]).save(buffer, format="PNG")
        self.png = buffer.getvalue()
        self.served, self.trickling = [], []


class MediaHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        media: Media = self.server
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(media.png)))
        self.end_headers()
        if self.path.startswith("/slow/"):
            media.trickling.append(self.path)
            stop = time.monotonic() + TRICKLE_SECONDS
            for byte in media.png:
                if time.monotonic() > stop:
                    break
                try:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                except OSError:
                    break
                time.sleep(0.2)
            self.close_connection = True
            return
        self.wfile.write(media.png)
        media.served.append(self.path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def media():
    server = Media()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


@pytest.fixture
def slow_service(tmp_path, media):
    """``segagent serve``'s gunicorn (1 worker, THREADS=4) serving an app whose tool takes STEP_SECONDS a click."""
    (tmp_path / "slow_app.py").write_text(SLOW_APP)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(MODEL_DIR=str(tmp_path / "models"), WORKERS="1", THREADS="4",
               SEGAGENT_MEDIA_ALLOW_HOSTS=f"127.0.0.1:{media.server_address[1]}",
               SEGAGENT_MEDIA_ALLOW_PRIVATE="true", SEGAGENT_MEDIA_TIMEOUT="20", OMP_NUM_THREADS="1")
    argv = gunicorn_argv(Settings.from_env(env), "127.0.0.1", port, app="slow_app:app()")
    proc = subprocess.Popen(argv[:-1] + ["--pythonpath", str(tmp_path), argv[-1]], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/health", timeout=2).json()["model"] == "ready":
                break
        except (requests.RequestException, ValueError):
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("gunicorn did not come up:\n" + proc.communicate()[0][-3000:])
    if proc.poll() is not None:
        pytest.fail("gunicorn exited:\n" + proc.communicate()[0][-3000:])
    yield url
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_health_answers_while_every_admitted_request_is_busy(slow_service, media):
    """THREADS=4: two slow click replays (holding the model lock in turns) and two trickling downloads
    fill every admitted slot; more clicks are turned away as busy at once; /health answers before any of
    the four finishes. Before: gunicorn had 4 threads, all four waiting, and /health queued behind them."""
    base = f"http://127.0.0.1:{media.server_address[1]}"
    size = (160, 120)
    done: dict[str, float] = {}

    def post(name: str, image_url: str, shift: int):
        regions = [keypoint(30 + 5 * i + shift, 30 + 4 * (i % 5), *size, positive=i % 3 != 2, rid=f"k{i}")
                   for i in range(SLOW_CLICKS)]
        try:
            requests.post(f"{slow_service}/predict", json=predict_body(image_url, regions), timeout=60)
        finally:
            done[name] = time.monotonic()

    busy = [threading.Thread(target=post, args=(f"click{i}", f"{base}/img/{i}.png", i)) for i in range(2)]
    busy += [threading.Thread(target=post, args=(f"slow{i}", f"{base}/slow/{i}.png", 0)) for i in range(2)]
    for t in busy:
        t.start()
    wait_until(lambda: len(media.served) == 2 and len(media.trickling) == 2,
               what="both click images downloaded and both slow downloads started")

    extra = requests.post(f"{slow_service}/predict", timeout=10,
                          json=predict_body(f"{base}/img/extra.png", [keypoint(50, 50, *size)]))
    assert extra.status_code == 503 and extra.json()["busy"] is True and extra.headers["Retry-After"] == "1"

    answered = []
    for _ in range(5):
        reply = requests.get(f"{slow_service}/health", timeout=5)
        assert reply.status_code == 200 and reply.json()["status"] == "UP"
        answered.append(time.monotonic())
    metrics = requests.get(f"{slow_service}/metrics", timeout=5)
    assert metrics.status_code == 200
    still_busy = [name for name in ("click0", "click1", "slow0", "slow1") if name not in done]
    assert still_busy == ["click0", "click1", "slow0", "slow1"], f"finished before /health answered: {done}"

    for t in busy:
        t.join(60)
    assert all(done[n] > answered[-1] for n in ("click0", "click1", "slow0", "slow1"))
    again = requests.post(f"{slow_service}/predict", timeout=30,
                          json=predict_body(f"{base}/img/after.png", [keypoint(50, 50, *size)]))
    assert again.status_code == 200, again.text  # the slots are free again
    assert 'route="/predict"' in metrics.text and 'status="503"' in metrics.text
