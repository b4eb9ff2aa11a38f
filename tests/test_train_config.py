"""The training config system: typed YAML + overrides, and errors that name the key."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import pytest

from course_lib.train import ConfigError, config_from_dict, config_to_dict, get_family, list_families
from course_lib.train.config import RunConfig, apply_overrides, coerce, config_diff, load_config
from course_lib.train.families.mel_autoencoder import MelAutoencoderRunConfig


@pytest.fixture(scope="module")
def family():
    return get_family("mel_autoencoder")


def test_packaged_configs_load_with_their_types(family):
    tiny = family.load_config("tiny")
    paper = family.load_config("paper")
    assert isinstance(tiny, MelAutoencoderRunConfig)
    assert tiny.train.device == "cpu" and tiny.train.precision == "fp32"
    assert isinstance(tiny.optim.lr, float) and tiny.optim.lr == pytest.approx(3e-3)
    assert paper.optim.betas == (0.9, 0.99)  # YAML list -> tuple[float, float]
    assert paper.train.compile is True and paper.train.ema_decay > 0
    assert paper.model.n_mels == 80 and tiny.model.n_mels == 40


def test_overrides_are_parsed_by_the_field_type(family):
    cfg = family.load_config("tiny", ["optim.lr=1e-3", "train.max_steps=7", "train.compile=true",
                                      "optim.betas=0.8,0.95", "data.eval_source=none", "optim.schedule=constant",
                                      "model.dropout=0.25", "train.run_dir=somewhere/else"])
    assert cfg.optim.lr == 1e-3 and type(cfg.optim.lr) is float
    assert cfg.train.max_steps == 7 and type(cfg.train.max_steps) is int
    assert cfg.train.compile is True
    assert cfg.optim.betas == (0.8, 0.95)
    assert cfg.data.eval_source is None
    assert cfg.optim.schedule == "constant"
    assert cfg.model.dropout == 0.25
    assert cfg.train.run_dir == "somewhere/else"
    assert family.load_config("tiny", ["optim.betas=[0.5, 0.6]"]).optim.betas == (0.5, 0.6)


@pytest.mark.parametrize("override, message", [
    ("optim.lr=fast", "optim.lr: expected float, got 'fast'"),
    ("model.chanels=3", "unknown key model.chanels (did you mean model.channels?)"),
    ("train.max_steps=1.5", "train.max_steps: expected int, got '1.5'"),
    ("train.compile=maybe", "train.compile: expected bool (true/false), got 'maybe'"),
    ("optim.schedule=linear", "optim.schedule: expected one of 'cosine', 'constant', got 'linear'"),
    ("optim.betas=0.9", "optim.betas: expected 2 values, got 1"),
    ("optim=3", "optim: is a section, not a value"),
    ("optim.lr", "expected key=value"),
    ("optim.lr=-1", "optim.lr: must be > 0, got -1.0"),
    ("train.ema_decay=1.0", "train.ema_decay: must be in [0, 1)"),
    ("data.source=/no/such/folder", "data.source: folder '/no/such/folder' does not exist"),
    ("data.source=generated:speech", "data.source: unknown generated set 'speech'"),
    ("model.sample_rate=22050", "model.sample_rate (22050 Hz) must equal data.sample_rate (16000 Hz)"),
    ("model.kernel_size=4", "model.kernel_size: must be odd"),
])
def test_bad_overrides_name_the_key(family, override, message):
    with pytest.raises(ConfigError) as err:
        family.load_config("tiny", [override])
    assert message in str(err.value)


def test_yaml_values_are_checked_like_overrides(tmp_path, family):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  chanels: 3\n")
    with pytest.raises(ConfigError, match=r"unknown key model\.chanels \(did you mean model\.channels\?\)"):
        family.load_config(path)
    path.write_text("train:\n  max_steps: ten\n")
    with pytest.raises(ConfigError, match="train.max_steps: expected int, got 'ten'"):
        family.load_config(path)
    path.write_text("train:\n  compile: 1\n")
    with pytest.raises(ConfigError, match=r"train.compile: expected bool \(true/false\), got 1"):
        family.load_config(path)
    path.write_text("optim:\n  lr: 1e-3\n")  # PyYAML reads 1e-3 as a string: still a float here
    assert family.load_config(path).optim.lr == 1e-3
    path.write_text("family: vocoder\n")
    with pytest.raises(ConfigError, match="is for family 'vocoder', not 'mel_autoencoder'"):
        family.load_config(path)
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        family.load_config(path)
    with pytest.raises(ConfigError, match="config file not found"):
        family.load_config(tmp_path / "missing.yaml")


def test_existing_folder_is_a_valid_source(tmp_path, family):
    cfg = family.load_config("tiny", [f"data.source={tmp_path}"])
    assert cfg.data.source == str(tmp_path)
    assert family.load_config("tiny", ["data.source=hub:someone/audio"]).data.source == "hub:someone/audio"


def test_dict_round_trip_and_diff(family):
    cfg = family.load_config("paper")
    data = config_to_dict(cfg)
    assert data["optim"]["betas"] == [0.9, 0.99]  # JSON-friendly
    back = family.config_from_dict(data)
    assert back == cfg
    changed = apply_overrides(cfg, ["model.channels=8", "optim.lr=0.5"])
    assert cfg.model.channels == 256  # overrides return a copy
    assert config_diff(data, config_to_dict(changed)) == ["model.channels", "optim.lr"]


def test_generic_coercion_rules():
    assert coerce("3", int | None, "k") == 3
    assert coerce("null", int | None, "k") is None
    assert coerce([1, "2"], list[int], "k") == [1, 2]
    assert coerce(2, float, "k") == 2.0
    with pytest.raises(ConfigError, match="k: expected float, got True"):
        coerce(True, float, "k")
    with pytest.raises(ConfigError, match="k: expected str, got 5"):
        coerce(5, str, "k")


@dataclass
class M:
    width: int = 4
    act: Literal["relu", "gelu"] = "relu"


@dataclass
class R(RunConfig):
    model: M = field(default_factory=M)


def test_a_family_config_is_just_a_dataclass_subclass():
    cfg = config_from_dict(R, {"model": {"width": "8"}, "optim": {"grad_accum": 2}})
    assert cfg.model.width == 8 and cfg.optim.grad_accum == 2 and cfg.train == R().train
    assert dataclasses.is_dataclass(cfg.model)
    with pytest.raises(ConfigError, match="unknown key model.widht"):
        load_config(R, None, ["model.widht=3"])


def test_family_registry():
    assert "mel_autoencoder" in list_families()
    with pytest.raises(ConfigError, match="unknown family 'mel_autoencodr' \\(did you mean mel_autoencoder\\?\\)"):
        get_family("mel_autoencodr")


def test_generated_mixed_source_is_half_sound_events_half_music():
    from course_lib.train.config import DataConfig
    from course_lib.train.data import build_dataset

    data = DataConfig(source="generated:mixed", sample_rate=16_000, clip_seconds=1.0, train_size=6, eval_size=4)
    train_set, eval_set = build_dataset(data, "train"), build_dataset(data, "valid")
    assert len(train_set) == 6 and len(eval_set) == 4 and train_set.sample_rate == 16_000
    kinds = [eval_set[i]["attributes"].get("instrument") is not None for i in range(4)]
    assert kinds == [False, False, True, True]  # sound events first, then music
    assert eval_set[0]["audio"].shape == (1, 16000)
