"""The ``audiogen`` training family, the AudioGen text-to-audio pipeline and the LM's card measurement.

Every model here is tiny and random, saved to temporary folders (a 4 x 256-token codec without LSTM, a
2-layer LM); only the shipped course text encoder is loaded, so nothing depends on the shipped codec."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from course_lib import pretrained
from course_lib.codecs.codec import Codec, CodecConfig
from course_lib.lm import AudioLM, AudioLMConfig
from course_lib.pipelines import AudioGenPipeline
from course_lib.pretrained.measures import measure_audiogen
from course_lib.text import load_text_encoder
from course_lib.train import ConfigError, get_family, load_from_run, train
from course_lib.train.data import TRAIN_SPLIT, build_dataset, default_collate
from course_lib.train.families.audiogen import lm_loss

FAST = ["train.progress=false", "train.tensorboard=false"]
SR = 16_000


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A tiny random codec and LM saved to folders, and the course text encoder (128-d)."""
    root = tmp_path_factory.mktemp("audiogen")
    torch.manual_seed(0)
    codec = Codec(CodecConfig(n_filters=2, dimension=8, lstm=0, n_q=4, codebook_size=256, kmeans_iters=2)).eval()
    codec.save_pretrained(root / "codec")
    lm = AudioLM(AudioLMConfig(n_q=4, codebook_size=256, dim=32, num_layers=2, num_heads=2, text_dim=128,
                               max_len=64, mlp_ratio=2.0)).eval()
    lm.save_pretrained(root / "lm")
    return {"root": root, "codec": codec, "lm": lm, "text": load_text_encoder("course")}


def tiny_config(parts, *overrides):
    return get_family("audiogen").load_config("tiny", [f"tokenizer.codec={parts['root'] / 'codec'}", *FAST,
                                                       *overrides])


def a_batch(cfg, size=4):
    data = build_dataset(cfg.data, TRAIN_SPLIT, cfg.train.seed)
    return default_collate(data)([data[i] for i in range(size)])


# ---- the family --------------------------------------------------------------------------------------------


def test_tiny_config_trains_the_loss_falls_and_the_run_loads_back(parts, tmp_path):
    cfg = tiny_config(parts, f"train.run_dir={tmp_path / 'run'}")
    summary = train("audiogen", cfg)
    train_rows = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
                  if json.loads(s)["kind"] == "train"]
    first, last = train_rows[0]["loss"], train_rows[-1]["loss"]
    assert first > math.log(256) - 1.0 and last < 0.6 * first, (first, last)  # starts near uniform, learns
    ev = summary["eval"]
    assert set(ev) == {"loss", "accuracy", "perplexity", "ce_k0", "ce_k1", "ce_k2", "ce_k3"}
    assert ev["perplexity"] == pytest.approx(math.exp(ev["loss"]), rel=1e-6) and 0 <= ev["accuracy"] <= 1
    samples = list((tmp_path / "run" / "samples").iterdir())[0]
    names = sorted(p.name for p in samples.iterdir())
    assert len(names) == 2 and names[0].endswith("_generated.wav") and names[1].endswith("_real.wav")
    model = load_from_run(tmp_path / "run")  # the checkpoint holds the LM alone, not the frozen tools
    assert isinstance(model, AudioLM) and model.config == cfg.model


def test_condition_dropout_in_training_only(parts):
    family = get_family("audiogen")
    cfg = tiny_config(parts, "conditioning.cond_drop=1.0")
    batch = a_batch(cfg)
    lm = AudioLM(cfg.model)
    codes = family.tokenize(batch["audio"], cfg)
    text = family.embed(batch["caption"], cfg, torch.device("cpu"))
    with torch.no_grad():
        with_text = lm.loss(codes, text.embeddings, text.mask)[0]
        no_text = lm.loss(codes, text.embeddings, torch.zeros_like(text.mask))[0]
        assert not torch.allclose(with_text, no_text)
        lm.train()
        loss, logs = family.loss_step(lm, batch, cfg)
        assert torch.equal(loss, no_text) and logs["cond_dropped"] == 1.0  # every caption dropped
        loss, logs = family.loss_step(lm, batch, tiny_config(parts, "conditioning.cond_drop=0"))
        assert torch.equal(loss, with_text) and logs["cond_dropped"] == 0.0
        lm.eval()
        loss, logs = family.loss_step(lm, batch, cfg)  # evaluation: cond_drop=1 does nothing
        assert torch.equal(loss, with_text) and logs["cond_dropped"] == 0.0
        assert family.evaluate(lm, [batch], cfg).metrics["loss"] == pytest.approx(float(with_text))


def test_codes_come_from_the_frozen_codec_and_the_cache_returns_the_same(parts):
    family = get_family("audiogen")
    cfg = tiny_config(parts, "tokenizer.cache_size=3")
    audio = a_batch(cfg)["audio"]
    fresh = parts["codec"].encode(audio)
    assert fresh.shape == (4, 4, 50)
    assert torch.equal(family.tokenize(audio, cfg), fresh)
    assert torch.equal(family.tokenize(audio.flip(0), cfg), fresh.flip(0))  # served from the cache
    assert max(len(c) for c in family._codes.values()) == 3  # the least recently used clip left
    assert torch.equal(family.tokenize(audio, tiny_config(parts, "tokenizer.cache_size=0")), fresh)
    assert not any(p.requires_grad for p in family.codec(cfg).parameters())


def test_the_loss_through_a_wrapper_equals_audiolm_loss(parts):
    class Compiled(nn.Module):  # what unwrap_model sees of a torch.compile'd model
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

        def forward(self, *args, **kwargs):
            return self._orig_mod(*args, **kwargs)

    lm = parts["lm"]
    codes = torch.randint(0, 256, (2, 4, 7))
    text = parts["text"].encode(["a bell rings twice", ""])
    direct, m1 = lm_loss(lm, codes, text.embeddings, text.mask)
    wrapped, m2 = lm_loss(Compiled(lm), codes, text.embeddings, text.mask)
    assert torch.allclose(direct, wrapped) and set(m1) == set(m2)
    assert all(torch.allclose(m1[k], m2[k]) for k in m1)


def test_validation_names_the_keys_and_the_values_that_would_work(parts, tmp_path):
    with pytest.raises(ConfigError, match=r"model.n_q=2 .* \(4 codebooks x 256 entries\): set model.n_q=4 "
                                          r"model.codebook_size=256"):
        tiny_config(parts, "model.n_q=2")
    with pytest.raises(ConfigError, match=r"model.codebook_size=512 .* set model.n_q=4 model.codebook_size=256"):
        tiny_config(parts, "model.codebook_size=512")
    with pytest.raises(ConfigError, match=r"model.text_dim=64 must equal .*'course' \(128\): set model.text_dim=128"):
        tiny_config(parts, "model.text_dim=64")
    with pytest.raises(ConfigError, match=r"data.clip_seconds=1.0 is 50 codec frames = 53 delay-pattern steps, "
                                          r"more than model.max_len=40"):
        tiny_config(parts, "model.max_len=40")
    with pytest.raises(ConfigError, match=r"eval.sample_seconds=2.0 is 100 codec frames"):
        tiny_config(parts, "eval.sample_seconds=2.0")
    with pytest.raises(ConfigError, match=r"data.sample_rate=22050 must equal .* \(16000 Hz\)"):
        tiny_config(parts, "data.sample_rate=22050")
    with pytest.raises(ConfigError, match=r"tokenizer.codec=.*nowhere.*neither a folder nor a shipped model"):
        tiny_config(parts, f"tokenizer.codec={tmp_path / 'nowhere'}")
    with pytest.raises(ConfigError, match=r"conditioning.cond_drop: a probability in \[0, 1\]"):
        tiny_config(parts, "conditioning.cond_drop=1.5")
    with pytest.raises(ConfigError, match=r"conditioning.text_encoder='nope'"):
        tiny_config(parts, "conditioning.text_encoder=nope")
    with pytest.raises(ConfigError, match=r"model.dim=30 must be divisible by num_heads=4"):
        tiny_config(parts, "model.dim=30", "model.num_heads=4")


def test_a_codec_training_run_folder_is_a_tokenizer(tmp_path):
    codec_cfg = get_family("codec").load_config("tiny", [f"train.run_dir={tmp_path / 'codec_run'}", "train.max_steps=1",
                                                         "eval.at_end=false", *FAST])
    train("codec", codec_cfg)  # a codec run: 2 codebooks x 64 entries
    family = get_family("audiogen")
    overrides = [f"tokenizer.codec={tmp_path / 'codec_run'}", *FAST]
    with pytest.raises(ConfigError, match="set model.n_q=2 model.codebook_size=64"):
        family.load_config("tiny", overrides)
    cfg = family.load_config("tiny", [*overrides, "model.n_q=2", "model.codebook_size=64"])
    assert family.codec(cfg).config.n_q == 2 and not family.codec(cfg).training


def test_course_and_paper_configs():
    family = get_family("audiogen")
    paper = family.load_config("paper", validate=False)  # needs T5-large and a trained paper codec to validate
    m = paper.model
    assert (m.n_q, m.codebook_size, m.pattern, m.text_dim) == (4, 2048, "delay", 1024)
    assert paper.conditioning.cond_drop == 0.1 and paper.conditioning.text_encoder == "t5:t5-large"
    assert (paper.eval.cfg_scale, paper.eval.top_k, paper.eval.temperature) == (3.0, 250, 1.0)
    assert m.max_len >= 503  # 10 s at 50 frames/s + 3 delay steps
    if "codec_course" in pretrained.available():  # the course config fits the shipped codec and encoder
        course = family.load_config("course")
        assert (course.model.n_q, course.model.codebook_size, course.model.text_dim) == (4, 256, 128)


# ---- the pipeline ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipe(parts):
    root = parts["root"]
    return AudioGenPipeline.from_pretrained(lm=root / "lm", codec=root / "codec", text_encoder="course")


def test_pipeline_shapes_and_seed_determinism(pipe):
    a = pipe(["a bell rings twice", "rain falls"], seconds=0.3, seed=1)
    assert a.shape == (2, 1, 4800) and a.dtype == torch.float32 and a.abs().max() <= 1.0
    assert torch.equal(a, pipe.generate(["a bell rings twice", "rain falls"], seconds=0.3, seed=1))
    c1 = pipe.generate_codes(["a bell rings twice"], seconds=0.3, seed=1)
    c2 = pipe.generate_codes(["a bell rings twice"], seconds=0.3, seed=2)
    assert c1.shape == (1, 4, 15) and not torch.equal(c1, c2)
    greedy = [pipe.generate_codes(["two beeps"], seconds=0.3, top_k=1, use_cache=c) for c in (True, False)]
    assert torch.equal(*greedy)
    assert pipe.max_seconds == pytest.approx(61 / 50)  # max_len 64 = 61 frames + 3 delay steps


def test_continuation_keeps_the_prompt_codes(pipe, parts):
    torch.manual_seed(0)
    prompt = 0.3 * torch.randn(1, 3300)  # 10 whole frames of 320 samples (the rest is dropped)
    codes = pipe.generate_codes(["a dog barks", "wind blows"], seconds=0.4, prompt_audio=prompt, seed=3)
    expected = parts["codec"].encode(prompt[None, :, :3200])
    assert codes.shape == (2, 4, 20)
    assert torch.equal(codes[:, :, :10], expected.expand(2, -1, -1))
    audio = pipe(["a dog barks", "wind blows"], seconds=0.4, prompt_audio=prompt.numpy(), prompt_sample_rate=SR)
    assert audio.shape == (2, 1, 6400)


def test_pipeline_errors_say_what_was_expected(pipe, parts):
    with pytest.raises(ValueError, match="non-empty list of captions"):
        pipe([], seconds=0.2)
    with pytest.raises(TypeError, match="wrap it as"):
        pipe("a bell", seconds=0.2)
    with pytest.raises(ValueError, match="22050 Hz but the codec runs at 16000 Hz; resample"):
        pipe(["a bell"], seconds=0.4, prompt_audio=torch.zeros(1, 3200), prompt_sample_rate=22050)
    with pytest.raises(ValueError, match=r"one mono clip \(T,\) or \(1, T\), or one per prompt \(1, 1, T\)"):
        pipe(["a bell"], seconds=0.4, prompt_audio=torch.zeros(2, 3200))
    with pytest.raises(ValueError, match="less than one codec frame"):
        pipe(["a bell"], seconds=0.4, prompt_audio=torch.zeros(100))
    with pytest.raises(ValueError, match="longer than the prompt"):
        pipe(["a bell"], seconds=0.2, prompt_audio=torch.zeros(3200))
    with pytest.raises(ValueError, match="at most 1.22 s"):
        pipe(["a bell"], seconds=2.0)
    with pytest.raises(FileNotFoundError, match="neither a folder nor a shipped model"):
        AudioGenPipeline.from_pretrained(lm="no_such_lm", codec=parts["root"] / "codec")
    wide = AudioLM(AudioLMConfig(n_q=4, codebook_size=256, dim=32, num_layers=1, num_heads=2, text_dim=64))
    with pytest.raises(ValueError, match="128-d ones: use the text encoder the LM was trained with"):
        AudioGenPipeline(wide, parts["codec"], parts["text"])


# ---- the card measurement ------------------------------------------------------------------------------------


def test_measure_audiogen_runs_on_tiny_models_and_is_deterministic(parts):
    kwargs = dict(n_prompts=3, seconds=1.0, codec=parts["codec"], text_encoder="course", batch_size=2)
    first = measure_audiogen(parts["lm"], **kwargs)
    # test clips 0-2: siren (pitched), bell (pitched, counted), beeps (pitched, counted)
    keys = {"class_accuracy", "count_accuracy", "pitch_band_accuracy"}
    assert set(first) == keys | {f"ceiling_{k}" for k in keys}
    assert all(0.0 <= v <= 1.0 for v in first.values())
    assert measure_audiogen(parts["lm"], **kwargs) == first
