"""The released models inside the course: EnCodec, MusicGen-small and CLAP, from weights already on this machine.

Three released checkpoints run through the course's own code (lesson 09, ``make compare``):

* ``facebook/encodec_24khz`` → :func:`course_lib.codecs.codec_from_encodec` → a course :class:`~course_lib.codecs.Codec`
  (:func:`load_encodec`; :func:`compare_encodec` checks it against transformers' own EnCodec);
* ``facebook/musicgen-small`` → its decoder through :func:`course_lib.lm.lm_from_musicgen`, its 32 kHz EnCodec
  through :func:`~course_lib.codecs.codec_from_encodec` and its T5 encoder as a
  :class:`~course_lib.text.hf.T5TextEncoder`, joined in an :class:`~course_lib.pipelines.AudioGenPipeline` whose
  ``generate`` is the course's sampler (delay pattern, classifier-free guidance, top-k, KV cache)
  (:func:`load_musicgen`; :func:`compare_musicgen` checks logits and decoded audio against transformers);
* ``laion/clap-htsat-unfused`` → :class:`~course_lib.metrics.agreement.HFClapAgreement`, the CLAP score
  (:func:`load_clap`; :func:`agreement_rows` scores clips with it next to the course's agreement model).

Nothing is downloaded. :func:`find_weights` looks for each checkpoint, in this order, in a folder or hub name you
pass, in the environment variables :data:`ENV_VARS` (``COURSE_ENCODEC``, ``COURSE_MUSICGEN``, ``COURSE_CLAP``: a
folder written by ``save_pretrained`` or a hub name), and in the local Hugging Face cache; every load uses
``local_files_only=True``. :func:`download_command` is the one command that fetches the three on a machine with
network. Where one is missing, :func:`with_stand_ins` writes a tiny model of the same kind with random weights
(:func:`save_stand_ins`, through ``save_pretrained``) and loads that instead, so the same loading, conversion,
generation and scoring code runs: a stand-in checks the code path, and its sound is noise.
:data:`RELEASED_SCALE` holds the released models' published scale (training audio, parameters, updates) for the
lesson's "what changes at scale" table. ``transformers`` is imported only inside the functions that need it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["RELEASED", "ENV_VARS", "RELEASED_SCALE", "Weights", "find_weights", "download_command",
           "weights_table", "save_stand_ins", "with_stand_ins", "load_encodec", "compare_encodec", "load_musicgen",
           "compare_musicgen", "load_clap", "agreement_rows", "architecture_parameters", "STAND_IN_LABEL"]

#: The three checkpoints (hub names), by the short name this module uses.
RELEASED: dict[str, str] = {"encodec": "facebook/encodec_24khz", "musicgen": "facebook/musicgen-small",
                            "clap": "laion/clap-htsat-unfused"}
#: Environment variable per checkpoint: a folder (``save_pretrained`` layout) or a hub name in the local cache.
ENV_VARS: dict[str, str] = {"encodec": "COURSE_ENCODEC", "musicgen": "COURSE_MUSICGEN", "clap": "COURSE_CLAP"}
WHAT: dict[str, str] = {"encodec": "EnCodec 24 kHz codec (75 frames/s, up to 32 codebooks x 1024)",
                        "musicgen": "MusicGen-small: T5 text encoder + LM over a 32 kHz EnCodec (4 x 2048, 50 frames/s)",
                        "clap": "CLAP: HTSAT audio tower + RoBERTa text tower, the CLAP score's judge"}
#: How a stand-in is labelled wherever its output is shown.
STAND_IN_LABEL = "random weights: this checks the code path, the sound is noise"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "vocab.json", "vocab.txt")

#: The released models' published scale, next to the course model each one corresponds to. ``None``: not quoted.
#: Parameters: the figure the source gives; :func:`architecture_parameters` counts the architectures here.
RELEASED_SCALE: list[dict[str, Any]] = [
    {"model": "EnCodec 24 kHz", "course": "codec_course", "hours": None, "parameters": 14_851_810,
     "updates": 600_000,
     "source": "parameters: REFERENCE.md (the encodec package's model, counted); updates: 300 epochs x 2,000 "
               "updates of 64 one-second examples (facebook/encodec_24khz model card, quoting the paper)"},
    {"model": "MusicGen-small", "course": "audiogen_course", "hours": 20_000, "parameters": 300_000_000,
     "updates": 1_000_000,
     "source": "20K hours of licensed music and 300M parameters: audiocraft model_cards/MUSICGEN_MODEL_CARD.md; "
               "updates: 500 epochs x 2,000 updates (audiocraft config/solver/musicgen/musicgen_base_32khz.yaml "
               "and default.yaml)"},
    {"model": "AudioGen (audiogen-medium)", "course": "audiogen_course", "hours": 4_000, "parameters": 1_500_000_000,
     "updates": None,
     "source": "REFERENCE.md: 1.5 B parameters (audiocraft docs/AUDIOGEN.md), ~4k hours from 10 datasets (survey)"},
    {"model": "CLAP (LAION, HTSAT)", "course": "agreement_course", "hours": 4_325, "parameters": None,
     "updates": None,
     "source": "LAION-Audio-630K, the dataset of the LAION CLAP paper: 633,526 pairs, 4,325 hours (LAION-AI/"
               "audio-dataset laion-audio-630k/README.md); the checkpoint's exact training mix is not quoted here"},
]


# ---- where the weights are -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Weights:
    """Where one checkpoint's weights are (or why they are not).

    ``name``: ``"encodec"``, ``"musicgen"`` or ``"clap"``; ``repo``: its hub name (:data:`RELEASED`); ``source``:
    what was looked for (a folder or a hub name); ``path``: the local folder to load (``None``: not found);
    ``origin``: how it was found (``"argument"``, ``"$COURSE_MUSICGEN"``, ``"Hugging Face cache"``,
    ``"stand-in"``) or ``"missing"``; ``note``: a sentence on where it was found or why not; ``stand_in``: True
    for a tiny random model written by :func:`save_stand_ins`.
    """

    name: str
    repo: str
    source: str
    path: Path | None
    origin: str
    note: str = ""
    stand_in: bool = False

    @property
    def found(self) -> bool:
        """True when there is a folder to load (a stand-in counts)."""
        return self.path is not None

    @property
    def label(self) -> str:
        """How to name this model in a table: the hub name, or the stand-in warning."""
        return f"{self.repo} ({STAND_IN_LABEL})" if self.stand_in else str(self.source)


def _has_weights(folder: Path) -> str:
    """Empty string when ``folder`` holds a config and a weights file, else what is missing."""
    if not (folder / "config.json").is_file():
        return f"{folder} has no config.json"
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        return f"{folder} has a config.json but no weights file ({', '.join(WEIGHT_FILES)})"
    return ""


def _is_hub_name(value: str) -> bool:
    """``org/name`` (one slash, no leading ``/``, ``.`` or ``~``), as opposed to a path."""
    return value.count("/") == 1 and not value.startswith(("/", ".", "~")) and "\\" not in value


def _locate(name: str, value: str, origin: str, cache_dir: str | os.PathLike | None) -> Weights:
    repo = RELEASED[name]
    folder = Path(value).expanduser()
    if folder.is_dir():
        problem = _has_weights(folder)
        if problem:
            return Weights(name, repo, value, None, "missing", problem)
        return Weights(name, repo, value, folder.resolve(), origin, f"the folder {folder}")
    if not _is_hub_name(value):
        return Weights(name, repo, value, None, "missing", f"no such folder: {value}")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snapshot = Path(snapshot_download(value, local_files_only=True, cache_dir=cache_dir))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        return Weights(name, repo, value, None, "missing", f"{value} is not in the local Hugging Face cache")
    problem = _has_weights(snapshot)
    if problem:
        return Weights(name, repo, value, None, "missing", f"{value} is only partly in the cache: {problem}")
    where = origin if origin != "default" else "Hugging Face cache"
    return Weights(name, repo, value, snapshot, where, f"{value} in the Hugging Face cache ({snapshot})")


def find_weights(folders: Mapping[str, str | os.PathLike | None] | None = None, names: Sequence[str] | None = None,
                 env: Mapping[str, str] | None = None,
                 cache_dir: str | os.PathLike | None = None) -> dict[str, Weights]:
    """Find each checkpoint of ``names`` (default all three of :data:`RELEASED`) on this machine, without network.

    For each name the first of these that is given is looked up: ``folders[name]`` (a folder or a hub name;
    ``None`` or ``""`` = not given), the environment variable :data:`ENV_VARS` ``[name]`` in ``env`` (default
    ``os.environ``), then the hub name of :data:`RELEASED`. A folder must hold ``config.json`` and a weights file;
    a hub name must be in the Hugging Face cache (``cache_dir``, default the usual one: ``$HF_HUB_CACHE`` or
    ``~/.cache/huggingface/hub``), looked up with ``local_files_only=True``. Returns ``name → Weights``; a missing
    one has ``path=None`` and a ``note`` saying why. Raises ``ValueError`` for an unknown name.
    """
    names = tuple(RELEASED) if names is None else tuple(names)
    folders = dict(folders or {})
    unknown = sorted({*names, *folders} - set(RELEASED))
    if unknown:
        raise ValueError(f"unknown released model(s) {unknown}; known: {list(RELEASED)}")
    env = os.environ if env is None else env
    found = {}
    for name in names:
        asked, var = folders.get(name), ENV_VARS[name]
        if asked not in (None, ""):
            value, origin = os.fspath(asked), "argument"
        elif env.get(var, "").strip():
            value, origin = env[var].strip(), f"${var}"
        else:
            value, origin = RELEASED[name], "default"
        found[name] = _locate(name, value, origin, cache_dir)
    return found


def download_command(names: Sequence[str] | None = None) -> str:
    """The one shell command that puts the checkpoints ``names`` (default all three) into the Hugging Face cache,
    where :func:`find_weights` finds them (run it on a machine with network; a few GB in all)."""
    names = tuple(RELEASED) if names is None else tuple(names)
    repos = ", ".join(repr(RELEASED[n]) for n in names)
    return ('python -c "from huggingface_hub import snapshot_download; '
            f'[snapshot_download(r) for r in [{repos}]]"')


def weights_table(weights: Mapping[str, Weights]) -> str:
    """A markdown table: one row per checkpoint with what it is, whether it was found, how, and where."""
    lines = ["| model | checkpoint | found | how | where / why not |", "|---|---|---|---|---|"]
    for name, w in weights.items():
        found = "stand-in" if w.stand_in else ("yes" if w.found else "no")
        lines.append(f"| {name}: {WHAT[name]} | `{w.repo}` | {found} | {w.origin} | {w.note} |")
    return "\n".join(lines)


# ---- tiny stand-ins ----------------------------------------------------------------------------------------------


def _stand_in_captions() -> list[str]:
    """Course captions of both domains (train and test, 64 clips each): the stand-in tokenizers' training text."""
    from course_lib.data import music, sound_events
    from course_lib.text.captions import draw_attributes

    out = []
    for split in ("train", "test"):
        for i in range(64):
            out.append(sound_events.caption(draw_attributes("sound_events", split, i, 2.0), i))
            out.append(music.caption(draw_attributes("music", split, i), i))
    return out


def _stand_in_tokenizer() -> Any:
    """A WordPiece tokenizer trained on course captions, with a character fallback (no course word is unknown)."""
    from transformers import PreTrainedTokenizerFast

    from course_lib.text.course_encoder import train_tokenizer

    tok = train_tokenizer(_stand_in_captions(), vocab_size=200, char_fallback=True)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")


@torch.no_grad()
def _fill_codebooks(model: Any, seconds: float, seed: int) -> None:
    """EnCodec initialises its codebooks to zeros (every code would be 0). Draw each stage's entries around the
    residuals the encoder gives for tones and noise instead (their mean, plus Gaussian noise of their spread), so
    codes vary and each stage removes only part of the residual, as in a trained codec (a codebook copied from
    the residuals themselves would shrink it to float rounding within a few stages, where codes become ties)."""
    gen = torch.Generator().manual_seed(seed)
    rate = model.config.sampling_rate
    t = torch.arange(round(seconds * rate)) / rate
    tones = sum(0.2 * torch.sin(2 * math.pi * f * t) for f in (220.0, 440.0, 660.0))
    x = (tones + 0.1 * torch.randn(t.shape, generator=gen))[None, None].float()
    residual = model.encoder(x)
    for layer in model.quantizer.layers:
        frames = residual.transpose(1, 2).reshape(-1, residual.shape[1])
        noise = torch.randn(model.config.codebook_size, frames.shape[1], generator=gen)
        layer.codebook.embed.copy_(frames.mean(0) + frames.std(0) * noise)
        residual = residual - layer.decode(layer.encode(residual))


def _tiny_encodec_config(**overrides: Any) -> Any:
    """A tiny ``EncodecConfig`` of the 24 kHz kind (hop 320, 75 frames/s, codebooks of 1024, 1.5–24 kbps, causal,
    reflect padding, 1×1 shortcuts: the released model's options) with narrow layers; ``overrides`` change it."""
    from transformers import EncodecConfig

    values = dict(sampling_rate=24_000, audio_channels=1, num_filters=4, hidden_size=16, num_residual_layers=1,
                  num_lstm_layers=1, upsampling_ratios=[8, 5, 4, 2], codebook_size=1024,
                  target_bandwidths=[1.5, 3.0, 6.0, 12.0, 24.0])
    values.update(overrides)
    return EncodecConfig(**values)


@torch.no_grad()
def _tiny_encodec(seed: int, **overrides: Any) -> Any:
    from transformers import EncodecModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = EncodecModel(_tiny_encodec_config(**overrides)).eval()
        _fill_codebooks(model, 2.0, seed)
    return model


@torch.no_grad()
def _tiny_musicgen(tokenizer: Any, seed: int) -> Any:
    """A tiny ``MusicgenForConditionalGeneration``: 1-layer T5 (width 32) over ``tokenizer``'s vocabulary, a tiny
    EnCodec of the 32 kHz kind (hop 640, 50 frames/s, 4 codebooks x 2048 at 2.2 kbps, non-causal, identity
    shortcuts, as MusicGen's codec), a 2-layer decoder of width
    64 over the 4 codebooks; decoder weights re-drawn with a larger spread than transformers' init (which makes
    every logit nearly equal), so a wrongly mapped weight would show in :func:`compare_musicgen`."""
    from transformers import (
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        T5Config,
    )

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        t5 = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2,
                      relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id, dropout_rate=0.0)
        codec = _tiny_encodec_config(sampling_rate=32_000, upsampling_ratios=[8, 5, 4, 4], codebook_size=2048,
                                     target_bandwidths=[2.2], use_causal_conv=False, use_conv_shortcut=False)
        card = 2048
        decoder = MusicgenDecoderConfig(vocab_size=card, hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_codebooks=4, max_position_embeddings=1024,
                                        pad_token_id=card, bos_token_id=card, decoder_start_token_id=card)
        model = MusicgenForConditionalGeneration(MusicgenConfig(text_encoder=t5, audio_encoder=codec,
                                                                decoder=decoder)).eval()
        _fill_codebooks(model.audio_encoder, 2.0, seed)
        gen = torch.Generator().manual_seed(seed + 1)
        params = dict(model.decoder.named_parameters(prefix="decoder"))
        params.update(model.enc_to_dec_proj.named_parameters(prefix="enc_to_dec_proj"))
        for name, p in params.items():
            if "layer_norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                scale = 3.0 if "lm_heads" in name else 1.5
                p.copy_(scale * torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))
    return model


def save_stand_ins(folder: str | os.PathLike, names: Sequence[str] | None = None, seed: int = 0) -> dict[str, Path]:
    """Write tiny random models of the released kinds into ``folder/<name>`` with ``save_pretrained``, in the layout
    the real checkpoints have, and return ``name → folder``.

    ``encodec``: an ``EncodecModel`` of the 24 kHz kind (see :func:`_tiny_encodec_config`), its codebooks filled
    near encoder outputs so that codes vary; ``musicgen``: a ``MusicgenForConditionalGeneration`` (tiny T5, tiny
    32 kHz-kind EnCodec, 2-layer decoder over 4 x 2048 codes) with a WordPiece tokenizer trained on course
    captions; ``clap``: a tiny ``ClapModel`` with its feature extractor and tokenizer
    (:func:`course_lib.metrics.embeddings.save_random_tiny_audio`). Random weights: the code path, not the sound.
    Deterministic for a fixed ``seed``; the caller's random state is left alone.
    """
    from course_lib.metrics.embeddings import save_random_tiny_audio

    names = tuple(RELEASED) if names is None else tuple(names)
    unknown = sorted(set(names) - set(RELEASED))
    if unknown:
        raise ValueError(f"unknown released model(s) {unknown}; known: {list(RELEASED)}")
    root = Path(folder)
    out = {}
    for name in names:
        target = root / name
        target.mkdir(parents=True, exist_ok=True)
        if name == "encodec":
            _tiny_encodec(seed).save_pretrained(target)
        elif name == "musicgen":
            tokenizer = _stand_in_tokenizer()
            _tiny_musicgen(tokenizer, seed).save_pretrained(target)
            tokenizer.save_pretrained(target)
        else:
            with torch.random.fork_rng(devices=[]):
                save_random_tiny_audio("clap", target, seed=seed)
        out[name] = target
    return out


def with_stand_ins(weights: Mapping[str, Weights], folder: str | os.PathLike, seed: int = 0) -> dict[str, Weights]:
    """``weights`` with every missing checkpoint replaced by a tiny random stand-in written into ``folder``
    (:func:`save_stand_ins`); found ones are kept as they are. A stand-in has ``stand_in=True`` and
    ``origin="stand-in"``, and its :attr:`Weights.label` carries :data:`STAND_IN_LABEL`."""
    missing = [name for name, w in weights.items() if not w.found]
    paths = save_stand_ins(folder, missing, seed) if missing else {}
    out = dict(weights)
    for name, path in paths.items():
        out[name] = replace(weights[name], path=path, origin="stand-in", stand_in=True,
                            note=f"tiny random {name} written by save_stand_ins to {path} ({STAND_IN_LABEL}); "
                                 f"was: {weights[name].note}")
    return out


# ---- loading and checking -------------------------------------------------------------------------------------------


def _folder(weights: Weights | str | os.PathLike) -> str:
    if isinstance(weights, Weights):
        if weights.path is None:
            raise FileNotFoundError(f"no weights for {weights.name}: {weights.note}. Get them with: "
                                    f"{download_command([weights.name])}")
        return str(weights.path)
    return os.fspath(weights)


def load_encodec(weights: Weights | str | os.PathLike) -> tuple[Any, Any]:
    """``(hf_model, codec)``: transformers' ``EncodecModel`` from a :class:`Weights` or a folder (offline), and the
    course :class:`~course_lib.codecs.Codec` converted from it by :func:`~course_lib.codecs.codec_from_encodec`
    (same codes, same audio). Both in eval mode on the CPU."""
    from transformers import EncodecModel

    from course_lib.codecs import codec_from_encodec

    hf = EncodecModel.from_pretrained(_folder(weights), local_files_only=True).eval()
    return hf, codec_from_encodec(hf)


@torch.no_grad()
def compare_encodec(hf: Any, codec: Any, audio: Tensor, bandwidth: float) -> dict[str, Any]:
    """Encode and decode ``audio`` ``(B, C, T)`` (float, at the codec's rate) at ``bandwidth`` kbps with both
    transformers' EnCodec and the converted course codec, and measure how far apart they are.

    Returns ``n_q`` (codebooks at this bandwidth, :func:`~course_lib.codecs.encodec_n_q`), ``kbps``
    (:meth:`Codec.bitrate`), ``codes`` / ``hf_codes`` ``(B, n_q, F)``, ``codes_match`` (the share of equal
    codes; 1 but for float32 near-ties, which may break either way), ``decode_max_abs_diff`` (both decoders on
    transformers' codes), ``roundtrip_max_abs_diff`` (each one's own encode → decode), ``audio`` and
    ``hf_audio`` ``(B, C, T)`` (each one's round trip, cropped to ``T``).
    """
    from course_lib.codecs import encodec_n_q

    x = audio.float()
    if x.dim() != 3:
        raise ValueError(f"audio must be (B, C, T), got shape {tuple(x.shape)}")
    n_q = encodec_n_q(hf.config, bandwidth)
    out = hf.encode(x, bandwidth=float(bandwidth))
    hf_codes = out.audio_codes[0]
    codes = codec.encode(x, n_q=n_q)
    n = x.shape[-1]
    hf_audio = hf.decode(out.audio_codes, out.audio_scales).audio_values[..., :n]
    same_codes = codec.decode(hf_codes)[..., :n]
    ours = codec.decode(codes)[..., :n]
    return {"n_q": n_q, "kbps": codec.bitrate(n_q) / 1000, "codes": codes, "hf_codes": hf_codes,
            "codes_match": float((codes == hf_codes).float().mean()),
            "decode_max_abs_diff": float((same_codes - hf_audio).abs().max()),
            "roundtrip_max_abs_diff": float((ours - hf_audio).abs().max()), "audio": ours, "hf_audio": hf_audio}


def musicgen_text_encoder(hf: Any, folder: str | os.PathLike) -> Any:
    """The T5 encoder inside a ``MusicgenForConditionalGeneration`` and the tokenizer saved beside it in ``folder``,
    as a frozen course :class:`~course_lib.text.hf.T5TextEncoder` (it shares the model's T5 weights)."""
    from transformers import AutoTokenizer

    from course_lib.text.hf import T5TextEncoder

    folder = Path(folder)
    if not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        raise FileNotFoundError(f"{folder} has no tokenizer files (one of {_TOKENIZER_FILES}): MusicGen's T5 "
                                "needs the tokenizer saved with the checkpoint")
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return T5TextEncoder(hf.text_encoder, tokenizer, name=f"t5:{folder}")


def load_musicgen(weights: Weights | str | os.PathLike) -> tuple[Any, Any]:
    """``(pipeline, hf_model)``: a MusicGen checkpoint (a :class:`Weights` or a folder, offline) run by the course.

    ``hf_model`` is transformers' ``MusicgenForConditionalGeneration``; ``pipeline`` an
    :class:`~course_lib.pipelines.AudioGenPipeline` of three converted parts: the decoder as an
    :class:`~course_lib.lm.AudioLM` (:func:`~course_lib.lm.lm_from_musicgen`, same logits), the audio encoder as
    a course :class:`~course_lib.codecs.Codec` (:func:`~course_lib.codecs.codec_from_encodec`) and the T5 with
    its tokenizer as a :class:`~course_lib.text.hf.T5TextEncoder` (:func:`musicgen_text_encoder`). So
    ``pipeline.generate(prompts, seconds, cfg_scale=3.0, top_k=250)`` samples with the course's sampler
    (:func:`course_lib.lm.generate`) and decodes with the course's codec, at the checkpoint's 32 kHz.
    Drop ``hf_model`` when the checks are done: the pipeline shares only the T5 with it.
    """
    from transformers import MusicgenForConditionalGeneration

    from course_lib.codecs import codec_from_encodec
    from course_lib.lm import lm_from_musicgen
    from course_lib.pipelines import AudioGenPipeline

    folder = _folder(weights)
    hf = MusicgenForConditionalGeneration.from_pretrained(folder, local_files_only=True).eval()
    pipe = AudioGenPipeline(lm_from_musicgen(hf), codec_from_encodec(hf.audio_encoder),
                            musicgen_text_encoder(hf, folder))
    return pipe, hf


@torch.no_grad()
def compare_musicgen(pipe: Any, hf: Any, prompts: Sequence[str], codes: Tensor) -> dict[str, float]:
    """How far the converted MusicGen is from transformers' on ``codes`` ``(B, K, F)`` generated for ``prompts``.

    ``logits_max_abs_diff``: the course LM's logits against ``MusicgenForConditionalGeneration``'s, both
    teacher-forced on the delay-interleaved codes with the same tokenized prompts (transformers runs its own T5
    and text projection, the course its T5 wrapper and the folded projection); ``logits_scale``: the largest
    ``|logit|`` of transformers' (for a relative reading); ``decode_max_abs_diff``: the course codec's audio
    against transformers' EnCodec ``decode`` of the same codes; ``audio_scale``: the largest ``|sample|``.
    """
    lm = pipe.lm
    prompts = list(prompts)
    tokens = pipe.text_encoder.tokenize(prompts)
    text = pipe.text_encoder.encode(prompts)
    inp = lm.shift_right(lm.pattern.interleave(codes, lm.special_id))
    b, k, s = inp.shape
    ref = hf(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
             decoder_input_ids=inp.reshape(b * k, s)).logits.reshape(b, k, s, -1)
    ours = lm(inp, text.embeddings, text.mask)
    hf_audio = hf.audio_encoder.decode(codes[None], [None]).audio_values
    our_audio = pipe.codec.decode(codes)
    n = min(hf_audio.shape[-1], our_audio.shape[-1])
    return {"logits_max_abs_diff": float((ours - ref).abs().max()), "logits_scale": float(ref.abs().max()),
            "decode_max_abs_diff": float((our_audio[..., :n] - hf_audio[..., :n]).abs().max()),
            "audio_scale": float(hf_audio.abs().max())}


def load_clap(weights: Weights | str | os.PathLike) -> Any:
    """A CLAP checkpoint (a :class:`Weights` or a folder, offline) as an
    :class:`~course_lib.metrics.agreement.HFClapAgreement`: ``embed_audio`` / ``embed_text`` give CLAP's
    normalised embeddings, so :func:`~course_lib.metrics.agreement.agreement_score` is the CLAP score."""
    from course_lib.metrics.agreement import HFClapAgreement

    return HFClapAgreement.from_pretrained(_folder(weights), local_files_only=True)


@torch.no_grad()
def agreement_rows(judges: Mapping[str, Any], clips: Mapping[str, tuple[Tensor, int, Sequence[str]]]) -> list[dict]:
    """Score sets of clips with several text–audio judges: one row per set.

    ``judges``: label → a model with ``embed_audio`` and ``embed_text`` (:class:`HFClapAgreement`, the course's
    :class:`~course_lib.metrics.agreement.AgreementModel`); ``clips``: label → ``(audio, sample_rate, captions)``,
    audio ``(B, T)`` or ``(B, 1, T)`` with one caption per clip. Each row holds ``clips`` (the label), ``n``, and
    per judge ``"<judge>"``: the mean score of each clip with its own caption (:func:`agreement_score`), and, when
    ``n ≥ 2``, ``"<judge> other"``: the mean score with another clip's caption (captions rolled by one), so
    ``own − other`` says whether the judge hears the words at all.
    """
    from course_lib.metrics.agreement import agreement_score

    rows = []
    for label, (audio, rate, captions) in clips.items():
        wav = audio.detach().float().cpu()
        wav = wav[:, 0] if wav.dim() == 3 else wav
        captions = list(captions)
        if len(captions) != wav.shape[0]:
            raise ValueError(f"clips[{label!r}]: {wav.shape[0]} clips but {len(captions)} captions")
        row: dict[str, Any] = {"clips": label, "n": len(captions)}
        for name, judge in judges.items():
            row[name] = float(agreement_score(judge, wav, captions, rate).mean())
            if len(captions) >= 2:
                row[f"{name} other"] = float(agreement_score(judge, wav, captions[1:] + captions[:1], rate).mean())
        rows.append(row)
    return rows


def architecture_parameters() -> dict[str, int]:
    """Parameters of the three released architectures, counted on torch's ``meta`` device (no memory, no
    weights): ``encodec`` (transformers' default ``EncodecConfig``, the 24 kHz model), ``musicgen_decoder`` (the
    default ``MusicgenDecoderConfig``, documented as ``facebook/musicgen-small``'s: the LM that
    :func:`~course_lib.lm.lm_from_musicgen` converts, cross-attention included) and ``clap`` (the default
    ``ClapConfig``: HTSAT audio tower, RoBERTa text tower, no fusion)."""
    from transformers import (
        ClapConfig,
        ClapModel,
        EncodecConfig,
        EncodecModel,
        MusicgenDecoderConfig,
        MusicgenForCausalLM,
    )

    counts = {}
    with torch.device("meta"):
        for key, build in (("encodec", lambda: EncodecModel(EncodecConfig())),
                           ("musicgen_decoder", lambda: MusicgenForCausalLM(MusicgenDecoderConfig())),
                           ("clap", lambda: ClapModel(ClapConfig()))):
            counts[key] = sum(p.numel() for p in build().parameters())
    return counts
