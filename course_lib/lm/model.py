"""AudioGen's stage 2: a decoder-only transformer over codec tokens, conditioned on text by cross-attention.

Kreuk et al. 2023 ("AudioGen: Textually Guided Audio Generation") model the codes ``c`` of a residual
codec (``(B, K, T)``: K codebooks, T frames) autoregressively given a caption ``y``. A codebook pattern
(:mod:`course_lib.lm.patterns`) lays the codes out as ``S`` steps of K tokens, and the model factorises::

    p(c | y) = Π_s p(c[:, s] | c[:, <s], y),        c[:, s] = the K tokens at step s (padding excluded)

Architecture (audiocraft's ``LMModel``): at each step the K token embeddings (one table per codebook,
``codebook_size + 1`` entries: the extra id ``special_id = codebook_size`` marks padding and the start of
the sequence) are **summed**, positions are added (sinusoidal or learned), a causal pre-norm
:class:`~course_lib.nn.transformer.Transformer` with cross-attention to the text embeddings ``(B, L,
text_dim)`` in every block runs, and K linear heads give logits ``(B, K, S, codebook_size)``.

Input/target convention: the model's input at step ``s`` is the pattern sequence at step ``s − 1`` (a
column of ``special_id`` at ``s = 0``), and ``logits[:, k, s]`` predicts the token of codebook k at pattern
step ``s``. :meth:`AudioLM.loss` builds that shift, so callers pass plain codes ``(B, K, T)``; generation is
in :mod:`course_lib.lm.sampling`. Text conditioning uses the course's null condition: a text mask row of
all False means "no text" (exact zero cross-attention; see :mod:`course_lib.nn.guidance`), which is what
classifier-free guidance drops to during training and feeds as the unconditional branch when sampling.

Options for other checkpoints (all off by default, so the course's own models and saved ``config.json``
files are unchanged): ``positional="sinusoidal_t2t"`` (frequencies ``10000^(−i/(half−1))``, MusicGen's),
``activation`` (the MLP's non-linearity), ``linear_bias=False`` (MusicGen's bias-free linears) and
``layerdrop`` (skip whole blocks at random while training). :mod:`course_lib.lm.musicgen_hf` uses them to
load Hugging Face ``transformers`` MusicGen weights into this class with the same logits.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course_lib.lm.patterns import PATTERNS, Pattern, make_pattern
from course_lib.nn.saving import CONFIG_FILE, WEIGHTS_FILE, load_pretrained, save_pretrained  # noqa: F401 (re-exported)
from course_lib.nn.transformer import Transformer, TransformerCache, sinusoidal_embedding

__all__ = ["AudioLM", "AudioLMConfig", "PAPER_CONFIGS", "ACTIVATIONS", "POSITIONALS", "sinusoidal_embedding_t2t"]

POSITIONALS = ("sinusoidal", "learned", "sinusoidal_t2t")

# The MLP's non-linearity, by name (each a fresh nn.Module; none has parameters, so the choice does not change
# the state dict). "gelu" is the exact (erf) GELU, the course's default and MusicGen's.
ACTIVATIONS: dict[str, type[nn.Module] | functools.partial] = {
    "gelu": nn.GELU,
    "gelu_tanh": functools.partial(nn.GELU, approximate="tanh"),
    "relu": nn.ReLU,
    "silu": nn.SiLU,
}


def sinusoidal_embedding_t2t(positions: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """tensor2tensor's sinusoidal features of ``positions`` (any shape) → ``(*positions.shape, dim)``.

    ``emb[..., i] = cos(p · ω_i)``, ``emb[..., half + i] = sin(p · ω_i)`` with ``ω_i = max_period^(−i / (half −
    1))``, ``half = dim / 2``: the same layout (cosines first) as
    :func:`course_lib.nn.transformer.sinusoidal_embedding`, whose frequencies are ``max_period^(−i / half)``
    instead. The ``half − 1`` form is what tensor2tensor, audiocraft's ``create_sin_embedding`` and
    ``transformers``' ``MusicgenSinusoidalPositionalEmbedding`` compute; the float operations here are the
    latter's, so the table matches it bit for bit on CPU. ``dim`` must be even and at least 4.
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 4 or dim % 2:
        raise ValueError(f"sinusoidal_embedding_t2t: dim must be an even int >= 4, got {dim!r}")
    half = dim // 2
    step = math.log(max_period) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.int64, device=positions.device).float() * -step)
    args = positions.to(torch.int64).float()[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

# Paper-scale settings, as keyword arguments of AudioLMConfig. Never build these on a laptop.
PAPER_CONFIGS: dict[str, dict] = {
    # audiocraft's released AudioGen (audiogen-medium; code: config/model/lm/audiogen_lm.yaml, docs/AUDIOGEN.md):
    # 1.5 B parameters, 48 layers, width 1536, 24 heads, MLP ×4, sinusoidal positions (audiocraft's
    # create_sin_embedding, frequencies 10000^(-i/(half-1)): "sinusoidal_t2t"); 16 kHz codec with
    # 4 codebooks × 2048 at 50 frames/s; delay pattern [0, 1, 2, 3]; T5-large text (d_model 1024).
    # max_len 512 is chosen here (10 s at 50 frames/s + 3 delay steps = 503 steps).
    # Built with this module's architecture it has 1.76 B parameters (counted on the meta device), not the
    # card's 1.5 B: cross-attention here projects the 1024-wide T5 output inside every block, and
    # audiocraft's exact layer layout was not re-derived; quote the card's number as the card's.
    "audiogen-medium": dict(n_q=4, codebook_size=2048, dim=1536, num_layers=48, num_heads=24, text_dim=1024,
                            max_len=512, dropout=0.0, pattern="delay", mlp_ratio=4.0, positional="sinusoidal_t2t"),
    # The paper's base (285 M) and large (1 B) models: their layer counts are not confirmed in
    # REFERENCE.md, so they are not given here.
}


@dataclass
class AudioLMConfig:
    """Architecture of :class:`AudioLM`. Defaults are a CPU-sized model for the course codec (4 × 256).

    Tokens: ``n_q`` codebooks (K) of ``codebook_size`` entries, laid out by ``pattern`` (``"delay"``,
    ``"parallel"`` or ``"flattening"``). Transformer: ``dim`` width, ``num_layers`` blocks, ``num_heads``
    heads, ``mlp_ratio`` MLP expansion, ``dropout`` (attention and residual branches). Text: ``text_dim``, the
    width of the text encoder's embeddings. Positions: ``positional`` ``"sinusoidal"`` (the course's
    :func:`~course_lib.nn.transformer.sinusoidal_embedding`, frequencies ``10000^(−i/half)``), ``"learned"``,
    or ``"sinusoidal_t2t"`` (:func:`sinusoidal_embedding_t2t`, frequencies ``10000^(−i/(half−1))``, as
    transformers' MusicGen); ``max_len`` is the most pattern steps the model accepts (the size of the learned
    table). ``PAPER_CONFIGS["audiogen-medium"]`` holds the released AudioGen's values (:meth:`paper`).

    Options added for converted checkpoints (:mod:`course_lib.lm.musicgen_hf`); their defaults are the course's
    architecture, and a ``config.json`` saved before they existed loads unchanged:

    * ``activation``: the MLP's non-linearity, a key of :data:`ACTIVATIONS` (``"gelu"``, exact erf GELU).
    * ``linear_bias``: ``False`` removes the bias of every self-attention projection, of the cross-attention's
      query and output projections, of both MLP linears and of the K heads (MusicGen has no bias in any of
      its decoder linears). The cross-attention's **key and value** projections keep theirs: they read the
      text encoder's output directly, and a converted MusicGen stores there its folded text projection
      (``W_k·b_proj``; see :func:`course_lib.lm.musicgen_hf.lm_from_musicgen`).
    * ``layerdrop``: in training mode each block is skipped with this probability (LayerDrop, Fan et al.
      2020; MusicGen's ``layerdrop``); eval mode and KV-cached calls always run every block.
    """

    n_q: int = 4
    codebook_size: int = 256
    dim: int = 256
    num_layers: int = 4
    num_heads: int = 4
    text_dim: int = 256
    max_len: int = 512
    dropout: float = 0.0
    pattern: str = "delay"
    mlp_ratio: float = 4.0
    positional: str = "sinusoidal"
    activation: str = "gelu"
    linear_bias: bool = True
    layerdrop: float = 0.0

    @property
    def special_id(self) -> int:
        """Token id used for padding and the start step (one past the last code): ``codebook_size``."""
        return self.codebook_size

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field that cannot work."""
        for key in ("n_q", "codebook_size", "dim", "num_layers", "num_heads", "text_dim", "max_len"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"AudioLMConfig.{key}: must be a positive int, got {value!r}")
        if self.dim % self.num_heads:
            raise ValueError(f"AudioLMConfig.dim={self.dim} must be divisible by num_heads={self.num_heads}")
        if self.positional == "sinusoidal" and self.dim % 2:
            raise ValueError(f"AudioLMConfig.dim={self.dim} must be even for sinusoidal positions")
        if self.positional == "sinusoidal_t2t" and (self.dim % 2 or self.dim < 4):
            raise ValueError(f"AudioLMConfig.dim={self.dim} must be even and >= 4 for sinusoidal_t2t positions")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"AudioLMConfig.dropout: must be in [0, 1), got {self.dropout}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"AudioLMConfig.mlp_ratio: must be > 0, got {self.mlp_ratio}")
        if self.pattern not in PATTERNS:
            raise ValueError(f"AudioLMConfig.pattern: expected one of {sorted(PATTERNS)}, got {self.pattern!r}")
        if self.positional not in POSITIONALS:
            raise ValueError(f"AudioLMConfig.positional: expected one of {POSITIONALS}, got {self.positional!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"AudioLMConfig.activation: expected one of {sorted(ACTIVATIONS)}, "
                             f"got {self.activation!r}")
        if not isinstance(self.linear_bias, bool):
            raise ValueError(f"AudioLMConfig.linear_bias: must be a bool, got {self.linear_bias!r}")
        if (isinstance(self.layerdrop, bool) or not isinstance(self.layerdrop, (int, float))
                or not 0.0 <= self.layerdrop < 1.0):
            raise ValueError(f"AudioLMConfig.layerdrop: must be in [0, 1), got {self.layerdrop!r}")

    def to_dict(self) -> dict:
        """Plain JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> AudioLMConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown AudioLMConfig keys {unknown}; known keys: {sorted(names)}")
        return cls(**data)

    @classmethod
    def paper(cls, name: str = "audiogen-medium") -> AudioLMConfig:
        """The paper-scale config ``name`` from :data:`PAPER_CONFIGS` (a GPU-cluster model: do not build it
        on a laptop; ``with torch.device("meta"): AudioLM(cfg)`` counts its parameters without memory)."""
        if name not in PAPER_CONFIGS:
            raise ValueError(f"unknown paper config {name!r}; known: {sorted(PAPER_CONFIGS)}")
        return cls(**PAPER_CONFIGS[name])


class AudioLM(nn.Module):
    """Text-conditioned transformer LM over K codebook streams: ``(B, K, S)`` tokens → ``(B, K, S, V)`` logits.

    * :meth:`forward` ``(seq, text, text_mask, cache)``: ``seq`` long ``(B, K, S)`` with ids in
      ``[0, codebook_size]`` (``codebook_size`` = ``special_id``), ``text`` float ``(B, L, text_dim)``,
      ``text_mask`` bool ``(B, L)`` (True = real token; an all-False row = no text) → logits
      ``(B, K, S, codebook_size)``; with a ``cache`` (:meth:`new_cache`) ``seq`` holds only the new steps.
    * :meth:`loss` ``(codes, text, text_mask)``: codes ``(B, K, T)`` → (mean cross-entropy over the K·T real
      tokens, metrics).
    * :meth:`save_pretrained` / :meth:`from_pretrained`: safetensors + JSON config.
    """

    def __init__(self, config: AudioLMConfig | None = None) -> None:
        super().__init__()
        config = config or AudioLMConfig()
        config.validate()
        self.config = config
        card, dim = config.codebook_size, config.dim
        self.pattern: Pattern = make_pattern(config.pattern, config.n_q)
        self.embeddings = nn.ModuleList(nn.Embedding(card + 1, dim) for _ in range(config.n_q))
        self.pos_embedding = nn.Embedding(config.max_len, dim) if config.positional == "learned" else None
        self.transformer = Transformer(dim, config.num_layers, config.num_heads, mlp_ratio=config.mlp_ratio,
                                       cross_attention_dim=config.text_dim, causal=True, dropout=config.dropout)
        self.heads = nn.ModuleList(nn.Linear(dim, card, bias=config.linear_bias) for _ in range(config.n_q))
        for block in self.transformer.blocks:
            if config.activation != "gelu":
                block.mlp[1] = ACTIVATIONS[config.activation]()
            if not config.linear_bias:  # MusicGen's layout; cross-attention k/v keep theirs (see the config)
                attn, cross = block.self_attn, block.cross_attn
                for linear in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj, cross.q_proj, cross.out_proj,
                               block.mlp[0], block.mlp[2]):
                    linear.register_parameter("bias", None)

    @property
    def special_id(self) -> int:
        """The padding / start token id of every codebook: ``codebook_size``."""
        return self.config.special_id

    def new_cache(self) -> TransformerCache:
        """An empty KV cache for incremental decoding with :meth:`forward`."""
        return self.transformer.new_cache()

    # ---- checks ---------------------------------------------------------------------------------------------

    def _check_tokens(self, x: Tensor, name: str, high: int, what: str) -> None:
        k = self.config.n_q
        if not isinstance(x, Tensor) or x.dim() != 3 or x.is_floating_point() or x.dtype == torch.bool:
            got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"AudioLM expects {name} as an integer tensor (B, K={k}, {what}), got {got}")
        if x.shape[1] != k:
            raise ValueError(f"AudioLM was built for K = {k} codebooks but {name} has {x.shape[1]} on axis 1 "
                             f"(shape {tuple(x.shape)})")
        if x.shape[2] == 0:
            raise ValueError(f"AudioLM: {name} has no {what}")
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > high:
            raise ValueError(f"AudioLM: {name} ids must be in [0, {high}] (codebook_size = "
                             f"{self.config.codebook_size}), got values in [{lo}, {hi}]")

    def _check_text(self, text: Tensor, text_mask: Tensor | None, batch: int) -> None:
        d = self.config.text_dim
        if not isinstance(text, Tensor) or text.dim() != 3 or not text.is_floating_point():
            got = f"{tuple(text.shape)} {text.dtype}" if isinstance(text, Tensor) else type(text).__name__
            raise ValueError(f"AudioLM expects text embeddings as a float tensor (B, L, text_dim={d}), got {got}")
        if text.shape[-1] != d:
            raise ValueError(f"AudioLM was built for text_dim = {d} but the text embeddings have width "
                             f"{text.shape[-1]} (shape {tuple(text.shape)}); use the matching text encoder")
        if text.shape[0] != batch:
            raise ValueError(f"text has batch {text.shape[0]} but the tokens have batch {batch}")
        if text_mask is not None and (not isinstance(text_mask, Tensor) or text_mask.dtype != torch.bool
                                      or tuple(text_mask.shape) != tuple(text.shape[:2])):
            got = f"{tuple(text_mask.shape)} {text_mask.dtype}" if isinstance(text_mask, Tensor) else type(text_mask)
            raise ValueError(f"text_mask must be a bool tensor (B, L) = {tuple(text.shape[:2])}, True = real "
                             f"token, got {got}")

    # ---- model ------------------------------------------------------------------------------------------------

    def forward(self, seq: Tensor, text: Tensor, text_mask: Tensor | None = None,
                cache: TransformerCache | None = None) -> Tensor:
        """Input steps ``(B, K, S)`` → logits ``(B, K, S, codebook_size)`` for the *next* pattern steps.

        ``logits[:, k, s]`` is the distribution of codebook k at the pattern step after input step ``s``
        (see the module docstring). With ``cache``, ``seq`` holds only new steps, which are placed after the
        ``len(cache)`` cached ones; the cache is extended in place. ``text_mask=None`` means every text
        token is real.
        """
        self._check_tokens(seq, "seq", self.special_id, "S steps")
        self._check_text(text, text_mask, seq.shape[0])
        offset = 0 if cache is None else len(cache)
        steps = seq.shape[2]
        if offset + steps > self.config.max_len:
            raise ValueError(f"AudioLM: {offset + steps} steps exceed max_len = {self.config.max_len}")
        x = sum(emb(seq[:, k]) for k, emb in enumerate(self.embeddings))
        positions = torch.arange(offset, offset + steps, device=seq.device)
        if self.pos_embedding is not None:
            x = x + self.pos_embedding(positions)
        elif self.config.positional == "sinusoidal_t2t":
            x = x + sinusoidal_embedding_t2t(positions, self.config.dim).to(x.dtype)
        else:
            x = x + sinusoidal_embedding(positions, self.config.dim).to(x.dtype)
        if self.training and self.config.layerdrop > 0 and cache is None:
            for block in self.transformer.blocks:  # LayerDrop: skip each block with probability layerdrop
                if float(torch.rand(())) >= self.config.layerdrop:
                    x = block(x, text, text_mask)
            h = self.transformer.norm(x, None)
        else:
            h = self.transformer(x, text, text_mask, cache=cache)
        return torch.stack([head(h) for head in self.heads], dim=1)

    def shift_right(self, seq: Tensor) -> Tensor:
        """The model input for a target sequence ``(B, K, S)``: a ``special_id`` column, then ``seq[..., :-1]``."""
        start = seq.new_full((*seq.shape[:2], 1), self.special_id)
        return torch.cat([start, seq[:, :, :-1]], dim=2)

    def loss(self, codes: Tensor, text: Tensor, text_mask: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Teacher-forced cross-entropy of codes ``(B, K, T)`` given the text; returns ``(loss, metrics)``.

        The codes are interleaved by the pattern, shifted right by one step, and the loss is the mean
        cross-entropy (nats/token) over the ``B·K·T`` real tokens only: padding positions of the pattern
        (the delay pattern's ragged ends) are excluded. ``metrics`` (detached): ``ce_k{k}`` per codebook and
        ``accuracy`` (argmax = target). Condition dropout for CFG is the caller's job
        (:func:`course_lib.nn.guidance.drop_condition` on ``text_mask``).
        """
        self._check_tokens(codes, "codes", self.config.codebook_size - 1, "T frames")
        num_frames = codes.shape[2]
        target = self.pattern.interleave(codes, self.special_id)  # (B, K, S)
        logits = self(self.shift_right(target), text, text_mask).float()  # (B, K, S, V)
        valid = self.pattern.valid_mask(num_frames, codes.device).expand_as(target)
        ce = F.cross_entropy(logits.permute(0, 3, 1, 2), target.masked_fill(~valid, -100), reduction="none")
        loss = ce.sum() / valid.sum()
        with torch.no_grad():
            metrics = {f"ce_k{k}": ce[:, k].sum() / valid[:, k].sum() for k in range(self.config.n_q)}
            correct = (logits.argmax(-1) == target) & valid
            metrics["accuracy"] = correct.sum() / valid.sum()
        return loss, metrics

    # ---- files ------------------------------------------------------------------------------------------------

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``model.safetensors`` and ``config.json`` into ``folder`` (created if needed); return it."""
        return save_pretrained(self, self.config, folder)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, map_location: str | torch.device = "cpu") -> AudioLM:
        """Inverse of :meth:`save_pretrained` (JSON config + safetensors, nothing unpickled); eval mode."""
        return load_pretrained(cls, AudioLMConfig, folder, map_location)
