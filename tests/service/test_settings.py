"""One settings object from the environment; a bad value fails at start naming the variable."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Optional

import pytest

from segagent_backend.environment import declared
from segagent_backend.settings import FIELDS, Settings, SettingsError, setting, settings_table


def test_defaults_are_the_embedded_mode():
    s = Settings.from_env({})
    assert s.segmenter == "grabcut" and s.redis_url is None and s.port == 9090 and s.device == "auto"
    assert s.model_dir == Path("./models") and s.media_cache_dir == Path("./models/cache/media")


def test_values_are_read_and_typed():
    s = Settings.from_env({"PORT": "8000", "WORKERS": "3", "SEGAGENT_PRELOAD": "no", "DEVICE": "cuda:1",
                           "REDIS_URL": "redis://r:6379/2", "LOG_LEVEL": "debug"})
    assert (s.port, s.workers, s.preload, s.device, s.redis_url) == (8000, 3, False, "cuda:1", "redis://r:6379/2")


@pytest.mark.parametrize("env,named", [
    ({"SEGAGENT_SEGMENTER": "magic"}, "SEGAGENT_SEGMENTER"),
    ({"PORT": "ninety"}, "PORT"),
    ({"PORT": "70000"}, "PORT"),
    ({"WORKERS": "0"}, "WORKERS"),
    ({"DEVICE": "gpu"}, "DEVICE"),
    ({"SEGAGENT_SAM_TYPE": "vit_x"}, "SEGAGENT_SAM_TYPE"),
    ({"SEGAGENT_PRELOAD": "maybe"}, "SEGAGENT_PRELOAD"),
    ({"REDIS_URL": "localhost:6379"}, "REDIS_URL"),
    ({"LABEL_STUDIO_URL": "localhost:8080"}, "LABEL_STUDIO_URL"),
    ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
    ({"SEGAGENT_SEGMENTER": "sam"}, "SEGAGENT_SAM_CHECKPOINT"),
    ({"SEGAGENT_SEGMENTER": "hf-sam"}, "SEGAGENT_SAM_MODEL"),
    ({"BASIC_AUTH_USER": "u"}, "BASIC_AUTH_PASS"),
])
def test_bad_values_fail_naming_the_variable(env, named):
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env)


def test_missing_weights_fail_at_start_with_the_path(tmp_path):
    from segagent_backend.app import create_app

    env = {"SEGAGENT_SEGMENTER": "sam", "SEGAGENT_SAM_CHECKPOINT": str(tmp_path / "nope.pth")}
    with pytest.raises(SettingsError, match="nope.pth"):
        create_app(Settings.from_env(env))
    env = {"SEGAGENT_SEGMENTER": "hf-sam", "SEGAGENT_SAM_MODEL": str(tmp_path / "no-folder")}
    with pytest.raises(SettingsError, match="no-folder"):
        create_app(Settings.from_env(env))
    with pytest.raises(SettingsError, match="SEGAGENT_POLICY=.*no-policy"):
        create_app(Settings.from_env({"SEGAGENT_POLICY": str(tmp_path / "no-policy")}))


def test_readme_documents_every_setting():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert settings_table() in readme, "README settings table is stale: run scripts/update-readme-settings"
    for var, *_ in FIELDS:
        assert f"`{var}`" in readme


def test_dataclass_defaults_agree_with_the_documented_ones():
    # the README table shows FIELDS' defaults; Settings() must mean the same service
    assert Settings() == Settings.from_env({})


def test_each_variable_is_declared_once_on_its_field():
    # the field carries the variable, its default as written in the environment and its README row
    assert [(f.metadata["env"], f.name, f.metadata["default"], f.metadata["help"]) for f in fields(Settings)] == list(FIELDS)
    assert len({var for var, *_ in FIELDS}) == len(FIELDS)
    assert all(text for *_, text in FIELDS)
    s = Settings()
    assert (s.max_steps, s.stop_iou, s.train_lr, s.redis_timeout, s.preload, s.refine) == (7, 0.95, 1e-4, 2.0, True, False)
    assert type(s.redis_timeout) is float and s.model_dir == Path("./models") and s.protocol is None
    assert "| `SEGAGENT_TRAIN_LR` | `0.0001` | Peak learning rate (cosine schedule). |" in settings_table()
    assert "| `SEGAGENT_POLICY` | - |" in settings_table()


def test_a_field_without_a_declaration_is_refused():
    class Loose:
        port: int = setting("PORT", "9090", "Port.")
        extra: Optional[str] = None

    with pytest.raises(TypeError, match="extra"):
        declared(Loose)


def test_an_empty_value_means_the_default():
    s = Settings.from_env({"PORT": "", "SEGAGENT_TRAIN_LR": "  ", "SEGAGENT_SEGMENTER": "", "MODEL_DIR": " /data "})
    assert (s.port, s.train_lr, s.segmenter, s.model_dir) == (9090, 1e-4, "grabcut", Path("/data"))


def test_a_tool_is_added_by_one_table_row(monkeypatch):
    """The tools' table is the dispatcher and the list of valid names: one row, and the settings accept the
    name, the service builds it, and its weights are checked at start under their variable."""
    from segagent_backend.agent.segmenters import SEGMENTERS, Tool
    from segagent_backend.agent.segmenters.grabcut import GrabCutSegmenter
    from segagent_backend.model_paths import check_model_paths
    from segagent_backend.wiring import segmenter_from_settings

    with pytest.raises(SettingsError, match="SEGAGENT_SEGMENTER"):
        Settings.from_env({"SEGAGENT_SEGMENTER": "coarse-grabcut"})
    monkeypatch.setitem(SEGMENTERS, "coarse-grabcut",
                        Tool("GrabCut at 64 px", lambda options, cache: GrabCutSegmenter(cache, max_side=64)))
    tool = segmenter_from_settings(Settings.from_env({"SEGAGENT_SEGMENTER": "coarse-grabcut"}))
    assert isinstance(tool, GrabCutSegmenter) and tool.p.max_side == 64
    monkeypatch.setitem(SEGMENTERS, "file-tool", Tool("a .pth tool", SEGMENTERS["sam"].build, "sam_checkpoint", file=True))
    with pytest.raises(SettingsError, match="SEGAGENT_SEGMENTER=file-tool needs SEGAGENT_SAM_CHECKPOINT"):
        Settings.from_env({"SEGAGENT_SEGMENTER": "file-tool"})
    with pytest.raises(SettingsError, match="SEGAGENT_SAM_CHECKPOINT=.*nope.pth.*no such file"):
        check_model_paths(Settings.from_env({"SEGAGENT_SEGMENTER": "file-tool", "SEGAGENT_SAM_CHECKPOINT": "/nope.pth"}))


def test_the_choices_are_documented_from_their_tables():
    from segagent_backend.agent.loop import PROTOCOLS
    from segagent_backend.agent.policies import DECODINGS, POLICIES
    from segagent_backend.agent.protocol import CONVENTIONS
    from segagent_backend.agent.segmenters import SEGMENTERS

    meaning = {var: text for var, _, _, text in FIELDS}
    for var, table in (("SEGAGENT_SEGMENTER", SEGMENTERS), ("SEGAGENT_POLICY_KIND", POLICIES),
                       ("SEGAGENT_COORDINATES", CONVENTIONS), ("SEGAGENT_PROTOCOL", PROTOCOLS),
                       ("SEGAGENT_DECODING", DECODINGS)):
        assert all(f"`{name}` ({entry.help})" in meaning[var] for name, entry in table.items()), var


def test_a_model_folder_is_checked_at_start_by_the_loaders_rule(tmp_path):
    from segagent_backend.model_paths import check_model_paths

    (tmp_path / "weights.pth").write_bytes(b"")
    with pytest.raises(SettingsError, match="SEGAGENT_POLICY=.*weights.pth.*a file, not a folder"):
        check_model_paths(Settings.from_env({"SEGAGENT_POLICY": str(tmp_path / "weights.pth")}))
    with pytest.raises(SettingsError, match="SEGAGENT_TEXT_MODEL=.*nowhere.*no such folder, it does not exist"):
        check_model_paths(Settings.from_env({"SEGAGENT_TEXT_MODEL": str(tmp_path / "nowhere")}))
    check_model_paths(Settings.from_env({"SEGAGENT_POLICY": "org/name"}))  # a hub id: checked when it loads
