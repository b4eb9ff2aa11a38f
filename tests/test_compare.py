"""The comparison harness end to end at tiny size: the shipped sound-event systems on 2 prompts of 1 s, and a tiny
untrained Noise2Music cascade injected through ``pipelines`` (never the shipped n2m weights). Pins the columns,
that every metric is what it claims (recomputed from the returned audio), that the real rows hold the probes'
ceiling on the same clips, the files, the errors and determinism."""

from __future__ import annotations

import csv
import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from course_lib import compare
from course_lib.compare import COLUMNS, ComparisonResult, compare_models
from course_lib.data import music, sound_events
from course_lib.pipelines import AudioGenPipeline, DiffsoundPipeline, Noise2MusicPipeline, Noise2MusicStage
from course_lib.pipelines.audiogen import load_text
from course_lib.pretrained import measures
from course_lib.train import get_family

N, SECONDS = 2, 1.0
EVENT_SYSTEMS = ("audiogen", "diffsound", "diffsound_ar")
TIMING = set(compare.TIMING_COLUMNS)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def tiny_stage(family: str, seed: int, **replace) -> Noise2MusicStage:
    """The tiny config's stage (4 DDIM steps) with random weights, its zero-initialised output conv made non-zero."""
    torch.manual_seed(seed)
    config = dataclasses.replace(get_family(family).load_config("tiny").model, **replace)
    stage = Noise2MusicStage(config)
    torch.nn.init.normal_(stage.unet.out_conv.weight, std=0.05)
    return stage.eval()


@pytest.fixture(scope="module")
def n2m():
    return Noise2MusicPipeline(tiny_stage("n2m_generator", 0), tiny_stage("n2m_cascader", 1), load_text("course"))


def run(pipelines, **kwargs) -> ComparisonResult:
    args = {"n_prompts": N, "event_seconds": SECONDS, "music_seconds": SECONDS, "progress": False, **kwargs}
    return compare_models(pipelines=pipelines, **args)


@pytest.fixture(scope="module")
def result(n2m):
    return run({"noise2music": n2m, "noise2music_low": n2m})


def real_clips(source, start=0):
    clips = list(source.generate_clips("test", N, SECONDS, 16_000, start=start))
    return clips, torch.from_numpy(np.stack([c.audio for c in clips]))


# ---- the table ---------------------------------------------------------------------------------------------------


def test_rows_columns_and_order(result, n2m):
    assert [r["system"] for r in result.rows] == [*EVENT_SYSTEMS, "real_events", "noise2music", "noise2music_low",
                                                  "real_music"]
    for r in result.rows:
        assert tuple(r) == COLUMNS
        assert r["n_prompts"] == N and r["audio_seconds"] == SECONDS
        for key in ("fad", "kl", "agreement"):
            assert isinstance(r[key], float) and math.isfinite(r[key]), (r["system"], key)
        event_rates, music_rates = compare._EVENT_RATES, compare._MUSIC_RATES
        own, other = (event_rates, music_rates) if r["domain"] == "events" else (music_rates, event_rates)
        assert all(r[k] is None for k in other)
        assert r[own[0] if r["domain"] == "events" else "instrument_accuracy"] is not None
        assert all(0.0 <= r[k] <= 1.0 for k in own if r[k] is not None)
        generated = not r["system"].startswith("real_")
        if generated:
            assert math.isfinite(r["seconds_per_audio_second"]) and r["seconds_per_audio_second"] > 0
            assert 0 < r["params_model"] < r["params_total"] and isinstance(r["steps"], str)
        else:
            assert r["seconds_per_audio_second"] is r["params_model"] is r["params_total"] is r["steps"] is None
    row = result.row("noise2music")
    text_params = sum(p.numel() for p in n2m.text_encoder.parameters())
    model_params = n2m.generator.num_parameters() + n2m.cascader.num_parameters()
    assert (row["params_model"], row["params_total"], row["steps"]) == (model_params, model_params + text_params, "4+4")
    low = result.row("noise2music_low")  # the generator alone: its own parameters, steps and low-rate audio
    gen_params = n2m.generator.num_parameters()
    assert (low["params_model"], low["params_total"], low["steps"]) == (gen_params, gen_params + text_params, "4")
    assert result.sample_rates["noise2music_low"] == n2m.low_rate
    captions = [c.caption for c in music.generate_clips("test", N, SECONDS, 16_000)]
    expected = n2m.generate_low(captions, seconds=SECONDS, seed=0)
    assert torch.equal(result.audio["noise2music_low"], expected.reshape(N, -1))
    assert result.row("diffsound")["steps"] == "25"
    ag = AudioGenPipeline.from_pretrained()
    assert result.row("audiogen")["steps"] == f"{ag.lm.pattern.seq_len(ag.num_frames(SECONDS)) / SECONDS:g}/s"
    assert result.row("audiogen")["params_model"] == sum(p.numel() for p in ag.lm.parameters())
    with pytest.raises(KeyError, match="real_events"):
        result.row("nope")


def test_prompts_and_audio(result):
    events, _ = real_clips(sound_events)
    songs, _ = real_clips(music)
    assert result.prompts == {"events": [c.caption for c in events], "music": [c.caption for c in songs]}
    assert list(result.audio) == [r["system"] for r in result.rows]
    for name, audio in result.audio.items():
        rate = 3200 if name == "noise2music_low" else 16_000  # the generator alone keeps its low rate
        assert result.sample_rates[name] == rate
        assert audio.shape == (N, rate) and audio.dtype == torch.float32 and audio.abs().max() <= 1.0


def test_metrics_are_recomputed_from_the_returned_audio(result):
    """FAD against test clips n..2n-1, paired KL against the prompts' own clips, agreement with the captions."""
    from course_lib.metrics.agreement import agreement_score, load_agreement_model
    from course_lib.metrics.embeddings import load_audio_embedder
    from course_lib.metrics.fad import fad
    from course_lib.metrics.kl import paired_kl

    emb, agree = load_audio_embedder("course"), load_agreement_model("course")
    for source, domain, names in ((sound_events, "events", (*EVENT_SYSTEMS, "real_events")),
                                  (music, "music", ("noise2music", "noise2music_low", "real_music"))):
        clips, real = real_clips(source)
        _, reference = real_clips(source, start=12)  # disjoint, and the same classes / instruments as the prompts
        ref_emb = emb.embed(reference, 16_000)
        for name in names:
            audio, row, rate = result.audio[name], result.row(name), result.sample_rates[name]
            assert row["fad"] == pytest.approx(fad(emb.embed(audio, rate), ref_emb), abs=1e-3)
            kl = paired_kl(emb.predict_proba(real, 16_000), emb.predict_proba(audio, rate))
            assert row["kl"] == pytest.approx(kl, abs=1e-4)
            score = agreement_score(agree, audio, [c.caption for c in clips], rate).mean()
            assert row["agreement"] == pytest.approx(float(score), abs=1e-4)
        real_row = result.row(f"real_{domain}")
        assert torch.equal(result.audio[real_row["system"]], real)
        assert real_row["kl"] == 0.0 and real_row["fad"] > 0  # the floor at this n is not 0


def test_real_rows_hold_the_probe_ceiling_of_the_same_clips(result):
    clips, real = real_clips(sound_events)
    ceiling = measures.adherence_rates(real[:, None], 16_000, clips, measures.event_probe(SECONDS, 16_000))
    assert ceiling and all(result.row("real_events")[k] == v for k, v in ceiling.items())
    clips, real = real_clips(music)
    ceiling = measures.music_rates(real[:, None], 16_000, clips, measures.instrument_probe(SECONDS, 16_000))
    row = result.row("real_music")
    assert all(row[k] == ceiling[k] for k in compare._MUSIC_RATES)


# ---- outputs -----------------------------------------------------------------------------------------------------


def test_files_markdown_and_plot(result, tmp_path):
    out = result.save(tmp_path / "cmp")
    assert {p.name for p in out.iterdir()} == {"comparison.md", "comparison.csv", "comparison.png", "settings.json"}
    md = (out / "comparison.md").read_text()
    assert md == result.markdown() and "not** with the papers'" in md
    table = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| system")]
    assert [line.split(" | ")[0][2:] for line in table] == [r["system"] for r in result.rows]
    with (out / "comparison.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == COLUMNS and [r["system"] for r in rows] == [r["system"] for r in result.rows]
    assert float(rows[0]["fad"]) == result.rows[0]["fad"] and rows[3]["steps"] == ""
    assert "test clips 12…13" in md  # the FAD reference draw: disjoint, same class mix
    narrow = result.markdown(columns=["system", "fad"]).splitlines()
    assert narrow[0] == "| system | fad |" and narrow[2] == f"| {result.rows[0]['system']} | {result.rows[0]['fad']:.4g} |"
    low, high = result.intervals["audiogen"]["kl"]
    kl_cell = result.markdown(columns=["system", "kl"]).splitlines()[2]
    assert kl_cell == f"| audiogen | {result.rows[0]['kl']:.4g} [{round(low, 3):.4g}, {round(high, 3):.4g}] |"
    for bad in (["system", "loudness"], []):
        with pytest.raises(ValueError, match="the columns are"):
            result.markdown(columns=bad)
    assert [compare.reference_start(n) for n in (2, 12, 13, 16)] == [12, 12, 24, 24]
    settings = json.loads((out / "settings.json").read_text())
    assert settings["seed"] == 0 and settings["n_prompts"] == N and settings["injected_pipelines"] == ["noise2music", "noise2music_low"]
    assert settings["generation"]["audiogen"] == {"cfg_scale": 3.0, "top_k": 250, "temperature": 1.0}
    assert settings["intervals"]["audiogen"]["kl"] == list(result.intervals["audiogen"]["kl"])
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    fig = result.plot()
    assert len(fig.axes) == 2 and fig.axes[0].get_xscale() == "log"


# ---- determinism, rates, errors, CLI ------------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_numbers(result, n2m):
    again = run({"noise2music": n2m, "noise2music_low": n2m})
    for a, b in zip(result.rows, again.rows):
        assert {k: v for k, v in a.items() if k not in TIMING} == {k: v for k, v in b.items() if k not in TIMING}
    assert all(torch.equal(result.audio[k], again.audio[k]) for k in result.audio)
    other = run({"noise2music": n2m}, systems=["noise2music"], seed=1)
    assert [r["system"] for r in other.rows] == ["noise2music", "real_music"]
    assert not torch.equal(other.audio["noise2music"], result.audio["noise2music"])
    assert other.rows[1] == result.row("real_music")  # the reference rows do not depend on the seed


def test_a_pipeline_at_another_rate_is_resampled_for_the_metrics():
    low = tiny_stage("n2m_generator", 0, high_rate=8000)
    high = tiny_stage("n2m_cascader", 1, high_rate=8000)
    pipe = Noise2MusicPipeline(low, high, load_text("course"))
    out = run({"noise2music": pipe}, systems=["noise2music"], settings={"noise2music": {"casc_steps": 2}})
    assert out.sample_rates["noise2music"] == 8000 and out.audio["noise2music"].shape == (N, 8000)
    assert out.row("noise2music")["steps"] == "4+2" and math.isfinite(out.row("noise2music")["fad"])
    assert out.settings["generation"]["noise2music"] == {"casc_steps": 2}


def test_errors_say_what_was_expected(n2m):
    with pytest.raises(ValueError, match=r"unknown system\(s\) \['audioldm'\]; valid systems: \['audiogen'"):
        compare_models(["audiogen", "audioldm"])
    with pytest.raises(ValueError, match="n_prompts must be an int >= 2.*FAD"):
        compare_models(["audiogen"], n_prompts=1)
    with pytest.raises(ValueError, match="size must be one of"):
        compare_models(["audiogen"], size="huge")
    with pytest.raises(ValueError, match=r"event_seconds must be a number of seconds in \[1, 60\]"):
        compare_models(["audiogen"], event_seconds=0.5)
    with pytest.raises(TypeError, match=r"pipelines\['audiogen'\] must be an instance of AudioGenPipeline, got a Noise2MusicPipeline"):
        compare_models(["audiogen"], pipelines={"audiogen": n2m})
    with pytest.raises(TypeError, match="pass it as 'diffsound_ar'"):
        compare_models(["diffsound"], pipelines={"diffsound": DiffsoundPipeline.from_pretrained("diffsound_ar_course")})
    with pytest.raises(TypeError, match="needs both stages"):
        compare_models(["noise2music"], pipelines={"noise2music": Noise2MusicPipeline(n2m.generator, None, n2m.text_encoder)})
    with pytest.raises(ValueError, match=r"settings for 'noise2music' has \['seconds', 'stepz'\].*takes \['steps'"):
        compare_models(["noise2music"], pipelines={"noise2music": n2m}, settings={"noise2music": {"stepz": 3,
                                                                                                 "seconds": 2}})
    with pytest.raises(ValueError, match="settings has unknown system"):
        compare_models(["audiogen"], settings={"audiogen2": {}})


def test_command_line(tmp_path, capsys):
    out = compare.main(["--out", str(tmp_path / "cli"), "--systems", "audiogen", "--n-prompts", "2",
                        "--event-seconds", "1", "--no-progress", "--seed", "3", "--prompt-start", "24"])
    printed = capsys.readouterr().out
    assert "| audiogen | events | 2 |" in printed and "total run time:" in printed
    assert [r["system"] for r in out.rows] == ["audiogen", "real_events"]
    saved = json.loads((tmp_path / "cli" / "settings.json").read_text())
    assert saved["seed"] == 3 and saved["prompt_start"] == 24 and saved["fad_reference"] == "36…37"
    with pytest.raises(SystemExit) as exit_info:
        compare.main(["--out", str(tmp_path / "bad"), "--systems", "audiogen,nope"])
    assert exit_info.value.code == 2 and "valid systems" in capsys.readouterr().err


# ---- released systems: MusicGen-small and the real CLAP column (course_lib.released) --------------------------------


def test_released_systems_absent_are_skipped_with_a_note(n2m, tmp_path):
    """No weights for MusicGen or CLAP (folders that do not exist): the rest is measured, the table says what was
    skipped and how to get it, and the columns stay :data:`COLUMNS`."""
    nowhere = tmp_path / "no_weights_here"
    out = run({"noise2music": n2m}, systems=["noise2music", "musicgen"], clap=True,
              released={"musicgen": nowhere, "clap": nowhere})
    assert [r["system"] for r in out.rows] == ["noise2music", "real_music"]
    assert out.columns == COLUMNS and all(tuple(r) == COLUMNS for r in out.rows)
    assert set(out.skipped) == {"musicgen", "clap"}
    assert all("no such folder" in why and "snapshot_download" in why for why in out.skipped.values())
    md = out.markdown()
    assert "Skipped `musicgen`: no such folder" in md and "Skipped `clap`" in md and "facebook/musicgen-small" in md
    assert out.settings["systems"] == ["noise2music"]
    saved = json.loads((out.save(tmp_path / "cmp") / "settings.json").read_text())
    assert set(saved["skipped"]) == {"musicgen", "clap"}
    with pytest.raises(ValueError, match="released has unknown name"):
        run({"noise2music": n2m}, systems=["noise2music"], released={"encodec": nowhere})


def test_command_line_skips_released_models_it_cannot_find(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COURSE_MUSICGEN", str(tmp_path / "none"))
    monkeypatch.setenv("COURSE_CLAP", str(tmp_path / "none"))
    out = compare.main(["--out", str(tmp_path / "cli"), "--systems", "musicgen", "--n-prompts", "2",
                        "--music-seconds", "1", "--no-progress"])
    printed = capsys.readouterr().out
    assert out.rows == [] and "Skipped `musicgen`" in printed and "Skipped `clap`" in printed
    assert "musicgen" in compare._ALL_SYSTEMS and "musicgen" not in compare.SYSTEMS  # lesson 08 loops over SYSTEMS


def test_released_musicgen_row_and_clap_column_with_saved_models(n2m, tmp_path):
    """MusicGen and CLAP present: tiny random ``transformers`` checkpoints saved with ``save_pretrained``
    (course_lib.released.save_stand_ins) stand where facebook/musicgen-small and laion/clap-htsat-unfused would."""
    from course_lib.metrics.agreement import agreement_score
    from course_lib.released import load_clap, load_musicgen, save_stand_ins

    folders = save_stand_ins(tmp_path / "weights", ["musicgen", "clap"])
    out = run({"noise2music": n2m}, systems=["noise2music", "musicgen"], clap=True, released=folders)
    assert [r["system"] for r in out.rows] == ["noise2music", "musicgen", "real_music"] and not out.skipped
    assert out.columns == (*COLUMNS, compare.CLAP_COLUMN)
    assert all(tuple(r) == out.columns and -1.0 <= r["clap"] <= 1.0 for r in out.rows)
    pipe, _ = load_musicgen(folders["musicgen"])
    row = out.row("musicgen")
    assert out.sample_rates["musicgen"] == 32_000 and out.audio["musicgen"].shape == (N, 32_000)
    assert row["params_model"] == sum(p.numel() for p in pipe.lm.parameters()) < row["params_total"]
    assert row["steps"] == f"{pipe.lm.pattern.seq_len(pipe.num_frames(SECONDS)) / SECONDS:g}/s" == "53/s"
    assert math.isfinite(row["fad"]) and row["instrument_accuracy"] is not None
    assert out.settings["generation"]["musicgen"] == {"cfg_scale": 3.0, "top_k": 250, "temperature": 1.0}
    assert str(folders["musicgen"]) in out.settings["released"]["musicgen"]
    expected = pipe.generate(out.prompts["music"], seconds=SECONDS, seed=0, cfg_scale=3.0, top_k=250)
    assert torch.equal(out.audio["musicgen"], expected.reshape(N, -1))  # the course sampler, as the harness ran it
    clap = load_clap(folders["clap"])
    real = out.audio["real_music"]
    assert out.row("real_music")["clap"] == pytest.approx(
        float(agreement_score(clap, real, out.prompts["music"], 16_000).mean()), abs=1e-4)
    md = out.markdown()
    assert md.splitlines()[0].endswith("| steps | clap |") and "`clap` ↑" in md and "`musicgen` row" in md
    with (out.save(tmp_path / "cmp") / "comparison.csv").open() as f:
        assert tuple(next(csv.reader(f))) == out.columns


# ---- intervals, claims, a second prompt set ---------------------------------------------------------------------


def test_intervals_are_the_bootstrap_over_the_prompts_of_each_per_prompt_column(result):
    """Each interval holds its value; a rate's is Wilson's for its hits among the prompts that state it (never a
    point, even at 2 prompts); KL's and agreement's are the bootstrap over the prompts; FAD has none."""
    from course_lib.metrics.intervals import wilson_interval

    rate = result.row("real_events")["class_accuracy"]
    assert result.intervals["real_events"]["class_accuracy"] == tuple(
        round(v, 4) for v in wilson_interval(round(rate * N), N))
    for row in result.rows:
        cols = result.intervals[row["system"]]
        assert "fad" not in cols and set(cols) <= set(compare.INTERVAL_COLUMNS)
        for column, (low, high) in cols.items():
            assert low <= row[column] + 1e-9 and row[column] <= high + 1e-9, (row["system"], column)
            if column.endswith("_accuracy"):
                assert 0.0 <= low <= high <= 1.0
    assert result.intervals["real_events"]["kl"] == (0.0, 0.0)  # every real clip against itself


def test_claims_need_separated_intervals_and_contradictions_compare_two_tables(result):
    """``better``/``claims`` state only what separated intervals support; ``contradictions`` lists a claim that
    another table (another prompt set) reverses by value."""
    assert result.claims() == []  # 2 prompts: too few for any claim (MIN_PROMPTS_FOR_CLAIMS)
    fake = dataclasses.replace(result, rows=[dict(r) for r in result.rows],
                               intervals={k: dict(v) for k, v in result.intervals.items()},
                               settings={**result.settings, "n_prompts": compare.MIN_PROMPTS_FOR_CLAIMS})
    fake.row("audiogen")["class_accuracy"], fake.row("diffsound")["class_accuracy"] = 0.9, 0.1
    fake.intervals["audiogen"]["class_accuracy"] = (0.8, 1.0)
    fake.intervals["diffsound"]["class_accuracy"] = (0.0, 0.3)
    fake.intervals["diffsound_ar"]["class_accuracy"] = (0.0, 0.95)  # overlaps both: no claim either way
    assert fake.better("audiogen", "diffsound", "class_accuracy") and not fake.better("diffsound", "audiogen", "class_accuracy")
    assert not fake.separated("audiogen", "diffsound_ar", "class_accuracy")
    assert ("audiogen", "diffsound", "class_accuracy") in fake.claims(["class_accuracy"])
    assert all(a != "diffsound_ar" and b != "diffsound_ar" for a, b, _ in fake.claims(["class_accuracy"]))
    assert fake.ranking("class_accuracy", "events")[0] == "audiogen"
    fake.intervals["audiogen"]["kl"], fake.intervals["diffsound"]["kl"] = (0.0, 0.1), (5.0, 6.0)
    fake.row("audiogen")["kl"], fake.row("diffsound")["kl"] = 0.05, 5.5
    assert fake.better("audiogen", "diffsound", "kl")  # lower is better for KL
    other = dataclasses.replace(fake, rows=[dict(r) for r in fake.rows])
    assert fake.contradictions(other) == []
    other.row("diffsound")["class_accuracy"] = 0.95  # the other prompt set ranks them the other way
    problems = fake.contradictions(other)
    assert len(problems) == 1 and problems[0].startswith("class_accuracy: audiogen beats diffsound")


def test_a_second_prompt_set_is_disjoint_from_the_first_and_both_references(n2m):
    """``prompt_start``: the prompts and the FAD reference draw move together; :func:`disjoint_prompt_start` puts
    the second set after the first set's reference draw, so no clip is shared."""
    start = compare.disjoint_prompt_start(N)
    first = set(range(N)) | set(range(compare.reference_start(N), compare.reference_start(N) + N))
    second = set(range(start, start + N)) | set(range(compare.reference_start(N, start),
                                                        compare.reference_start(N, start) + N))
    assert not first & second and compare.reference_start(N, start) % 12 == 0
    out = run({"noise2music": n2m}, systems=["noise2music"], prompt_start=start, bootstrap_resamples=50)
    clips, real = real_clips(music, start=start)
    assert out.prompts["music"] == [c.caption for c in clips] and torch.equal(out.audio["real_music"], real)
    assert out.settings["prompts_from"] == f"test split, clips {start}…{start + N - 1}"
    with pytest.raises(ValueError, match="prompt_start must be an int >= 0"):
        run({"noise2music": n2m}, systems=["noise2music"], prompt_start=-1)
