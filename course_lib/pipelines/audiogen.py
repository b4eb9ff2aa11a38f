"""AudioGen end to end: captions → frozen text encoder → LM samples codec tokens → codec decoder → audio.

Kreuk et al. 2023 ("AudioGen: Textually Guided Audio Generation") generate a sound from a caption ``y`` in
two stages: a language model samples the codes ``c ~ p(c | y)`` of a residual codec autoregressively
(:func:`course_lib.lm.generate`: classifier-free guidance ``uncond + s·(cond − uncond)``, top-k / top-p,
a KV cache), and the codec's decoder turns the codes ``(B, K, F)`` into a waveform ``(B, 1, F · hop)``.
:class:`AudioGenPipeline` holds the three frozen pieces and does both, plus *audio continuation*
(AudioGen §4.4): a prompt clip is encoded by the codec, its codes are kept verbatim, and the LM continues
after them.

Loading by name or folder (:meth:`AudioGenPipeline.from_pretrained`, :func:`load_lm`, :func:`load_codec`):
a name of a shipped model (``"codec_course"``, or with the prefix ``"pretrained:codec_course"``) loads it
from ``course_lib/pretrained``; anything else is a folder written by the model's ``save_pretrained``. The
text encoder is a :func:`course_lib.text.load_text_encoder` spec (``"course"``, ``"t5:PATH"``, ...) or a
folder holding a saved course encoder. Nothing is downloaded unless a ``t5:``/``clip:``/``bert:`` spec
names a hub model.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from course_lib.codecs.codec import Codec
from course_lib.lm.model import AudioLM
from course_lib.lm.sampling import generate
from course_lib.text import load_text_encoder
from course_lib.text.base import TextEmbedding, TextEncoder
from course_lib.text.prompts import encode_prompts

__all__ = ["AudioGenPipeline", "load_codec", "load_lm", "load_text"]

PRETRAINED_PREFIX = "pretrained:"


def _load_model(spec: str | os.PathLike, cls: type[nn.Module], what: str) -> nn.Module:
    """A ``cls`` from a folder (``cls.from_pretrained``) or from a shipped model's name; eval mode."""
    from course_lib import pretrained

    if isinstance(spec, cls):
        return spec
    if not isinstance(spec, (str, os.PathLike)) or not str(spec).strip():
        raise TypeError(f"{what}: expected a shipped model's name or a folder, got {spec!r}")
    text = str(spec).strip()
    name = text[len(PRETRAINED_PREFIX):] if text.startswith(PRETRAINED_PREFIX) else None
    if name is None and Path(text).expanduser().is_dir():
        return cls.from_pretrained(Path(text).expanduser()).eval()
    name = name if name is not None else text
    if name not in pretrained._REGISTRY:
        raise FileNotFoundError(f"{what} {text!r} is neither a folder nor a shipped model; shipped models: "
                                f"{pretrained.available()}, or pass a folder written by "
                                f"{cls.__name__}.save_pretrained")
    model = pretrained.load(name)  # a clear FileNotFoundError if its weights are not in this checkout
    if not isinstance(model, cls):
        raise TypeError(f"{what} {text!r} is a {type(model).__name__}, not a {cls.__name__}")
    return model.eval()


def load_lm(spec: str | os.PathLike = "audiogen_course") -> AudioLM:
    """The :class:`AudioLM` named ``spec``: a shipped model (``"audiogen_course"``, ``"pretrained:NAME"``) or a
    folder written by :meth:`AudioLM.save_pretrained`; eval mode, on the CPU."""
    return _load_model(spec, AudioLM, "lm")


def load_codec(spec: str | os.PathLike = "codec_course") -> Codec:
    """The :class:`Codec` named ``spec``: a shipped model (``"codec_course"``, ``"pretrained:NAME"``) or a folder
    written by :meth:`Codec.save_pretrained`; eval mode, on the CPU. (A training run's folder is read by the
    ``audiogen`` training family, which may import the engine; this module may not.)"""
    return _load_model(spec, Codec, "codec")


def load_text(spec: str | os.PathLike = "course") -> TextEncoder:
    """A frozen text encoder: a :func:`course_lib.text.load_text_encoder` spec (``"course"``,
    ``"course:FOLDER"``, ``"t5:NAME_OR_PATH"``, ...) or the folder of a saved course encoder."""
    if isinstance(spec, TextEncoder):
        return spec
    text = str(spec).strip() if isinstance(spec, (str, os.PathLike)) else spec
    if isinstance(text, str) and ":" not in text and text != "course" and Path(text).expanduser().is_dir():
        text = f"course:{Path(text).expanduser()}"
    return load_text_encoder(text)


@contextmanager
def _eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put ``modules`` in eval mode and gradients off for the block, then restore their modes."""
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


class AudioGenPipeline:
    """Text-to-audio with AudioGen's two stages: ``prompts`` (``B`` captions) → audio ``(B, 1, T)`` float32.

    Holds a frozen ``text_encoder`` (captions → ``(B, L, D)`` embeddings + mask), an :class:`AudioLM` over the
    codec's ``K`` codebooks and the :class:`Codec` whose tokens it models; they must agree (``lm.config.n_q``
    and ``codebook_size`` equal the codec's, ``lm.config.text_dim`` equals ``text_encoder.dim``), else a
    ``ValueError`` names the mismatch. :meth:`generate` (also ``__call__``) samples ``seconds`` of audio at
    ``sample_rate`` Hz (``T = round(seconds · sample_rate)``), optionally continuing ``prompt_audio``;
    :meth:`generate_codes` stops at the codes ``(B, K, F)``, ``F = ceil(seconds · frame_rate)``.
    """

    def __init__(self, lm: AudioLM, codec: Codec, text_encoder: TextEncoder) -> None:
        for obj, cls, name in ((lm, AudioLM, "lm"), (codec, Codec, "codec"), (text_encoder, TextEncoder,
                                                                                 "text_encoder")):
            if not isinstance(obj, cls):
                raise TypeError(f"AudioGenPipeline: {name} must be a {cls.__name__}, got {type(obj).__name__}")
        lc, cc = lm.config, codec.config
        if (lc.n_q, lc.codebook_size) != (cc.n_q, cc.codebook_size):
            raise ValueError(f"the LM models {lc.n_q} codebooks x {lc.codebook_size} entries but the codec has "
                             f"{cc.n_q} x {cc.codebook_size}: use the codec the LM was trained on")
        if lc.text_dim != text_encoder.dim:
            raise ValueError(f"the LM was trained on {lc.text_dim}-d text embeddings but the text encoder gives "
                             f"{text_encoder.dim}-d ones: use the text encoder the LM was trained with")
        self.lm, self.codec, self.text_encoder = lm, codec, text_encoder

    @classmethod
    def from_pretrained(cls, lm: str | os.PathLike = "audiogen_course", codec: str | os.PathLike = "codec_course",
                        text_encoder: str | os.PathLike = "course",
                        device: str | torch.device = "cpu") -> AudioGenPipeline:
        """Load the three parts by name (shipped models) or folder (see the module docstring), on ``device``."""
        return cls(load_lm(lm), load_codec(codec), load_text(text_encoder)).to(device)

    def to(self, device: str | torch.device) -> AudioGenPipeline:
        """Move the three models to ``device``; returns self."""
        self.lm.to(device)
        self.codec.to(device)
        self.text_encoder.to(device)
        return self

    # ---- arithmetic ----------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        """The LM's device (where generation runs)."""
        return next(self.lm.parameters()).device

    @property
    def sample_rate(self) -> int:
        """Output sample rate in Hz (the codec's)."""
        return self.codec.sample_rate

    @property
    def frame_rate(self) -> float:
        """Codec frames (LM steps of the parallel/delay patterns) per second."""
        return self.codec.frame_rate

    def num_frames(self, seconds: float) -> int:
        """Codec frames that cover ``seconds``: ``ceil(seconds · sample_rate / hop_length)``."""
        return max(1, math.ceil(round(seconds * self.sample_rate) / self.codec.hop_length))

    @property
    def max_seconds(self) -> float:
        """The longest clip the LM can generate: the most frames whose pattern fits ``lm.config.max_len``."""
        frames = 1
        while self.lm.pattern.seq_len(frames + 1) <= self.lm.config.max_len:
            frames += 1
        return frames * self.codec.hop_length / self.sample_rate

    # ---- pieces ---------------------------------------------------------------------------------------------

    def encode_text(self, prompts: Sequence[str]) -> TextEmbedding:
        """Captions → :class:`~course_lib.text.TextEmbedding` on the LM's device (``""`` = no condition);
        a :class:`~course_lib.text.PromptWarning` for each prompt the text encoder cannot read as written (empty,
        too long, mostly unknown words: :func:`course_lib.text.prompt_report`)."""
        return encode_prompts(self.text_encoder, prompts, self.device)

    def encode_prompt(self, prompt_audio: Tensor | np.ndarray, batch: int, sample_rate: int | None = None) -> Tensor:
        """Prompt audio → its codes ``(batch, K, P)``, ``P = floor(samples / hop_length)`` whole frames.

        ``prompt_audio`` is float audio at the codec's rate: one clip ``(T,)`` or ``(1, T)`` used for every
        prompt, or one per prompt ``(batch, 1, T)``. ``sample_rate`` (Hz), when given, must be the codec's.
        """
        rate = self.sample_rate
        if sample_rate is not None and int(sample_rate) != rate:
            raise ValueError(f"prompt_audio is at {sample_rate} Hz but the codec runs at {rate} Hz; resample it "
                             f"first (course_lib.audio.resample)")
        if isinstance(prompt_audio, np.ndarray):
            prompt_audio = torch.from_numpy(prompt_audio)
        if not isinstance(prompt_audio, Tensor) or not prompt_audio.is_floating_point():
            got = f"dtype {prompt_audio.dtype}" if isinstance(prompt_audio, Tensor) else type(prompt_audio).__name__
            raise TypeError(f"prompt_audio must be float audio in [-1, 1] (a tensor or NumPy array), got {got}")
        wav = prompt_audio.float()
        if wav.dim() == 1:
            wav = wav[None, None]
        elif wav.dim() == 2 and wav.shape[0] == 1:
            wav = wav[None]
        if wav.dim() != 3 or wav.shape[1] != 1 or wav.shape[0] not in (1, batch):
            raise ValueError(f"prompt_audio must be one mono clip (T,) or (1, T), or one per prompt ({batch}, 1, T), "
                             f"at {rate} Hz; got shape {tuple(prompt_audio.shape)}")
        frames = wav.shape[-1] // self.codec.hop_length
        if frames == 0:
            raise ValueError(f"prompt_audio has {wav.shape[-1]} samples, less than one codec frame "
                             f"({self.codec.hop_length} samples = {1000 / self.frame_rate:g} ms)")
        wav = wav[..., : frames * self.codec.hop_length].expand(batch, 1, -1).to(self.device)
        with _eval_mode(self.codec):
            return self.codec.encode(wav)

    # ---- generation -------------------------------------------------------------------------------------------

    def generate_codes(self, prompts: Sequence[str], seconds: float = 2.0, cfg_scale: float = 3.0,
                       temperature: float = 1.0, top_k: int | None = 250, top_p: float | None = 0.0, seed: int = 0,
                       prompt_audio: Tensor | np.ndarray | None = None, prompt_sample_rate: int | None = None,
                       use_cache: bool = True) -> Tensor:
        """Sample codes ``(B, K, F)`` (long), ``F = ceil(seconds · frame_rate)``, for ``B`` captions.

        Arguments as :meth:`generate`. With ``prompt_audio``, the first ``P`` frames are the prompt's own codes
        (kept verbatim) and the LM continues after them.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
            raise ValueError(f"seconds must be a positive number, got {seconds!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        text = self.encode_text(prompts)
        frames = self.num_frames(seconds)
        if self.lm.pattern.seq_len(frames) > self.lm.config.max_len:
            raise ValueError(f"seconds={seconds} needs {frames} codec frames, more than this LM generates "
                             f"(max_len={self.lm.config.max_len} steps): at most {self.max_seconds:g} s")
        prompt_codes = None
        if prompt_audio is not None:
            prompt_codes = self.encode_prompt(prompt_audio, len(text), prompt_sample_rate)
            if prompt_codes.shape[2] >= frames:
                raise ValueError(f"prompt_audio covers {prompt_codes.shape[2]} frames "
                                 f"({prompt_codes.shape[2] / self.frame_rate:g} s) but seconds={seconds} is only "
                                 f"{frames} frames: the total length must be longer than the prompt")
        generator = torch.Generator(device=self.device).manual_seed(seed)
        return generate(self.lm, text.embeddings, text.mask, frames, temperature=temperature, top_k=top_k,
                        top_p=top_p, cfg_scale=cfg_scale, prompt_codes=prompt_codes, use_cache=use_cache,
                        generator=generator)

    def decode(self, codes: Tensor, seconds: float | None = None) -> Tensor:
        """Codes ``(B, K, F)`` → audio ``(B, 1, T)`` float32 in [-1, 1] (clamped), cropped to ``seconds`` if
        given (``T = round(seconds · sample_rate)``), else ``F · hop_length`` samples."""
        with _eval_mode(self.codec):
            audio = self.codec.decode(codes.to(self.device)).float().clamp(-1.0, 1.0)
        return audio if seconds is None else audio[..., : round(seconds * self.sample_rate)]

    def generate(self, prompts: Sequence[str], seconds: float = 2.0, cfg_scale: float = 3.0, temperature: float = 1.0,
                 top_k: int | None = 250, top_p: float | None = 0.0, seed: int = 0,
                 prompt_audio: Tensor | np.ndarray | None = None, prompt_sample_rate: int | None = None,
                 use_cache: bool = True) -> Tensor:
        """Generate ``seconds`` of audio per caption: ``prompts`` (``B`` str) → ``(B, 1, T)`` float32 at
        :attr:`sample_rate`, ``T = round(seconds · sample_rate)``.

        Sampling (AudioGen / audiocraft defaults): ``cfg_scale`` (3; 1 = no guidance), ``temperature`` (1),
        ``top_k`` (250; 0/None = off), ``top_p`` (0 = off); ``seed`` makes the draws reproducible; ``use_cache``
        (the KV cache: same tokens, faster). ``prompt_audio`` (one clip ``(T,)``/``(1, T)`` for all captions or
        ``(B, 1, T)``, at the codec's rate; ``prompt_sample_rate`` is checked when given) is continued: its
        whole frames are encoded and kept, the rest is generated. Raises ``ValueError``/``TypeError`` for an
        empty prompt list, a length beyond the LM's ``max_len``, or prompt audio of the wrong shape or rate.
        """
        codes = self.generate_codes(prompts, seconds, cfg_scale, temperature, top_k, top_p, seed, prompt_audio,
                                    prompt_sample_rate, use_cache)
        return self.decode(codes, seconds)

    __call__ = generate
