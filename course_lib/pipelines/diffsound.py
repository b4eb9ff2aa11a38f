"""Diffsound end to end: captions → text encoder → token decoder → mel VQ-VAE decoder → vocoder → audio.

Yang et al. 2023 ("Diffsound: Discrete Diffusion Model for Text-to-sound Generation") generate a sound in
three stages: a *token decoder* turns the caption's embeddings into a grid of mel-VQ-VAE tokens
``(B, H, W)`` (H token rows over the mel bands, W token columns over time), the VQ-VAE decoder turns the
grid into a log-mel ``(B, n_mels, frames)``, and a vocoder (MelGAN; Griffin-Lim as the baseline) turns the
mel into a waveform ``(B, 1, T)``. The paper's point is the token decoder: a **discrete diffusion** model
(:class:`~course_lib.diffusion.diffsound.DiffsoundModel`) that starts from an all-[MASK] grid and fills
in every token in parallel over a few steps, against the **autoregressive baseline** it was compared with
(an :class:`~course_lib.lm.AudioLM` with one codebook over the same tokens, generating one token at a
time). :class:`DiffsoundPipeline` takes either decoder, so both are measured on equal footing: same text
encoder, same VQ-VAE, same vocoder, same token count.

The AR baseline reads the grid **time-major** (:func:`grid_to_sequence`): the H tokens of column 0, then
the H tokens of column 1, ... so it generates in time order, ``S = H·W`` steps for ``W`` columns.

Arithmetic of a clip of ``seconds`` at ``sample_rate`` Hz with the VQ-VAE's hop ``h`` and downsampling
``f``: ``T = round(seconds · sample_rate)`` samples, ``frames = 1 + T // h`` mel frames (a centred STFT),
``W = ceil(frames / f)`` token columns; the decoded mel is cropped to ``frames`` and the vocoded audio to
``T`` samples. The course's 16 kHz VQ-VAE (h = 256, f = 8): 2 s → 126 frames → a 10 × 16 grid.

Loading (:meth:`DiffsoundPipeline.from_pretrained`): a shipped model's name (``"mel_vqvae_course"``, or
``"pretrained:NAME"``) or a folder written by the model's ``save_pretrained``; ``vocoder="griffin_lim"``
uses :class:`~course_lib.vocoders.GriffinLimVocoder` on the VQ-VAE's mel front end.

The default vocoder is Griffin-Lim, not the paper's MelGAN: the course's shipped ``melgan_course`` does not
yet beat Griffin-Lim (issue #5) and loses the loud sustained partials that carry pitch — real clips through
the VQ-VAE and ``melgan_course`` keep their class / count / pitch band 0.38 / 0.64 / 0.10 of the time by the
probes, against 0.83 / 0.79 / 1.00 through Griffin-Lim (24 test prompts). Pass ``vocoder="melgan_course"``
to hear the MelGAN, or ``vocoder="vocos_course"`` for the course's Vocos: it beats Griffin-Lim by log-mel
distance on true mels and on the VQ-VAE's (3.76 against 4.60 dB on 48 clips) and ties it by the probes
there (class 0.77 against 0.79, within one clip), so Griffin-Lim stays the default until a vocoder beats it
by the probes on that path too (its card, ``course_lib/pretrained/vocos_course/CARD.md``).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from course_lib.codecs.mel_vqvae import MelVQVAE
from course_lib.diffusion.diffsound import DiffsoundModel
from course_lib.lm.model import AudioLM
from course_lib.lm.sampling import generate as lm_generate
from course_lib.pipelines.audiogen import PRETRAINED_PREFIX, _eval_mode, _load_model, load_text
from course_lib.text.base import TextEmbedding, TextEncoder
from course_lib.text.prompts import encode_prompts
from course_lib.vocoders import GriffinLimVocoder, MelGAN, Vocoder
from course_lib.vocoders.vocos import Vocos

__all__ = ["DiffsoundPipeline", "grid_to_sequence", "sequence_to_grid", "load_decoder", "load_vqvae",
           "load_vocoder", "DECODER_TOOLS"]

GRIFFIN_LIM = "griffin_lim"


# ---- the AR baseline's reading order -------------------------------------------------------------------------


def grid_to_sequence(grid: Tensor) -> Tensor:
    """Token grid ``(B, H, W)`` → one-codebook sequence ``(B, 1, W·H)``, **time-major**.

    ``seq[b, 0, w·H + h] = grid[b, h, w]``: the H tokens of column 0 (top to bottom), then column 1, ... so
    an autoregressive model reading it left to right generates the sound in time order. Inverse:
    :func:`sequence_to_grid` with ``rows=H``.
    """
    if not isinstance(grid, Tensor) or grid.dim() != 3:
        raise ValueError(f"grid_to_sequence expects a token grid (B, H, W), got "
                         f"{tuple(grid.shape) if isinstance(grid, Tensor) else type(grid).__name__}")
    b, h, w = grid.shape
    return grid.transpose(1, 2).reshape(b, 1, w * h)


def sequence_to_grid(seq: Tensor, rows: int) -> Tensor:
    """One-codebook sequence ``(B, 1, S)`` (or ``(B, S)``) read time-major → token grid ``(B, rows, S / rows)``.

    The inverse of :func:`grid_to_sequence`; ``S`` must be a multiple of ``rows``.
    """
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise ValueError(f"rows must be a positive int, got {rows!r}")
    if isinstance(seq, Tensor) and seq.dim() == 3 and seq.shape[1] == 1:
        seq = seq[:, 0]
    if not isinstance(seq, Tensor) or seq.dim() != 2:
        raise ValueError(f"sequence_to_grid expects a sequence (B, 1, S) or (B, S), got "
                         f"{tuple(seq.shape) if isinstance(seq, Tensor) else type(seq).__name__}")
    b, s = seq.shape
    if s % rows:
        raise ValueError(f"a sequence of {s} tokens is not a whole number of {rows}-token columns")
    return seq.reshape(b, s // rows, rows).transpose(1, 2).contiguous()


# ---- loading by name or folder ---------------------------------------------------------------------------------


def load_vqvae(spec: str | os.PathLike | MelVQVAE = "mel_vqvae_course") -> MelVQVAE:
    """The :class:`MelVQVAE` named ``spec``: a shipped model (``"mel_vqvae_course"``, ``"pretrained:NAME"``) or a
    folder written by :meth:`MelVQVAE.save_pretrained`; eval mode, on the CPU."""
    return _load_model(spec, MelVQVAE, "vqvae")


def _saved_folder(text: str) -> Path | None:
    """``text`` as an existing folder (not a ``"pretrained:NAME"``), else None."""
    folder = Path(text).expanduser()
    return folder if text and not text.startswith(PRETRAINED_PREFIX) and folder.is_dir() else None


def _folder_config(folder: Path, what: str, writers: str) -> dict:
    """The ``config.json`` of a saved model folder, which tells apart the classes that may have written it."""
    config = folder / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{what} folder {folder} has no config.json: pass a folder written by {writers}")
    return json.loads(config.read_text())


def load_decoder(spec: str | os.PathLike | nn.Module = "diffsound_course") -> DiffsoundModel | AudioLM:
    """The token decoder named ``spec``: a :class:`DiffsoundModel` or an AR-baseline :class:`AudioLM`, shipped
    (a name, or ``"pretrained:NAME"``) or a folder written by either class's ``save_pretrained`` (told apart by
    its ``config.json``: an AudioLM config has ``n_q``); eval mode, on the CPU."""
    if isinstance(spec, (DiffsoundModel, AudioLM)):
        return spec
    if isinstance(spec, nn.Module):
        raise TypeError(f"decoder: expected a DiffsoundModel or an AudioLM, got a {type(spec).__name__}")
    text = str(spec).strip() if isinstance(spec, (str, os.PathLike)) else ""
    folder = _saved_folder(text)
    if folder is not None:
        config = _folder_config(folder, "decoder", "DiffsoundModel.save_pretrained or AudioLM.save_pretrained")
        return _load_model(folder, AudioLM if "n_q" in config else DiffsoundModel, "decoder")
    from course_lib import pretrained

    name = text[len(PRETRAINED_PREFIX):] if text.startswith(PRETRAINED_PREFIX) else text
    if name in pretrained._REGISTRY:
        model = pretrained.load(name)
        if not isinstance(model, (DiffsoundModel, AudioLM)):
            raise TypeError(f"decoder {text!r} is a {type(model).__name__}, not a DiffsoundModel or an AudioLM")
        return model.eval()
    return _load_model(spec, DiffsoundModel, "decoder")  # raises the "neither a folder nor shipped" error


#: Reverse steps of the pipeline's Diffsound sampler when none are given: strided through the closed forms
#: (VQ-Diffusion's fast sampling). Lesson 06 measures steps against time and adherence: 25 keep the probes'
#: adherence of 100 at a quarter of the time, so a 5-second clip from text takes a few seconds on one thread.
DEFAULT_STEPS = 25


def load_vocoder(spec: str | os.PathLike | nn.Module = GRIFFIN_LIM, mel_config=None,
                 griffin_lim_iters: int = 32) -> nn.Module:
    """A vocoder: ``"griffin_lim"`` (:class:`GriffinLimVocoder` on ``mel_config``, ``griffin_lim_iters``
    iterations; no weights), a shipped vocoder's name (``"vocos_course"``, ``"melgan_course"``), a folder written
    by :meth:`Vocos.save_pretrained` or :meth:`MelGAN.save_pretrained` (told apart by its ``config.json``), or a
    vocoder object (returned as is)."""
    if isinstance(spec, nn.Module):
        return spec
    if isinstance(spec, str) and spec.strip() == GRIFFIN_LIM:
        return GriffinLimVocoder(mel_config, n_iter=griffin_lim_iters)
    text = str(spec).strip() if isinstance(spec, (str, os.PathLike)) else ""
    folder = _saved_folder(text)
    if folder is not None:
        config = _folder_config(folder, "vocoder", "Vocos.save_pretrained or MelGAN.save_pretrained")
        return _load_model(folder, Vocos if "phase_advance" in config else MelGAN, "vocoder")
    from course_lib import pretrained

    name = text[len(PRETRAINED_PREFIX):] if text.startswith(PRETRAINED_PREFIX) else text
    if name in pretrained._REGISTRY and pretrained._REGISTRY[name][0].endswith(":Vocos"):
        return _load_model(spec, Vocos, "vocoder")
    return _load_model(spec, MelGAN, "vocoder")


#: The mel VQ-VAE and text encoder each shipped token decoder was trained with: what
#: :meth:`DiffsoundPipeline.from_pretrained` loads beside it unless told otherwise. A decoder with another
#: tokenizer of the same size, or another 128-d text encoder, would run and produce noise, so the pairing is
#: recorded here rather than left to the caller.
DECODER_TOOLS: dict[str, tuple[str, str]] = {
    "diffsound_course": ("mel_vqvae_course", "course"),
    "diffsound_ar_course": ("mel_vqvae_course", "course"),
    "diffsound_v2": ("mel_vqvae_v2", "course:text_encoder_v2"),
    "diffsound_ar_v2": ("mel_vqvae_v2", "course:text_encoder_v2"),
}


def _same_front_end(a, b) -> bool:
    keys = ("sample_rate", "n_fft", "hop_length", "n_mels", "f_min", "f_max")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


# ---- the pipeline ------------------------------------------------------------------------------------------------


class DiffsoundPipeline:
    """Text-to-sound with Diffsound's stages: ``prompts`` (``B`` captions) → audio ``(B, 1, T)`` float32.

    Holds a frozen ``decoder`` (a :class:`DiffsoundModel`, or an :class:`AudioLM` AR baseline with ``n_q = 1``
    over the time-major grid), the :class:`MelVQVAE` whose tokens it models, a ``vocoder`` (:class:`MelGAN` or
    :class:`GriffinLimVocoder`: log-mel ``(B, n_mels, frames)`` → ``(B, 1, frames · hop)``) and a frozen
    ``text_encoder``. They must agree (codebook size, grid rows, text width, mel front end), else a
    ``ValueError`` names the mismatch. :meth:`generate` (also ``__call__``) returns ``seconds`` of audio;
    :meth:`generate_tokens`, :meth:`tokens_to_mel` and :meth:`vocode` are its three stages; :meth:`tokenize`
    runs the VQ-VAE encoder on real audio (the forward process's starting point).
    """

    def __init__(self, decoder: DiffsoundModel | AudioLM, vqvae: MelVQVAE, vocoder: nn.Module,
                 text_encoder: TextEncoder) -> None:
        if not isinstance(decoder, (DiffsoundModel, AudioLM)):
            raise TypeError(f"DiffsoundPipeline: decoder must be a DiffsoundModel or an AudioLM (the AR baseline), "
                            f"got {type(decoder).__name__}")
        for obj, cls, name in ((vqvae, MelVQVAE, "vqvae"), (text_encoder, TextEncoder, "text_encoder")):
            if not isinstance(obj, cls):
                raise TypeError(f"DiffsoundPipeline: {name} must be a {cls.__name__}, got {type(obj).__name__}")
        if not isinstance(vocoder, Vocoder):
            raise TypeError(f"DiffsoundPipeline: vocoder must map a log-mel to audio (a MelGAN or a "
                            f"GriffinLimVocoder, with mel_config and hop_length), got {type(vocoder).__name__}")
        vc = vqvae.config
        rows = vqvae.token_grid_shape(1)[0]
        dc = decoder.config
        if dc.codebook_size != vc.codebook_size:
            raise ValueError(f"the decoder models {dc.codebook_size} codes but the VQ-VAE has {vc.codebook_size}: "
                             f"use the VQ-VAE the decoder was trained on")
        if isinstance(decoder, AudioLM):
            if dc.n_q != 1:
                raise ValueError(f"an AR-baseline AudioLM must have n_q=1 (one time-major token stream), got "
                                 f"n_q={dc.n_q}")
        elif dc.grid_rows != rows:
            raise ValueError(f"the decoder generates {dc.grid_rows}-row grids but the VQ-VAE's grid has {rows} rows "
                             f"(n_mels={vc.n_mels} / {vc.downsample_factor})")
        if dc.text_dim != text_encoder.dim:
            raise ValueError(f"the decoder was trained on {dc.text_dim}-d text embeddings but the text encoder gives "
                             f"{text_encoder.dim}-d ones: use the text encoder the decoder was trained with")
        if not _same_front_end(vocoder.mel_config, vc.mel_config()):
            raise ValueError(f"the vocoder reads another mel front end ({vocoder.mel_config}) than the VQ-VAE "
                             f"makes ({vc.mel_config()}): use a vocoder trained on the VQ-VAE's mel")
        self.decoder, self.vqvae, self.vocoder, self.text_encoder = decoder, vqvae, vocoder, text_encoder

    @classmethod
    def from_pretrained(cls, decoder: str | os.PathLike = "diffsound_course", vqvae: str | os.PathLike | None = None,
                        vocoder: str | os.PathLike = GRIFFIN_LIM, text_encoder: str | os.PathLike | None = None,
                        device: str | torch.device = "cpu", griffin_lim_iters: int = 32) -> DiffsoundPipeline:
        """Load the four parts by name (shipped models) or folder (see the module docstring), on ``device``;
        ``vocoder="griffin_lim"`` uses Griffin-Lim (``griffin_lim_iters`` iterations) on the VQ-VAE's mel.
        ``vqvae`` and ``text_encoder`` default to those the shipped ``decoder`` was trained with
        (:data:`DECODER_TOOLS`; ``mel_vqvae_course`` and the course encoder for any other decoder)."""
        name = str(decoder).strip() if isinstance(decoder, (str, os.PathLike)) else ""
        name = name[len(PRETRAINED_PREFIX):] if name.startswith(PRETRAINED_PREFIX) else name
        default_vqvae, default_text = DECODER_TOOLS.get(name, DECODER_TOOLS["diffsound_course"])
        vq = load_vqvae(vqvae if vqvae is not None else default_vqvae)
        voc = load_vocoder(vocoder, vq.config.mel_config(), griffin_lim_iters)
        text = load_text(text_encoder if text_encoder is not None else default_text)
        return cls(load_decoder(decoder), vq, voc, text).to(device)

    def to(self, device: str | torch.device) -> DiffsoundPipeline:
        """Move the four models to ``device``; returns self."""
        for m in (self.decoder, self.vqvae, self.vocoder, self.text_encoder):
            m.to(device)
        return self

    # ---- arithmetic ------------------------------------------------------------------------------------------------

    @property
    def is_autoregressive(self) -> bool:
        """True when the decoder is the AR baseline (an :class:`AudioLM`)."""
        return isinstance(self.decoder, AudioLM)

    @property
    def device(self) -> torch.device:
        """The decoder's device (where generation runs)."""
        return next(self.decoder.parameters()).device

    @property
    def sample_rate(self) -> int:
        """Output sample rate in Hz (the VQ-VAE's mel front end's)."""
        return self.vqvae.config.sample_rate

    @property
    def grid_rows(self) -> int:
        """Token rows H of the VQ-VAE's grid (``ceil(n_mels / downsample_factor)``)."""
        return self.vqvae.token_grid_shape(1)[0]

    @property
    def max_cols(self) -> int:
        """The widest grid the decoder generates: ``max_cols`` (Diffsound) or ``max_len // H`` (AR baseline)."""
        if self.is_autoregressive:
            return self.decoder.config.max_len // self.grid_rows
        return self.decoder.config.max_cols

    @property
    def max_seconds(self) -> float:
        """The longest clip the decoder can generate, in seconds (``max_cols`` columns of mel frames)."""
        vc = self.vqvae.config  # frames = 1 + T // hop <= max_cols · f  ⇔  T <= max_cols · f · hop − 1
        return (self.max_cols * vc.downsample_factor * vc.hop_length - 1) / self.sample_rate

    def num_samples(self, seconds: float) -> int:
        """Samples ``T = round(seconds · sample_rate)`` of a clip ``seconds`` long."""
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
            raise ValueError(f"seconds must be a positive number, got {seconds!r}")
        return max(1, round(seconds * self.sample_rate))

    def num_frames(self, seconds: float) -> int:
        """Mel frames of a clip ``seconds`` long: ``1 + T // hop_length`` (a centred STFT)."""
        return 1 + self.num_samples(seconds) // self.vqvae.config.hop_length

    def num_cols(self, seconds: float) -> int:
        """Token columns W of a clip ``seconds`` long: ``ceil(num_frames / downsample_factor)``."""
        return math.ceil(self.num_frames(seconds) / self.vqvae.config.downsample_factor)

    # ---- pieces --------------------------------------------------------------------------------------------------

    def encode_text(self, prompts: Sequence[str]) -> TextEmbedding:
        """Captions → :class:`~course_lib.text.TextEmbedding` on the decoder's device (``""`` = no condition);
        a :class:`~course_lib.text.PromptWarning` for each prompt the text encoder cannot read as written (empty,
        too long, mostly unknown words: :func:`course_lib.text.prompt_report`)."""
        return encode_prompts(self.text_encoder, prompts, self.device)

    def tokenize(self, audio: Tensor | np.ndarray, sample_rate: int | None = None) -> Tensor:
        """Real audio → its VQ-VAE token grid ``(B, H, W)`` (long), ``W = ceil((1 + T // hop) / f)``.

        ``audio``: float samples at the VQ-VAE's rate, ``(T,)``, ``(B, T)`` or ``(B, 1, T)``; ``sample_rate``
        (Hz), when given, must be the VQ-VAE's. This is ``x_0`` of the forward (corruption) process.
        """
        if sample_rate is not None and int(sample_rate) != self.sample_rate:
            raise ValueError(f"audio is at {sample_rate} Hz but the VQ-VAE runs at {self.sample_rate} Hz; resample "
                             f"it first (course_lib.audio.resample)")
        if isinstance(audio, np.ndarray):
            audio = torch.from_numpy(audio)
        if not isinstance(audio, Tensor) or not audio.is_floating_point():
            got = f"dtype {audio.dtype}" if isinstance(audio, Tensor) else type(audio).__name__
            raise TypeError(f"audio must be float samples in [-1, 1] (a tensor or NumPy array), got {got}")
        if audio.dim() == 3 and audio.shape[1] != 1 or audio.dim() not in (1, 2, 3):
            raise ValueError(f"audio must be mono, (T,), (B, T) or (B, 1, T), got shape {tuple(audio.shape)}")
        hop = self.vqvae.config.hop_length
        if audio.shape[-1] < self.vqvae.config.n_fft // 2 + 1:
            raise ValueError(f"audio has {audio.shape[-1]} samples; the mel front end needs at least "
                             f"{self.vqvae.config.n_fft // 2 + 1} (n_fft={self.vqvae.config.n_fft}, hop={hop})")
        with _eval_mode(self.vqvae):
            return self.vqvae.encode(self.vqvae.features(audio.float().to(self.device)))

    def tokens_to_mel(self, tokens: Tensor, seconds: float | None = None) -> Tensor:
        """Token grid ``(B, H, W)`` → log-mel ``(B, n_mels, frames)`` by the VQ-VAE decoder, ``frames =
        num_frames(seconds)`` if given (at most ``W · f``), else ``W · f``."""
        if not isinstance(tokens, Tensor) or tokens.dim() != 3 or tokens.is_floating_point():
            got = f"{tuple(tokens.shape)} {tokens.dtype}" if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(f"tokens must be an integer grid (B, H={self.grid_rows}, W), got {got}")
        size = self.vqvae.config.codebook_size
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= size):
            raise ValueError(f"tokens must be codes in [0, {size - 1}], got values in "
                             f"[{int(tokens.min())}, {int(tokens.max())}] (a [MASK] left?)")
        frames = None
        if seconds is not None:
            frames = self.num_frames(seconds)
            if frames > tokens.shape[-1] * self.vqvae.config.downsample_factor:
                raise ValueError(f"seconds={seconds} is {frames} mel frames, more than a {tokens.shape[-1]}-column "
                                 f"grid decodes to ({tokens.shape[-1] * self.vqvae.config.downsample_factor})")
        with _eval_mode(self.vqvae):
            return self.vqvae.decode(tokens.long().to(self.device), frames)

    def vocode(self, log_mel: Tensor) -> Tensor:
        """Log-mel ``(B, n_mels, frames)`` → audio ``(B, 1, frames · hop)`` float32 in [-1, 1] with the vocoder."""
        with _eval_mode(self.vocoder):
            return self.vocoder(log_mel.float().to(self.device)).float().clamp(-1.0, 1.0)

    # ---- generation ------------------------------------------------------------------------------------------------

    def generate_tokens(self, prompts: Sequence[str], seconds: float = 2.0, steps: int | None = None,
                        cfg_scale: float = 3.0, truncation: float | None = 0.86, temperature: float = 1.0,
                        top_k: int | None = None, seed: int = 0) -> Tensor:
        """Sample token grids ``(B, H, W)`` (long), ``W = num_cols(seconds)``, for ``B`` captions.

        Diffsound: :meth:`DiffsoundModel.generate` from an all-[MASK] grid in ``steps`` reverse steps (``None``:
        :data:`DEFAULT_STEPS`, 25 strided steps (or T if smaller), the course's default since lesson 06 measured that more steps
        buy no adherence at several times the cost; ``steps=pipe.decoder.num_steps`` takes all of the model's T as
        Diffsound did), CFG ``cfg_scale`` (1 = none; 3 as the course's other decoders), ``truncation`` r (keep
        the top-r probability mass of each token's ``p(x_0 | x_t)``; VQ-Diffusion's 0.86; None = off),
        ``temperature``. AR baseline: ``H·W`` steps of
        :func:`course_lib.lm.generate` (KV cache) with the same ``cfg_scale`` and ``temperature``,
        ``truncation`` as its top-p (the same rule: keep the top-r mass), and ``top_k`` (AR only; ``steps``
        must be None). ``seed`` makes the draws reproducible.
        """
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        if truncation is not None and (isinstance(truncation, bool) or not isinstance(truncation, (int, float))
                                       or not 0.0 < truncation <= 1.0):
            raise ValueError(f"truncation must be a probability mass in (0, 1] or None, got {truncation!r}")
        cols = self.num_cols(seconds)
        if cols > self.max_cols:
            raise ValueError(f"seconds={seconds} needs {cols} token columns, more than this decoder generates "
                             f"({self.max_cols}): at most {self.max_seconds:.3g} s")
        text = self.encode_text(prompts)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        if self.is_autoregressive:
            if steps is not None:
                raise ValueError(f"steps={steps}: the AR baseline always takes one step per token "
                                 f"({self.grid_rows * cols} here); steps is for the Diffsound decoder")
            seq = lm_generate(self.decoder, text.embeddings, text.mask, self.grid_rows * cols,
                              temperature=temperature, top_k=top_k, top_p=truncation, cfg_scale=cfg_scale,
                              generator=generator)
            return sequence_to_grid(seq, self.grid_rows)
        if top_k is not None:
            raise ValueError(f"top_k={top_k}: the Diffsound decoder truncates by probability mass; use "
                             f"truncation=r (top_k is for the AR baseline)")
        with _eval_mode(self.decoder):
            steps = min(DEFAULT_STEPS, self.decoder.num_steps) if steps is None else steps
            return self.decoder.generate(text.embeddings, text.mask, cols, steps=steps, cfg_scale=cfg_scale,
                                         truncation=truncation, temperature=temperature, generator=generator)

    def generate(self, prompts: Sequence[str], seconds: float = 2.0, steps: int | None = None, cfg_scale: float = 3.0,
                 truncation: float | None = 0.86, temperature: float = 1.0, top_k: int | None = None,
                 seed: int = 0) -> Tensor:
        """Generate ``seconds`` of audio per caption: ``prompts`` (``B`` str) → ``(B, 1, T)`` float32 in [-1, 1]
        at :attr:`sample_rate`, ``T = round(seconds · sample_rate)``. Arguments as :meth:`generate_tokens`;
        raises ``ValueError``/``TypeError`` for an empty prompt list, a non-positive or too long ``seconds``,
        or a sampling argument the decoder does not take."""
        tokens = self.generate_tokens(prompts, seconds, steps, cfg_scale, truncation, temperature, top_k, seed)
        return self.vocode(self.tokens_to_mel(tokens, seconds))[..., : self.num_samples(seconds)]

    __call__ = generate

    def time_generation(self, prompts: Sequence[str], seconds: float = 2.0, **kwargs) -> tuple[Tensor, float]:
        """:meth:`generate_tokens` and its wall-clock time in seconds (the token decoder only: the VQ-VAE and the
        vocoder are the same for both decoders)."""
        start = time.perf_counter()
        tokens = self.generate_tokens(prompts, seconds, **kwargs)
        return tokens, time.perf_counter() - start
