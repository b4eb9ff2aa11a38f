"""The playground widget (issue #24), driven from Python as a student drives it in JupyterLab.

Every system makes a clip through its pipeline (the shipped AudioGen, Diffsound, Diffsound's AR baseline and
Noise2Music, and an AudioGen LM trained for one step in a temporary run folder); the readout is checked against
the probes run again on the same clip; the saved WAV and JSON are read back; bad inputs give a message in the
panel and no exception. One playground (its pipelines and the probes cached) serves the whole module.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import re

import numpy as np
import pytest
import soundfile as sf

from course_lib.data import music, sound_events
from course_lib.data.music_probes import estimate_mode, music_adherence
from course_lib.data.probes import adherence, count_events, estimate_pitch, estimate_tempo, pitch_band
from course_lib.playground import NOT_STATED, SYSTEMS, Playground, parse_prompt, readout_rows
from course_lib.pretrained.measures import event_probe, instrument_probe
from course_lib.text.captions import draw_attributes

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

PROMPTS = {"audiogen": "a dog barks twice", "diffsound": "three high-pitched beeps",
           "diffsound_ar": "a low bell rings once", "noise2music": "a calm piano melody in C major at 90 bpm",
           "run": "a dog barks twice"}


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """An ``audiogen`` training run of one step (the tiny LM over the shipped codec): a model the student trained."""
    from course_lib.train import get_family, train

    folder = tmp_path_factory.mktemp("runs") / "audiogen_tiny"
    cfg = get_family("audiogen").load_config("tiny", [
        f"train.run_dir={folder}", "train.max_steps=1", "train.ckpt_every=1", "data.train_size=4",
        "data.batch_size=4", "eval.at_end=false", "eval.every=0", "eval.num_samples=0", "train.progress=false",
        "train.tensorboard=false"])
    train("audiogen", cfg)
    return folder


@pytest.fixture(scope="module")
def pg(tmp_path_factory):
    return Playground(save_folder=tmp_path_factory.mktemp("generated"), history=3)


@pytest.fixture
def no_callback_errors(caplog):
    """ipywidgets logs (instead of raising) an exception that escapes a button's callback: there must be none."""
    caplog.set_level(logging.WARNING)
    yield
    escaped = [r for r in caplog.records if "Exception in callback" in r.getMessage() or r.exc_info]
    assert not escaped, [r.getMessage() for r in escaped]


def drive(pg, system, prompt, seconds=1.0, run_folder="", **values):
    pg.system.value = system
    pg.run_folder.value = str(run_folder)
    pg.prompt.value = prompt
    pg.seconds.value = seconds
    pg.cfg_scale.value, pg.seed.value = 3.0, 0  # the panel keeps what the last test typed
    for name, value in values.items():
        getattr(pg, name).value = value
    pg.generate_button.click()
    return pg.status.value


def player_audio(player_html: str) -> np.ndarray:
    data = re.search(r'src="data:audio/wav;base64,([^"]+)"', player_html).group(1)
    audio, _ = sf.read(io.BytesIO(base64.b64decode(data)), dtype="float32")
    return audio


# ---- what the prompt asks ---------------------------------------------------------------------------------------


def test_parse_prompt_reads_back_the_course_captions():
    for i in range(48):  # every sound-event class 4 times, three phrasings each
        clip_attrs = draw_attributes("sound_events", "test", i, 2.0)
        for rng in range(3):
            asked = parse_prompt(sound_events.caption(clip_attrs, rng), "events")
            assert asked["class"] == clip_attrs["class"]
            for key in ("count", "pitch_band"):  # what a caption states is read right; birds may leave pitch out
                assert asked[key] in (None, clip_attrs[key]), (key, asked)
            if clip_attrs["count"] is not None:
                assert asked["count"] == clip_attrs["count"]
    for i in range(24):
        clip_attrs = draw_attributes("music", "test", i)
        for rng in range(3):
            asked = parse_prompt(music.caption(clip_attrs, rng), "music")
            assert asked["instrument"] == clip_attrs["instrument"]
            assert asked["tempo_bpm"] in (None, clip_attrs["tempo_bpm"]) and asked["mode"] in (None, clip_attrs["mode"])
            assert asked["key"] in (None, clip_attrs["key"])


def test_parse_prompt_free_text_and_what_it_leaves_unsaid():
    assert parse_prompt("a car horn beeps twice", "events") == {"class": "horn", "count": 2, "pitch_band": None}
    assert parse_prompt("3 shrill beeps while rain falls", "events") == {"class": "beeps", "count": 3,
                                                                         "pitch_band": "high"}
    assert parse_prompt("", "events") == {"class": None, "count": None, "pitch_band": None}
    assert parse_prompt("funky bass guitar in E flat minor, 120 bpm", "music") == {
        "instrument": "bass", "tempo_bpm": 120, "key": "Eb", "mode": "minor"}
    assert parse_prompt("a minor-key melody on the keys", "music") == {
        "instrument": "piano", "tempo_bpm": None, "key": None, "mode": "minor"}  # "a minor" after no "in": the article
    with pytest.raises(ValueError, match="domain"):
        parse_prompt("x", "speech")


# ---- every system ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("system", [*SYSTEMS, "run"])
def test_every_system_makes_a_clip_the_readout_is_the_probes_and_it_saves(pg, system, run_folder, tmp_path,
                                                                         no_callback_errors):
    status = drive(pg, system, PROMPTS[system], run_folder=run_folder if system == "run" else "")
    result = pg.result
    assert "✓" in status and result is not None and result.prompt == PROMPTS[system], status
    assert result.system == system and result.audio.dtype == np.float32
    assert result.audio.shape == (round(1.0 * result.sample_rate),) and np.abs(result.audio).max() <= 1.0
    assert pg.progress.value == pg.progress.max and pg.progress.bar_style == "success"
    assert "<audio" in pg.player.children[0].children[0].value and "Generated 1 s" in pg.timing.value
    assert pg.spectrogram.outputs[0]["data"]["image/png"]
    assert pg.steps.disabled == (system in ("audiogen", "diffsound_ar", "run"))  # the run is an AudioGen LM
    # the readout is what the probes hear in this very clip, next to what the prompt asked
    x, rate = result.audio, result.sample_rate
    asked = parse_prompt(PROMPTS[system], result.domain)
    assert result.asked == asked
    stated = {k: v for k, v in asked.items() if v is not None}
    if result.domain == "events":
        probe = event_probe(2.0, 16_000)
        assert result.checks == adherence(x, rate, stated, probe)
        assert result.heard["class"] == probe.predict(x, rate) and result.heard["count"] == count_events(x, rate)
        hz = estimate_pitch(x, rate)
        assert result.heard["pitch_band"] == (None if hz is None else pitch_band(hz))
    else:
        probe = instrument_probe(4.0, 16_000)
        checks = music_adherence(x, rate, stated, probe)
        assert result.checks == {k: checks[k] for k in ("tempo", "mode", "instrument")}
        assert result.heard["instrument"] == probe.predict(x, rate)
        assert result.heard["mode"] == estimate_mode(x, rate, "C")
        bpm = estimate_tempo(x, rate)
        assert (math.isnan(result.heard["tempo_bpm"]) and math.isnan(bpm)) or result.heard["tempo_bpm"] == round(bpm, 1)
    rows = readout_rows(result)
    assert [mark for *_, mark in rows] == [
        NOT_STATED if k not in result.checks else "✓" if result.checks[k] else "✗"
        for k in (("class", "count", "pitch_band") if result.domain == "events" else ("tempo", "mode", "instrument"))]
    for _, asked_text, _, mark in rows:
        assert asked_text in pg.readout.value and mark in pg.readout.value
    # saved beside each other, read back
    pg.save_folder.value = str(tmp_path / "mine")
    pg.save_button.click()
    assert "saved" in pg.save_status.value, pg.save_status.value
    wav, meta = pg.saved[-1]
    audio, sr = sf.read(wav, dtype="float32")
    assert sr == rate and audio.shape == x.shape and np.abs(audio - x).max() < 2 / 32768
    settings = json.loads(meta.read_text())
    assert settings["prompt"] == PROMPTS[system] and settings["system"] == system and settings["seed"] == 0
    assert settings["seconds"] == 1.0 and settings["audio_file"] == wav.name and settings["checks"] == result.checks
    assert settings["run_folder"] == (str(run_folder) if system == "run" else None)


def test_players_are_loudness_matched_never_clipped_and_the_history_keeps_the_last_few(pg, no_callback_errors):
    for seed in (1, 2, 3, 4):
        drive(pg, "audiogen", f"a bell rings {seed} times", seed=seed)
    assert len(pg.history) == len(pg.history_box.children) == 3  # history=3: the oldest went
    assert [r.seed for r in pg.history] == [4, 3, 2]
    levels = []
    for panel in pg.history_box.children:
        audio = player_audio(panel.children[0].value)
        assert np.abs(audio).max() <= 0.99 + 1e-3  # never clipped
        levels.append(20 * math.log10(np.sqrt(np.mean(audio.astype(np.float64) ** 2))))
    assert max(levels) - min(levels) < 0.2  # one level for all (-20 dBFS, or lowered together)
    assert all(r.prompt in panel.children[0].value for r, panel in zip(pg.history, pg.history_box.children))


def test_saved_names_never_collide(pg, tmp_path, no_callback_errors):
    drive(pg, "audiogen", "a dog barks")
    paths = {pg.save(tmp_path)[0] for _ in range(3)}
    assert len(paths) == 3 and all(p.exists() and p.with_suffix(".json").exists() for p in paths)
    (tmp_path / "a_file").write_text("x")
    pg.save_folder.value = str(tmp_path / "a_file")
    pg.save_button.click()
    assert "is a file" in pg.save_status.value


# ---- bad inputs: a message, no traceback ------------------------------------------------------------------------


@pytest.mark.parametrize("system, values, message", [
    ("audiogen", {"seconds": 0.0}, "more than 0"),
    ("audiogen", {"seconds": 60.0}, "at most 5.06 s"),
    ("diffsound", {"seconds": 60.0}, "at most 8.19 s"),
    ("noise2music", {"seconds": 60.0}, "at most 20 s"),
    ("noise2music", {"seconds": 0.5}, "at least 1 s"),
    ("diffsound", {"steps": 0}, "steps must be between 1 and 100"),
    ("noise2music", {"steps": 0}, "steps must be between 1 and 1000"),
    ("audiogen", {"cfg_scale": -1.0}, "guidance scale"),
    ("audiogen", {"seed": -3}, "seed"),
])
def test_bad_settings_give_a_message_and_no_clip(pg, system, values, message, no_callback_errors):
    before = pg.result
    status = drive(pg, system, "a dog barks twice", **{"seconds": 1.0, **values})
    assert message in status and "✗" in status, status
    assert pg.result is before and pg.progress.bar_style == "danger" and not pg.generate_button.disabled


def test_run_folders_that_hold_no_generator_give_a_message(pg, tmp_path, no_callback_errors):
    assert "there is no folder" in drive(pg, "run", "a dog", run_folder=tmp_path / "nowhere")
    assert "type the folder" in drive(pg, "run", "a dog", run_folder="  ")
    (tmp_path / "empty_run").mkdir()
    assert "not a training run" in drive(pg, "run", "a dog", run_folder=tmp_path / "empty_run")


def test_prompt_problems_are_shown_in_plain_words(pg, no_callback_errors):
    status = drive(pg, "audiogen", "")
    assert "unconditional" in status and pg.result.prompt == ""
    assert "Empty prompt" in pg.prompt_warnings.value and all(m == NOT_STATED for *_, m in readout_rows(pg.result))
    drive(pg, "audiogen", "zorblat quixxel vrumph")
    assert "Unknown words" in pg.prompt_warnings.value and "zorblat" in pg.prompt_warnings.value
    drive(pg, "audiogen", " ".join(["a dog barks twice"] * 30))
    assert "Prompt cut short" in pg.prompt_warnings.value
    drive(pg, "audiogen", "a dog barks twice")
    assert pg.prompt_warnings.value == ""
    assert "✓" in drive(pg, "diffsound", "a $5 bell rings twice", steps=2)  # a $ in the spectrogram's title
    result = pg.generate("a bell rings twice", "diffsound", seconds=1.0, steps=2, seed=1)  # the pure call
    assert result.steps == 2 and result.asked["class"] == "bell" and pg.result is result
    fresh = Playground()
    fresh.save_button.click()  # disabled in the panel; clicked anyway from Python
    with pytest.raises(ValueError, match="Generate first"):
        fresh.save()
