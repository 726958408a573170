"""Refinement whatever the Auto-Accept toggle: a click continues the object Label Studio's screen accepted.

Auto-Accept on: Label Studio keeps the accepted brush region (its id is ours), deletes the smart keypoints and
sends the next click alone; the task's draft, once saved, holds the accepted region. Auto-Accept off: every
click so far comes in the context. The same clicks must give the same mask and one region either way.
"""
from __future__ import annotations

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle

from payloads import keypoint, predict_body
from segagent_backend.labelstudio.context import Prompt
from segagent_backend.labelstudio.control_models.keypoint_labels import PercentClick
from segagent_backend.labelstudio.sessions import MemorySessions, RedisSessions, Session

W, H = 160, 120
INSIDE, EDGE, FAR = (80, 60), (100, 60), (20, 20)  # the disk: centre (80, 60), radius 30


def click(xy, positive=True, rid="k1") -> dict:
    return keypoint(100 * xy[0] / W, 100 * xy[1] / H, W, H, positive, rid=rid)


def ask(client, url, regions, drafts=None) -> dict:
    body = predict_body(url, regions)
    if drafts is not None:
        body["tasks"][0]["drafts"] = drafts
    reply = client.post("/predict", json=body)
    assert reply.status_code in (200, 422), reply.json
    return reply.json["results"][0]


def brush(answer: dict) -> dict:
    (region,) = [r for r in answer["result"] if r["type"] == "brushlabels"]
    return region


def mask_of(region: dict) -> np.ndarray:
    return decode_rle(region["value"]["rle"]).reshape(H, W, 4)[:, :, 3] > 0


def accepted_draft(region: dict, *extra: dict) -> list[dict]:
    """The task's draft after Label Studio accepted ``region`` (the smart keypoints deleted)."""
    return [{"id": 1, "user": "annotator@example.com", "result": [region, *extra]}]


@pytest.fixture
def url(media_server):
    return f"{media_server}/disk.png"


@pytest.fixture
def clicks_off(make_client, url):
    """What a positive then a negative click give with Auto-Accept off (both clicks in the context)."""
    client = make_client()
    first = ask(client, url, [click(INSIDE)])
    second = ask(client, url, [click(INSIDE), click(EDGE, False, "k2")])
    return first, second


def test_auto_accept_off_refines_one_region(clicks_off):
    first, second = clicks_off
    assert brush(second)["id"] == brush(first)["id"]  # an accepted suggestion replaces, never adds
    assert mask_of(brush(first))[EDGE[1], EDGE[0]] and not mask_of(brush(second))[EDGE[1], EDGE[0]]


@pytest.mark.parametrize("draft_saved", ["after the accept", "before the accept", "not yet"])
def test_auto_accept_on_gives_what_auto_accept_off_gives(make_client, url, clicks_off, draft_saved):
    client = make_client()
    first = ask(client, url, [click(INSIDE)])
    region = brush(first)
    drafts = {"after the accept": accepted_draft(region),
              "before the accept": accepted_draft(click(INSIDE)),  # still the keypoint: saved too early
              "not yet": None}[draft_saved]
    second = ask(client, url, [click(EDGE, False, "k2")], drafts)  # the negative click alone
    assert brush(second)["id"] == region["id"]
    assert np.array_equal(mask_of(brush(second)), mask_of(brush(clicks_off[1])))
    assert not mask_of(brush(second))[EDGE[1], EDGE[0]]


def test_a_deleted_region_is_not_continued(make_client, url):
    client = make_client()
    ask(client, url, [click(INSIDE)])
    emptied = accepted_draft(click(FAR, rid="k7"))  # the draft holds neither our region nor its clicks
    answer = ask(client, url, [click(EDGE, False, "k2")], emptied)
    assert "result" not in answer and "mask is empty" in answer["error"]  # a lone negative click, as before


def test_a_positive_click_away_from_the_mask_starts_a_new_object(make_client, url):
    client = make_client()
    first = ask(client, url, [click(INSIDE)])
    fresh = ask(make_client(), url, [click(FAR, rid="k9")])
    second = ask(client, url, [click(FAR, rid="k9")], accepted_draft(brush(first)))
    assert brush(second)["id"] != brush(first)["id"]
    assert np.array_equal(mask_of(brush(second)), mask_of(brush(fresh)))


def test_another_annotators_object_is_not_continued(make_client, url):
    client = make_client()
    first = ask(client, url, [click(INSIDE)], [{"id": 1, "user": "a@example.com", "result": [click(INSIDE)]}])
    theirs = [{"id": 2, "user": "b@example.com", "result": [click(FAR, rid="k8")]}]
    second = ask(client, url, [click(EDGE, True, "k2")], theirs)
    assert brush(second)["id"] != brush(first)["id"]


def test_without_memory_a_click_continues_the_drafts_region_it_is_on(make_settings, url, disk_image):
    from segagent_backend.agent.types import Click
    from segagent_backend.app import create_app

    made = ask(create_app(make_settings()).test_client(), url, [click(INSIDE)])  # another process answered it
    region = brush(made)
    app = create_app(make_settings())
    answer = ask(app.test_client(), url, [click(EDGE, False, "k2")], accepted_draft(region))
    assert brush(answer)["id"] == region["id"]
    # the episode started from the draft's mask: what the tool gives for that click on that mask
    expected = app.config["SEGAGENT_HOST"].run_clicks(disk_image[0], [Click(*EDGE, False)], mask=mask_of(region))
    assert np.array_equal(mask_of(brush(answer)), expected.mask) and not expected.mask[EDGE[1], EDGE[0]]


def test_sessions_round_trip_through_redis(redis_url):
    import redis

    connection = redis.Redis.from_url(redis_url)
    sessions = RedisSessions(connection, "test-click-sessions", ttl=60)
    session = Session("r1", ["k1", "k2"], [PercentClick(10.0, 20.0, True, "Banana"), PercentClick(1.0, 2.0, False, None)],
                      None, ("where", [1, 2, 3], (4, 5)), (1.0, 2.0, 3.0, 4.0), "a@example.com")
    try:
        sessions.put("3:7", session)
        assert sessions.get("3:7") == session and sessions.get("3:8") is None
        assert 0 < connection.ttl("test-click-sessions:click-session:3:7") <= 60
    finally:
        connection.delete("test-click-sessions:click-session:3:7")


def test_memory_sessions_are_bounded():
    sessions = MemorySessions(capacity=2)
    for key in "abc":
        sessions.put(key, Session(key, [], []))
    assert sessions.get("a") is None and sessions.get("c").region_id == "c"
    assert Prompt().ids == []
