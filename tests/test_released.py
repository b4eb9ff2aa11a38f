"""``course_lib.released``'s "weights present" path on real ``transformers`` checkpoints saved locally: tiny random
EnCodec, MusicGen (tiny T5 + tiny EnCodec + decoder, with a tokenizer) and CLAP models written with
``save_pretrained`` into temporary folders (configs of their own, not the stand-ins' ones), found the three ways
lesson 09 finds weights (a folder passed in, an environment variable, the Hugging Face cache), loaded offline,
converted and checked against transformers: the same codes and audio, the same logits, the same greedy audio from
text to waveform, CLAP scores. Then the stand-ins the lesson uses when nothing is found. Random weights only."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from course_lib import released  # noqa: E402
from course_lib.audio import resample  # noqa: E402
from course_lib.data import music, sound_events  # noqa: E402
from course_lib.released import (  # noqa: E402
    ENV_VARS,
    RELEASED,
    STAND_IN_LABEL,
    Weights,
    agreement_rows,
    compare_encodec,
    compare_musicgen,
    find_weights,
    load_clap,
    load_encodec,
    load_musicgen,
)

pytestmark = pytest.mark.usefixtures("one_thread")

CARD, K = 32, 4
CAPTIONS = ["a dog barks twice", "a calm piano melody in C major", "rain falls on a roof", "two high beeps",
            "a fast organ piece in a minor key", "a bell rings three times"]


def _fill_codebooks(model, seed: int = 0) -> None:
    """Codebook entries drawn around the encoder's outputs for noise (EnCodec starts from zeros: all codes 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        residual = model.encoder(0.3 * torch.randn(1, 1, 4000, generator=gen))
        for layer in model.quantizer.layers:
            frames = residual.transpose(1, 2).reshape(-1, residual.shape[1])
            noise = torch.randn(model.config.codebook_size, frames.shape[1], generator=gen)
            layer.codebook.embed.copy_(frames.mean(0) + frames.std(0) * noise)
            residual = residual - layer.decode(layer.encode(residual))


def _encodec_config(**overrides):
    from transformers import EncodecConfig

    # 8 kHz, hop 80: 100 frames/s x 5 bits = 500 bps per codebook; 2 kbps -> 4 codebooks, 1 kbps -> 2
    values = dict(sampling_rate=8000, num_filters=4, hidden_size=8, upsampling_ratios=[5, 4, 4], codebook_size=CARD,
                  target_bandwidths=[1.0, 2.0], num_residual_layers=1, num_lstm_layers=1)
    values.update(overrides)
    return EncodecConfig(**values)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """``name → folder`` of three tiny checkpoints written with ``save_pretrained`` (+ tokenizer / extractor)."""
    from transformers import (
        EncodecModel,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        PreTrainedTokenizerFast,
        T5Config,
    )

    from course_lib.metrics.embeddings import save_random_tiny_audio
    from course_lib.text.course_encoder import train_tokenizer

    root = tmp_path_factory.mktemp("released")
    torch.manual_seed(0)
    encodec = EncodecModel(_encodec_config()).eval()
    _fill_codebooks(encodec)
    encodec.save_pretrained(root / "encodec")

    tok = PreTrainedTokenizerFast(tokenizer_object=train_tokenizer(CAPTIONS * 3, vocab_size=100, char_fallback=True),
                                  pad_token="[PAD]", unk_token="[UNK]")
    t5 = T5Config(vocab_size=len(tok), d_model=24, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                  relative_attention_num_buckets=8, pad_token_id=0)
    decoder = MusicgenDecoderConfig(vocab_size=CARD, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_codebooks=K, max_position_embeddings=128,
                                    pad_token_id=CARD, bos_token_id=CARD, decoder_start_token_id=CARD)
    musicgen = MusicgenForConditionalGeneration(MusicgenConfig(text_encoder=t5, audio_encoder=_encodec_config(),
                                                               decoder=decoder)).eval()
    _fill_codebooks(musicgen.audio_encoder, seed=1)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():  # a larger spread than transformers' init, so that the logits are peaked
        for name, p in musicgen.decoder.named_parameters():
            if "layer_norm" not in name:
                p.copy_((3.0 if "lm_heads" in name else 1.5) * torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))
    musicgen.save_pretrained(root / "musicgen")
    tok.save_pretrained(root / "musicgen")

    save_random_tiny_audio("clap", root / "clap")
    return {"encodec": root / "encodec", "musicgen": root / "musicgen", "clap": root / "clap"}


@pytest.fixture(scope="module")
def weights(folders):
    found = find_weights(folders)
    assert all(w.found and not w.stand_in and w.origin == "argument" for w in found.values()), found
    return found


# ---- finding the weights -------------------------------------------------------------------------------------------


def _fake_cache(cache: Path, repo: str, folder: Path) -> Path:
    """The Hugging Face cache layout (``models--org--name/refs/main`` → ``snapshots/<commit>/``) holding ``folder``."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = cache / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    shutil.copytree(folder, base / "snapshots" / commit)
    return base / "snapshots" / commit


def test_find_weights_by_argument_environment_and_cache(folders, tmp_path):
    empty = tmp_path / "empty_cache"
    empty.mkdir()
    none = find_weights(env={}, cache_dir=empty)  # nothing anywhere: missing, each saying why
    assert list(none) == list(RELEASED) and not any(w.found for w in none.values())
    assert all(w.origin == "missing" and "not in the local Hugging Face cache" in w.note for w in none.values())

    env = {ENV_VARS[name]: str(path) for name, path in folders.items()}  # the environment variables
    by_env = find_weights(env=env, cache_dir=empty)
    assert {n: w.origin for n, w in by_env.items()} == {n: f"${v}" for n, v in ENV_VARS.items()}
    assert all(w.path == folders[n].resolve() for n, w in by_env.items())

    cache = tmp_path / "hub"  # the cache, found by hub name (the default)
    snapshot = _fake_cache(cache, RELEASED["clap"], folders["clap"])
    cached = find_weights(names=["clap"], env={}, cache_dir=cache)["clap"]
    assert cached.found and cached.origin == "Hugging Face cache" and cached.path == snapshot
    other = _fake_cache(cache, "someone/my-musicgen", folders["musicgen"])  # a hub name in $COURSE_MUSICGEN
    assert find_weights(names=["musicgen"], env={"COURSE_MUSICGEN": "someone/my-musicgen"},
                        cache_dir=cache)["musicgen"].path == other

    # an argument wins over the environment; a folder without weights, or no folder, is missing with its reason
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(folders["encodec"] / "config.json", partial)
    got = find_weights({"encodec": partial, "clap": tmp_path / "nope", "musicgen": folders["musicgen"]},
                       env={"COURSE_MUSICGEN": str(tmp_path / "nope")}, cache_dir=empty)
    assert not got["encodec"].found and "no weights file" in got["encodec"].note
    assert not got["clap"].found and got["clap"].note.startswith("no such folder")
    assert got["musicgen"].found and got["musicgen"].origin == "argument"
    with pytest.raises(ValueError, match="unknown released model"):
        find_weights({"audioldm": "x"})
    with pytest.raises(FileNotFoundError, match="snapshot_download"):
        load_encodec(none["encodec"])


def test_download_command_and_table(weights):
    command = released.download_command()
    assert command.startswith('python -c "from huggingface_hub import snapshot_download')
    assert all(repo in command for repo in RELEASED.values())
    assert "musicgen-small" in released.download_command(["musicgen"]) and "clap" not in released.download_command(["musicgen"])
    table = released.weights_table(weights).splitlines()
    assert len(table) == 2 + 3 and all("| yes | argument |" in line for line in table[2:])


# ---- the present path: load, convert, check ----------------------------------------------------------------------


def test_encodec_converted_from_a_saved_checkpoint_matches_transformers(weights):
    hf, codec = load_encodec(weights["encodec"])
    assert (codec.sample_rate, codec.frame_rate, codec.config.n_q) == (8000, 100.0, 4)
    clips = [next(sound_events.generate_clips("test", 1, 1.0, 16_000, start=1)),
             next(music.generate_clips("test", 1, 1.0, 16_000))]
    x = resample(torch.from_numpy(np.stack([c.audio for c in clips]))[:, None].float(), 16_000, 8000)
    for bandwidth, n_q in ((1.0, 2), (2.0, 4)):
        out = compare_encodec(hf, codec, x, bandwidth)
        assert out["n_q"] == n_q and out["kbps"] == pytest.approx(bandwidth)
        assert out["codes"].shape == (2, n_q, 100) and out["codes_match"] == 1.0
        assert all(out["codes"][:, k].unique().numel() > 3 for k in range(n_q)), "codes should vary"
        assert out["decode_max_abs_diff"] < 1e-5 and out["roundtrip_max_abs_diff"] < 1e-5
        assert out["audio"].shape == out["hf_audio"].shape == x.shape and out["audio"].abs().max() > 0
    with pytest.raises(ValueError, match=r"\(B, C, T\)"):
        compare_encodec(hf, codec, x[:, 0], 1.0)


@pytest.fixture(scope="module")
def musicgen(weights):
    return load_musicgen(weights["musicgen"])


def test_musicgen_pipeline_parts_and_logits(musicgen):
    from course_lib.lm import AudioLM
    from course_lib.pipelines import AudioGenPipeline
    from course_lib.text.hf import T5TextEncoder

    pipe, hf = musicgen
    assert isinstance(pipe, AudioGenPipeline) and isinstance(pipe.lm, AudioLM)
    assert isinstance(pipe.text_encoder, T5TextEncoder) and pipe.text_encoder.model is hf.text_encoder  # shared T5
    assert (pipe.sample_rate, pipe.frame_rate, pipe.lm.config.n_q, pipe.lm.config.text_dim) == (8000, 100.0, K, 24)
    prompts = CAPTIONS[:2]
    codes = pipe.generate_codes(prompts, seconds=0.2, seed=0)
    assert codes.shape == (2, K, 20) and codes.unique().numel() > 4
    check = compare_musicgen(pipe, hf, prompts, codes)
    assert check["logits_scale"] > 1.0 and check["logits_max_abs_diff"] < 1e-4 * check["logits_scale"]
    assert check["decode_max_abs_diff"] < 1e-5 and check["audio_scale"] > 0


def test_musicgen_text_to_audio_equals_transformers_generate_greedy(musicgen):
    """Captions → tokenizer → T5 → converted LM with the course's sampler (greedy, CFG 3) → course codec gives the
    waveform transformers' own ``generate`` gives, end to end."""
    pipe, hf = musicgen
    prompts = [CAPTIONS[1], CAPTIONS[4]]
    frames = 30
    tokens = pipe.text_encoder.tokenize(prompts)
    with torch.no_grad():
        want = hf.generate(**tokens, do_sample=False, guidance_scale=3.0, max_new_tokens=frames + K - 1)
    got = pipe.generate(prompts, seconds=frames / pipe.frame_rate, cfg_scale=3.0, top_k=1, seed=0)
    assert got.shape == want.shape == (2, 1, frames * 80)
    assert (got - want).abs().max() < 1e-5 and want.abs().max() > 0


def test_clap_and_course_agreement_scores(weights, musicgen):
    from course_lib.metrics.agreement import HFClapAgreement, agreement_score, load_agreement_model

    clap = load_clap(weights["clap"])
    assert isinstance(clap, HFClapAgreement) and clap.sample_rate == 48_000
    pipe, _ = musicgen
    audio = pipe.generate(CAPTIONS[:3], seconds=0.3, seed=1)
    judges = {"CLAP": clap, "course": load_agreement_model("course")}
    rows = agreement_rows(judges, {"generated": (audio, pipe.sample_rate, CAPTIONS[:3]),
                                   "one clip": (audio[:1, 0], pipe.sample_rate, CAPTIONS[:1])})
    assert [r["clips"] for r in rows] == ["generated", "one clip"] and [r["n"] for r in rows] == [3, 1]
    assert set(rows[0]) == {"clips", "n", "CLAP", "CLAP other", "course", "course other"}
    assert "CLAP other" not in rows[1]  # one clip has no other caption
    assert rows[0]["CLAP"] == pytest.approx(float(agreement_score(clap, audio[:, 0], CAPTIONS[:3], 8000).mean()), abs=1e-6)
    rolled = CAPTIONS[1:3] + CAPTIONS[:1]
    assert rows[0]["course other"] == pytest.approx(
        float(agreement_score(judges["course"], audio[:, 0], rolled, 8000).mean()), abs=1e-6)
    assert all(-1 <= v <= 1 for r in rows for k, v in r.items() if k not in ("clips", "n"))
    with pytest.raises(ValueError, match="2 clips but 1 captions"):
        agreement_rows(judges, {"bad": (audio[:2], 8000, CAPTIONS[:1])})


# ---- stand-ins, for when nothing is found --------------------------------------------------------------------------


def test_stand_ins_replace_only_what_is_missing(weights, tmp_path):
    partly = {**weights, "clap": Weights("clap", RELEASED["clap"], RELEASED["clap"], None, "missing", "not cached")}
    mixed = released.with_stand_ins(partly, tmp_path / "stand_ins")
    assert mixed["encodec"] == weights["encodec"] and mixed["musicgen"] == weights["musicgen"]
    stand_in = mixed["clap"]
    assert stand_in.stand_in and stand_in.found and stand_in.origin == "stand-in"
    assert STAND_IN_LABEL in stand_in.label and "not cached" in stand_in.note
    assert sorted(p.name for p in (tmp_path / "stand_ins").iterdir()) == ["clap"]
    assert load_clap(stand_in).embed_text(["a bell rings"]).shape[0] == 1
    with pytest.raises(ValueError, match="unknown released model"):
        released.save_stand_ins(tmp_path / "x", ["audioldm"])


def test_the_architectures_parameter_counts():
    counts = released.architecture_parameters()
    assert counts["encodec"] == 14_851_810  # REFERENCE.md: the encodec package's 24 kHz model, counted
    assert counts["musicgen_decoder"] > 300_000_000 and counts["clap"] > 100_000_000
    scale = {row["model"]: row for row in released.RELEASED_SCALE}
    assert scale["EnCodec 24 kHz"]["parameters"] == counts["encodec"]
    assert all(row["source"] for row in released.RELEASED_SCALE)


# ---- lesson 09 on checkpoints it finds through its environment variables -------------------------------------------


@pytest.mark.slow
def test_lesson_09_runs_on_weights_named_by_environment_variables(folders, monkeypatch, tmp_path):
    """The lesson's "weights present" route end to end: ``$COURSE_ENCODEC``, ``$COURSE_MUSICGEN`` and ``$COURSE_CLAP``
    name the saved checkpoints; the notebook finds them, labels them as found (no stand-in) and its assertions hold
    on them (checkpoints of other sizes and rates than the stand-ins and the released models)."""
    import nbformat
    from nbclient import NotebookClient

    from course_lib.runtime import METRICS_PREFIX

    for name, path in folders.items():
        monkeypatch.setenv(ENV_VARS[name], str(path))
    monkeypatch.setenv("COURSE_RUN_SIZE", "quick")
    monkeypatch.setenv("COURSE_NUM_THREADS", "1")
    lesson = Path(__file__).resolve().parents[1] / "notebooks" / "09_released_models.ipynb"
    nb = nbformat.read(lesson, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="audio-course", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert STAND_IN_LABEL not in text and "Not on this machine" not in text
    assert f"[musicgen: {folders['musicgen'].resolve()} ($COURSE_MUSICGEN)]" in text
    metrics = next(line for line in text.splitlines() if line.startswith(METRICS_PREFIX))
    assert '"real_clap": true' in metrics and '"real_encodec": true' in metrics and '"real_musicgen": true' in metrics
