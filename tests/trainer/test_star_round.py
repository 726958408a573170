"""A StaR+ round of the training pipeline runs its rollouts as the service serves: the policy spec (kind,
coordinates, device) and the loop configuration (protocol, candidates, stop rule) given, with the tiny
random Qwen2-VL through the production loader."""
from __future__ import annotations

import json
import os
from dataclasses import asdict

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from segagent_backend.agent.loop import LoopConfig  # noqa: E402
from segagent_backend.agent.policies import PolicySpec  # noqa: E402
from segagent_backend.agent.protocol import SEGAGENT_LLAVA  # noqa: E402
from segagent_backend.agent.segmenters import EmbeddingCache, build_segmenter  # noqa: E402
from segagent_backend.learning import RoundConfig  # noqa: E402
from segagent_backend.settings import Settings  # noqa: E402
from tests.conftest import make_disk_image  # noqa: E402
from trainer.datasets import Sample  # noqa: E402
from trainer.finetune import FinetuneConfig  # noqa: E402
from trainer.pipeline import train_policy  # noqa: E402
from trainer.samples import samples_from_trace  # noqa: E402
from trainer.trajectories import record_trace  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_star_round_rolls_out_under_the_loop_config_given(tiny_qwen2_vl, tmp_path):
    tool = build_segmenter("grabcut", EmbeddingCache(2**26))
    samples = []
    for centre in ((24, 20), (40, 28)):
        image, gt = make_disk_image(64, 48, centre, 10)
        samples.append(Sample(f"disk-{centre[0]}", image, gt, np.zeros_like(gt), "the red disk"))
    spec = PolicySpec("hf-vlm", str(tiny_qwen2_vl), SEGAGENT_LLAVA, device="cpu")
    sft = [x for s in samples for x in samples_from_trace(record_trace(tool, s.image, s.gt, s.ignore, [s.expression],
                                                                       s.name, max_clicks=2), s.image, spec.convention)]
    loop = LoopConfig(max_steps=2, candidates=2, stop_iou=0.6, patience=1, protocol="extended")
    config = FinetuneConfig(method="full", max_steps=1, batch_size=4, save_steps=1000, device="cpu")
    outcome = train_policy(sft, spec, tmp_path / "run", config, loop=loop, star_rounds=1, samples=samples,
                           segmenter=tool, progress=False)
    star = json.loads((tmp_path / "run" / "rounds" / "1" / "star.json").read_text())
    assert star["loop"] == asdict(loop)
    assert [r.round for r in outcome.rounds] == [0, 1] and outcome.rounds[1].samples >= len(sft)
    assert outcome.rounds[1].kept + outcome.rounds[1].replaced >= 1


def test_a_service_round_takes_the_serving_loop_and_policy_from_the_settings():
    config = RoundConfig.from_settings(Settings.from_env({
        "SEGAGENT_POLICY": "org/policy", "SEGAGENT_PROTOCOL": "release", "SEGAGENT_CANDIDATES": "3",
        "SEGAGENT_STOP_IOU": "0.8", "SEGAGENT_MAX_STEPS": "5", "SEGAGENT_COORDINATES": "llava"}))
    assert config.loop == LoopConfig(max_steps=5, candidates=3, stop_iou=0.8, patience=3, protocol="release")
    assert config.policy.convention is SEGAGENT_LLAVA and config.policy.checkpoint == "org/policy"
    assert config.policy.decoding == "free"  # the release protocol's
