"""The ``diffsound`` and ``diffsound_ar`` training families: engine runs, token cache, condition dropout, the AR
baseline's time-major reading order, validation and the shipped configs.

Every model here is tiny and random; the mel VQ-VAE is a tiny random one saved to a temporary folder (the
shipped one's 10-row x 256-code grid), and only the shipped course text encoder is loaded."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from course_lib import pretrained
from course_lib.codecs.mel_vqvae import MelVQVAE, MelVQVAEConfig
from course_lib.diffusion import DiffsoundModel
from course_lib.lm import AudioLM
from course_lib.train import CheckpointError, ConfigError, get_family, load_from_run, train
from course_lib.train.checkpoint import latest_checkpoint
from course_lib.train.data import TRAIN_SPLIT, build_dataset, default_collate
from course_lib.train.families.diffsound import diffsound_loss, grid_to_sequence, sequence_to_grid

FAST = ["train.progress=false", "train.tensorboard=false"]


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def tiny_vqvae() -> MelVQVAE:
    torch.manual_seed(0)
    return MelVQVAE(MelVQVAEConfig(channels=4, ch_mult=(1, 2, 2, 4), embed_dim=8, codebook_size=256,
                                   kmeans_init=False)).eval()


@pytest.fixture(scope="module")
def vqvae_dir(tmp_path_factory):
    """A tiny random mel VQ-VAE (16 kHz, 80 mels, 8x down: 10-row grids of 256 codes) saved to a folder."""
    folder = tmp_path_factory.mktemp("diffsound_family") / "vqvae"
    tiny_vqvae().save_pretrained(folder)
    return folder


def tiny_config(vqvae_dir, *overrides, family="diffsound"):
    return get_family(family).load_config("tiny", [f"tokenizer.vqvae={vqvae_dir}", *FAST, *overrides])


def a_batch(cfg, size=4):
    data = build_dataset(cfg.data, TRAIN_SPLIT, cfg.train.seed)
    return default_collate(data)([data[i] for i in range(size)])


# ---- the AR baseline's reading order ------------------------------------------------------------------------


def test_grid_to_sequence_is_time_major_and_sequence_to_grid_inverts_it():
    grid = torch.tensor([[[0, 1, 2], [3, 4, 5]]])  # 2 rows x 3 columns
    assert grid_to_sequence(grid).tolist() == [[[0, 3, 1, 4, 2, 5]]]  # column 0 top to bottom, then column 1...
    assert torch.equal(sequence_to_grid(grid_to_sequence(grid), rows=2), grid)
    g = torch.randint(0, 256, (3, 10, 7))
    assert torch.equal(sequence_to_grid(grid_to_sequence(g), 10), g)
    s = torch.randint(0, 256, (3, 1, 70))
    assert torch.equal(grid_to_sequence(sequence_to_grid(s, 10)), s)
    assert torch.equal(sequence_to_grid(s[:, 0], 10), sequence_to_grid(s, 10))  # (B, S) works too
    with pytest.raises(ValueError, match="not a whole number of 10-token columns"):
        sequence_to_grid(torch.zeros(1, 1, 15, dtype=torch.long), 10)
    with pytest.raises(ValueError, match=r"token grid \(B, H, W\)"):
        grid_to_sequence(torch.zeros(10, 7, dtype=torch.long))


def test_the_ar_baseline_reads_the_grid_in_time_order(vqvae_dir):
    """Its loss is AudioLM.loss of the time-major sequence, and a token never sees a later column."""
    family = get_family("diffsound_ar")
    cfg = tiny_config(vqvae_dir, family="diffsound_ar")
    torch.manual_seed(0)
    lm = AudioLM(cfg.model).eval()
    grid = torch.randint(0, 256, (2, 10, 6))
    text = family.text_encoder(cfg).encode(["a bell rings twice", "rain falls"])
    with torch.no_grad():
        loss, metrics = family.model_loss(lm, grid, text.embeddings, text.mask)
        expected, _ = lm.loss(grid_to_sequence(grid), text.embeddings, text.mask)
        assert loss.shape == () and torch.allclose(loss, expected) and set(metrics) == {"accuracy"}
        assert abs(float(loss) - 5.545) < 0.7  # ~ log 256 at random initialisation
        later = grid.clone()
        later[:, :, 4:] = torch.randint(0, 256, (2, 10, 2))  # change columns 4 and 5 only
        logits = [lm(lm.shift_right(grid_to_sequence(g)), text.embeddings, text.mask) for g in (grid, later)]
    # positions 0..40 predict the tokens of columns 0..3 and the first token of column 4 from columns 0..3 only
    assert torch.allclose(logits[0][:, :, :41], logits[1][:, :, :41])
    assert not torch.allclose(logits[0][:, :, 41:], logits[1][:, :, 41:])


# ---- engine runs ------------------------------------------------------------------------------------------------


def test_tiny_diffsound_trains_checkpoints_and_resumes_exactly(vqvae_dir, tmp_path):
    straight = tiny_config(vqvae_dir, f"train.run_dir={tmp_path / 'a'}", "train.max_steps=6", "train.ckpt_every=3",
                           "eval.at_end=false")
    train("diffsound", straight)
    first = tiny_config(vqvae_dir, f"train.run_dir={tmp_path / 'b'}", "train.max_steps=3", "train.ckpt_every=3")
    summary = train("diffsound", first)
    assert {"loss", "vb", "aux_ce", "accuracy"} <= set(summary["eval"])
    samples = list((tmp_path / "b" / "samples").iterdir())[0]
    names = sorted(p.name for p in samples.iterdir())
    assert len(names) == 2 and names[0].endswith("_generated.wav") and names[1].endswith("_real.wav")
    resumed = tiny_config(vqvae_dir, f"train.run_dir={tmp_path / 'b'}", "train.max_steps=6", "train.ckpt_every=3",
                          "eval.at_end=false")
    with pytest.warns(UserWarning, match="changed settings .*eval.at_end, train.max_steps"):
        assert train("diffsound", resumed)["steps"] == 6
    a, b = load_from_run(tmp_path / "a"), load_from_run(tmp_path / "b")
    assert isinstance(b, DiffsoundModel) and b.config == resumed.model  # the checkpoint holds the decoder alone
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    # the weights were trained on this VQ-VAE's tokens and this text encoder: resuming with others is refused
    other = tmp_path / "other_vqvae"
    tiny_vqvae().save_pretrained(other)
    with pytest.raises(CheckpointError, match=r"tokenizer.vqvae .*other_vqvae.*use a new train.run_dir"):
        train("diffsound", tiny_config(vqvae_dir, f"train.run_dir={tmp_path / 'b'}", f"tokenizer.vqvae={other}",
                                       "train.max_steps=7"))
    with pytest.raises(CheckpointError, match=r"conditioning.text_encoder \('course' -> "):
        train("diffsound", tiny_config(vqvae_dir, f"train.run_dir={tmp_path / 'b'}", "train.max_steps=7",
                                       f"conditioning.text_encoder=course:{pretrained.path('text_encoder_course')}"))


def test_tiny_ar_baseline_trains_and_its_loss_falls(vqvae_dir, tmp_path):
    cfg = tiny_config(vqvae_dir, f"train.run_dir={tmp_path / 'run'}", "train.max_steps=20", family="diffsound_ar")
    summary = train("diffsound_ar", cfg)
    rows = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["kind"] == "train"]
    assert losses[0] > 5.0 and losses[-1] < 0.8 * losses[0], losses  # starts near log 256, learns
    assert set(summary["eval"]) == {"loss", "accuracy", "perplexity"}
    assert isinstance(load_from_run(tmp_path / "run"), AudioLM)
    assert len(list(next((tmp_path / "run" / "samples").iterdir()).iterdir())) == 2


def test_the_token_cache_serves_every_clip_after_the_first_epoch(vqvae_dir, tmp_path, monkeypatch):
    family = get_family("diffsound")
    cfg = tiny_config(vqvae_dir, f"train.run_dir={tmp_path / 'run'}", "data.train_size=8", "train.max_steps=6",
                      "eval.at_end=false", "tokenizer.cache_size=8")  # 2 batches per epoch, 3 epochs
    vqvae = family.vqvae(cfg)
    encoded = []
    real_encode = vqvae.encode
    monkeypatch.setattr(vqvae, "encode", lambda mel: encoded.append(mel.shape[0]) or real_encode(mel))
    family._grids.clear()
    train("diffsound", cfg)
    assert sum(encoded) == 8  # every clip encoded once, in epoch 1; epochs 2 and 3 come from the cache
    audio = a_batch(cfg)["audio"]
    fresh = real_encode(vqvae.features(audio))
    assert fresh.shape == (4, 10, 8)  # 1-s clips: 63 mel frames -> 8 token columns
    assert torch.equal(family.tokenize(audio.flip(0), cfg), fresh.flip(0))  # cached grids are the VQ-VAE's
    small = tiny_config(vqvae_dir, "tokenizer.cache_size=3")
    family._grids.clear()
    assert torch.equal(family.tokenize(audio, small), fresh)
    assert max(len(c) for c in family._grids.values()) == 3  # the least recently used clip left
    assert not any(p.requires_grad for p in family.vqvae(cfg).parameters())


def test_condition_dropout_in_training_only(vqvae_dir):
    family = get_family("diffsound")
    cfg = tiny_config(vqvae_dir, "conditioning.cond_drop=1.0")
    batch = a_batch(cfg)
    torch.manual_seed(0)
    model = DiffsoundModel(cfg.model)
    grid = family.tokenize(batch["audio"], cfg)
    text = family.embed(batch["caption"], cfg, torch.device("cpu"))

    def loss_of(mask):
        return model.loss(grid, text.embeddings, mask, generator=torch.Generator().manual_seed(1))[0]

    with torch.no_grad():
        with_text, no_text = loss_of(text.mask), loss_of(torch.zeros_like(text.mask))
        assert not torch.allclose(with_text, no_text)
        model.train()
        loss, logs = family.loss_step(model, batch, cfg, torch.Generator().manual_seed(1))
        assert torch.equal(loss, no_text) and logs["cond_dropped"] == 1.0  # every caption dropped
        loss, logs = family.loss_step(model, batch, tiny_config(vqvae_dir, "conditioning.cond_drop=0"),
                                      torch.Generator().manual_seed(1))
        assert torch.equal(loss, with_text) and logs["cond_dropped"] == 0.0
        model.eval()
        loss, logs = family.loss_step(model, batch, cfg, torch.Generator().manual_seed(1))  # evaluation: no dropout
        assert torch.equal(loss, with_text) and logs["cond_dropped"] == 0.0


def test_the_loss_through_a_wrapper_equals_diffsound_loss(vqvae_dir):
    class Compiled(nn.Module):  # what unwrap_model sees of a torch.compile'd model
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

        def forward(self, *args, **kwargs):
            return self._orig_mod(*args, **kwargs)

    cfg = tiny_config(vqvae_dir)
    torch.manual_seed(0)
    model = DiffsoundModel(cfg.model)
    grid = torch.randint(0, 256, (2, 10, 5))
    text = get_family("diffsound").text_encoder(cfg).encode(["a bell rings twice", ""])
    direct, m1 = diffsound_loss(model, grid, text.embeddings, text.mask, torch.Generator().manual_seed(3))
    wrapped, m2 = diffsound_loss(Compiled(model), grid, text.embeddings, text.mask, torch.Generator().manual_seed(3))
    assert torch.allclose(direct, wrapped) and set(m1) == set(m2)
    assert all(torch.allclose(m1[k], m2[k]) for k in m1)


# ---- validation and configs -------------------------------------------------------------------------------


def test_validation_names_the_keys_and_the_values_that_would_work(vqvae_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"model.grid_rows=5 .* \(10 token rows x 256 codes\): set model.grid_rows=10 "
                                          r"model.codebook_size=256"):
        tiny_config(vqvae_dir, "model.grid_rows=5")
    with pytest.raises(ConfigError, match=r"model.text_dim=64 must equal .*'course' \(128\): set model.text_dim=128"):
        tiny_config(vqvae_dir, "model.text_dim=64")
    with pytest.raises(ConfigError, match=r"data.clip_seconds=1.0 is 63 mel frames = a 10 x 8 token grid, wider than "
                                          r"the model takes \(6 columns\): set model.max_cols>=8"):
        tiny_config(vqvae_dir, "model.max_cols=6")
    with pytest.raises(ConfigError, match=r"eval.sample_seconds=3.0 .* set model.max_len>=240"):
        tiny_config(vqvae_dir, "eval.sample_seconds=3.0", family="diffsound_ar")
    with pytest.raises(ConfigError, match=r"model.n_q=4 .* set model.n_q=1 model.codebook_size=256"):
        tiny_config(vqvae_dir, "model.n_q=4", family="diffsound_ar")
    with pytest.raises(ConfigError, match=r"data.sample_rate=22050 must equal .* \(16000 Hz\)"):
        tiny_config(vqvae_dir, "data.sample_rate=22050")
    with pytest.raises(ConfigError, match=r"tokenizer.vqvae=.*nowhere.*neither a folder nor a shipped model"):
        tiny_config(vqvae_dir, f"tokenizer.vqvae={tmp_path / 'nowhere'}")
    with pytest.raises(ConfigError, match=r"eval.vocoder='nope'"):
        tiny_config(vqvae_dir, "eval.vocoder=nope")
    with pytest.raises(ConfigError, match=r"eval.steps: between 1 and model.num_steps=10"):
        tiny_config(vqvae_dir, "eval.steps=11")
    with pytest.raises(ConfigError, match=r"eval.truncation: a probability mass in \(0, 1\]"):
        tiny_config(vqvae_dir, "eval.truncation=1.5")
    with pytest.raises(ConfigError, match=r"conditioning.cond_drop: a probability in \[0, 1\]"):
        tiny_config(vqvae_dir, "conditioning.cond_drop=1.5")
    with pytest.raises(ConfigError, match=r"model.dim=30 must be divisible by num_heads=4"):
        tiny_config(vqvae_dir, "model.dim=30", "model.num_heads=4")


def test_a_mel_vqvae_training_run_folder_is_a_tokenizer(vqvae_dir, tmp_path):
    vq_cfg = get_family("mel_vqvae").load_config("tiny", [f"train.run_dir={tmp_path / 'vq'}", "train.max_steps=1",
                                                           "eval.at_end=false", *FAST])
    train("mel_vqvae", vq_cfg)
    assert latest_checkpoint(tmp_path / "vq") is not None
    cfg = tiny_config(vqvae_dir, f"tokenizer.vqvae={tmp_path / 'vq'}", "eval.num_samples=0",
                      f"model.grid_rows={MelVQVAE(vq_cfg.model).token_grid_shape(1)[0]}",
                      f"model.codebook_size={vq_cfg.model.codebook_size}", "model.max_cols=32")  # 1 s: 10 x 32
    vqvae = get_family("diffsound").vqvae(cfg)
    assert isinstance(vqvae, MelVQVAE) and not vqvae.training


def test_course_and_paper_configs():
    ds, ar = get_family("diffsound"), get_family("diffsound_ar")
    paper = ds.load_config("paper", validate=False)  # needs CLIP and a trained paper VQ-VAE to validate
    m = paper.model
    assert (m.num_layers, m.dim, m.num_heads, m.num_steps, m.aux_weight, m.gamma_bar_end) == (19, 1024, 16, 100, 5e-4,
                                                                                                0.9)
    assert (m.grid_rows, m.max_cols, m.text_dim) == (5, 53, 512) and paper.data.sample_rate == 22050
    assert paper.conditioning.text_encoder.startswith("clip:")
    ar_paper = ar.load_config("paper", validate=False)
    assert (ar_paper.model.num_layers, ar_paper.model.dim, ar_paper.model.max_len) == (19, 1024, 5 * 53)
    if "mel_vqvae_course" in pretrained.available():  # the course configs fit the shipped VQ-VAE and encoder
        course, ar_course = ds.load_config("course"), ar.load_config("course")
        # the AR baseline: same width, depth, heads, data and step budget
        a, b = course.model, ar_course.model
        assert (a.dim, a.num_layers, a.num_heads, a.mlp_ratio) == (b.dim, b.num_layers, b.num_heads, b.mlp_ratio)
        assert course.train.max_steps == ar_course.train.max_steps and course.data == ar_course.data
        assert b.max_len == a.grid_rows * a.max_cols
        with torch.device("meta"):
            sizes = [sum(p.numel() for p in mod.parameters()) for mod in (DiffsoundModel(a), AudioLM(b))]
        assert 4e6 < sizes[1] < sizes[0] < 7e6  # 5.94 M and 4.25 M: the diffusion decoder's timestep projections
    if "mel_vqvae_v2" in pretrained.available():  # the v2 configs: the v2 tools, the same data and budget for both
        from course_lib.pipelines.diffsound import DECODER_TOOLS

        v2, ar_v2 = ds.load_config("v2"), ar.load_config("v2")
        assert v2.data == ar_v2.data and v2.data.version == 2 and v2.train.max_steps == ar_v2.train.max_steps
        assert v2.tokenizer.vqvae == ar_v2.tokenizer.vqvae == "pretrained:mel_vqvae_v2"
        assert v2.model.codebook_size == ar_v2.model.codebook_size == 512
        for name, config in (("diffsound_v2", v2), ("diffsound_ar_v2", ar_v2)):  # what from_pretrained pairs it with
            assert DECODER_TOOLS[name] == (config.tokenizer.vqvae.removeprefix("pretrained:"),
                                           config.conditioning.text_encoder)


def test_condition_dropout_drops_the_configured_share_of_captions(vqvae_dir, monkeypatch):
    family = get_family("diffsound")
    cfg = tiny_config(vqvae_dir, "conditioning.cond_drop=0.25", "data.train_size=16")
    batch = a_batch(cfg, size=16)
    seen = []
    monkeypatch.setattr(family, "model_loss", lambda model, grid, text, mask, generator=None:
                        seen.append(mask.any(dim=1)) or (torch.zeros(()), {}))
    torch.manual_seed(0)
    model = DiffsoundModel(cfg.model).train()
    dropped = [family.loss_step(model, batch, cfg)[1]["cond_dropped"] for _ in range(40)]
    kept = torch.stack(seen)  # (40, 16): True where the caption reached the model
    assert float(1 - kept.float().mean()) == pytest.approx(sum(dropped) / 40)
    assert abs(sum(dropped) / 40 - 0.25) < 0.065  # 640 captions: 0.25 +- 3.8 standard deviations
