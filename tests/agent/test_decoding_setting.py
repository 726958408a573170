"""SEGAGENT_DECODING: free (the release's decoding) or grammar; its default follows the protocol."""
from __future__ import annotations

import pytest

from segagent_backend.agent.policies.text import decoding_flags
from segagent_backend.settings import Settings, SettingsError
from segagent_backend.wiring import policy_spec


def settings(**env) -> Settings:
    return Settings.from_env({"MODEL_DIR": "/tmp/segagent-test-models", **env})


@pytest.mark.parametrize("env, expected", [
    ({"SEGAGENT_POLICY_KIND": "qwen-vl-chat"}, "free"),                      # release protocol by default
    ({"SEGAGENT_POLICY_KIND": "hf-vlm"}, "grammar"),                         # extended by default
    ({"SEGAGENT_PROTOCOL": "release"}, "free"),
    ({"SEGAGENT_PROTOCOL": "extended"}, "grammar"),
    ({"SEGAGENT_PROTOCOL": "release", "SEGAGENT_DECODING": "grammar"}, "grammar"),
    ({"SEGAGENT_PROTOCOL": "extended", "SEGAGENT_DECODING": "free"}, "free"),
])
def test_the_default_follows_the_protocol(env, expected):
    s = settings(**env)
    assert s.decoding_mode == expected and policy_spec(s).decoding == expected


def test_a_bad_value_names_the_variable():
    with pytest.raises(SettingsError, match="SEGAGENT_DECODING"):
        settings(SEGAGENT_DECODING="beam")


def test_decoding_sets_both_flags():
    assert decoding_flags("free", True, None) == (False, False)
    assert decoding_flags("grammar", False, False) == (True, True)
    assert decoding_flags(None, True, None) == (True, None)  # the flags as given
    with pytest.raises(ValueError):
        decoding_flags("beam", True, None)
