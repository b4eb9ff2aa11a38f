"""Diffsound's token decoder: a non-causal transformer that predicts ``p(x_0 | x_t, text)`` over a mel-token grid.

Yang et al. 2023 ("Diffsound: Discrete Diffusion Model for Text-to-sound Generation") generate the token grid
``(B, H, W)`` of a mel VQ-VAE (H token rows over the mel bands, W columns over time) by mask-and-replace
discrete diffusion (:mod:`course_lib.diffusion.discrete`, VQ-Diffusion's process). The network, as
VQ-Diffusion's ``Text2ImageTransformer``::

    x_t (B, H, W) ids in 0..K  →  Embedding(K+1, dim) + row_emb[h] + col_emb[w]      (learned positions)
                               →  flatten row-major to (B, H·W, dim)
    t (B,)  →  sinusoidal_embedding(t, dim) → Linear → SiLU → Linear  =  c (B, dim)
    Transformer(causal=False, cross_attention_dim=text_dim, adaptive_norm_dim=dim)(x, text, mask, cond=c)
                               →  Linear(dim, K)  →  logits of x_0 (B, K, H, W)

Every block is bidirectional self-attention → cross-attention to the text → MLP, each LayerNorm adaptive
(``LN(x)(1 + γ(c)) + β(c)``, the timestep entering every block as in VQ-Diffusion's ``AdaLayerNorm``); the
transformer is the course's shared one (:mod:`course_lib.nn.transformer`), the same blocks as the AudioGen LM.
Positions are **learned** row and column tables (VQ-Diffusion's and Diffsound's ``DalleMaskImageEmbedding``
with ``pos_emb_type: embedding``): the grids have a fixed, small size (``max_cols`` columns), and a learned
table lets the model tell the mel-band rows apart, which a 1-D sinusoid over the flattened sequence would
blur. Because the attention is bidirectional and the positions are added per token, the flattening order
does not change the model's function; row-major (``(B, H, W).reshape(B, H·W)``) is used.

Classifier-free guidance (:meth:`DiffsoundModel.generate`) mixes the conditional and the unconditional
log-probabilities of x_0, ``log p_u + s (log p_c − log p_u)`` (:func:`course_lib.nn.guidance.cfg_mix`),
and renormalises, as the improved VQ-Diffusion does; the null condition is the course's all-False text mask.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from course_lib.diffusion.discrete import DiscreteDiffusion, MaskReplaceSchedule
from course_lib.nn.guidance import cfg_mix, null_mask_like
from course_lib.nn.saving import CONFIG_FILE, WEIGHTS_FILE, load_pretrained, save_pretrained  # noqa: F401 (re-exported)
from course_lib.nn.transformer import Transformer, sinusoidal_embedding

__all__ = ["DiffsoundConfig", "DiffsoundModel", "PAPER_CONFIG"]


# Diffsound's released configuration (code: Diffsound/configs/caps.yaml): 19 layers, width 1024, 16 heads,
# MLP ×4, CLIP ViT-B/32 token embeddings (512-d), a 5 × 53 grid of a 256-entry codebook, T = 100, auxiliary
# weight 5e-4 with the adaptive weighting, γ̄ ending at 0.9. Never build it on a laptop.
PAPER_CONFIG: dict = dict(codebook_size=256, grid_rows=5, max_cols=53, dim=1024, num_layers=19, num_heads=16,
                          mlp_ratio=4.0, dropout=0.0, text_dim=512, num_steps=100, alpha_bar_start=0.99999,
                          alpha_bar_end=0.000009, gamma_bar_start=0.000009, gamma_bar_end=0.9, aux_weight=5e-4,
                          adaptive_aux=True)


@dataclass
class DiffsoundConfig:
    """Architecture and diffusion settings of :class:`DiffsoundModel`; defaults are a CPU-sized course model.

    Tokens: ``codebook_size`` K codes (the [MASK] id is K), grids of ``grid_rows`` rows (the course mel
    VQ-VAE: 80 mels / 8 = 10) and up to ``max_cols`` columns (the learned column table's size).
    Transformer: ``dim``, ``num_layers``, ``num_heads``, ``mlp_ratio``, ``dropout``; ``text_dim`` is the
    width of the text encoder's embeddings. Diffusion: ``num_steps`` T and the schedule's end points
    (:class:`~course_lib.diffusion.discrete.MaskReplaceSchedule`; Diffsound's values); loss: ``aux_weight``
    (λ of the auxiliary x_0 term) and ``adaptive_aux`` (its ``2 − (t−1)/T`` weighting, on in both papers).
    :meth:`paper` gives Diffsound's released model.
    """

    codebook_size: int = 256
    grid_rows: int = 10
    max_cols: int = 64
    dim: int = 256
    num_layers: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    text_dim: int = 128
    num_steps: int = 100
    alpha_bar_start: float = 0.99999
    alpha_bar_end: float = 0.000009
    gamma_bar_start: float = 0.000009
    gamma_bar_end: float = 0.9
    aux_weight: float = 5e-4
    adaptive_aux: bool = True

    def schedule(self) -> MaskReplaceSchedule:
        """The :class:`MaskReplaceSchedule` these settings describe (raises ``ValueError`` if they cannot work)."""
        return MaskReplaceSchedule(self.codebook_size, self.num_steps, self.alpha_bar_start, self.alpha_bar_end,
                                   self.gamma_bar_start, self.gamma_bar_end)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field that cannot work (messages start ``DiffsoundConfig.<field>``)."""
        for key in ("codebook_size", "grid_rows", "max_cols", "dim", "num_layers", "num_heads", "text_dim",
                    "num_steps"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"DiffsoundConfig.{key}: must be a positive int, got {value!r}")
        if self.codebook_size < 2:
            raise ValueError(f"DiffsoundConfig.codebook_size: must be >= 2, got {self.codebook_size}")
        if self.num_steps < 2:
            raise ValueError(f"DiffsoundConfig.num_steps: must be >= 2, got {self.num_steps}")
        if self.dim % self.num_heads:
            raise ValueError(f"DiffsoundConfig.dim={self.dim} must be divisible by num_heads={self.num_heads}")
        if self.dim % 2:
            raise ValueError(f"DiffsoundConfig.dim={self.dim} must be even (sinusoidal timestep embedding)")
        if isinstance(self.mlp_ratio, bool) or not isinstance(self.mlp_ratio, (int, float)) or self.mlp_ratio <= 0:
            raise ValueError(f"DiffsoundConfig.mlp_ratio: must be > 0, got {self.mlp_ratio!r}")
        if (isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float))
                or not 0.0 <= self.dropout < 1.0):
            raise ValueError(f"DiffsoundConfig.dropout: must be in [0, 1), got {self.dropout!r}")
        if (isinstance(self.aux_weight, bool) or not isinstance(self.aux_weight, (int, float))
                or self.aux_weight < 0):
            raise ValueError(f"DiffsoundConfig.aux_weight: must be a number >= 0, got {self.aux_weight!r}")
        if not isinstance(self.adaptive_aux, bool):
            raise ValueError(f"DiffsoundConfig.adaptive_aux: must be true or false, got {self.adaptive_aux!r}")
        try:
            self.schedule()
        except ValueError as err:
            raise ValueError(str(err).replace("MaskReplaceSchedule.", "DiffsoundConfig.")
                             .replace("MaskReplaceSchedule:", "DiffsoundConfig:")) from None

    def to_dict(self) -> dict:
        """Plain JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DiffsoundConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown DiffsoundConfig keys {unknown}; known keys: {sorted(names)}")
        return cls(**data)

    @classmethod
    def paper(cls) -> DiffsoundConfig:
        """Diffsound's released token decoder (:data:`PAPER_CONFIG`: 19 layers, width 1024, 16 heads, 512-d
        CLIP text, 5 × 53 grid of 256 codes). A GPU model: count its parameters on the meta device
        (``with torch.device("meta"): DiffsoundModel(DiffsoundConfig.paper())``)."""
        return cls(**PAPER_CONFIG)


class DiffsoundModel(nn.Module):
    """Diffsound's text-conditioned discrete-diffusion token decoder over grids ``(B, H, W)`` of K codes.

    * :meth:`forward` ``(x_t, t, text, text_mask)``: ids ``(B, H, W)`` in ``0..K`` (K = [MASK]), ``t`` long
      ``(B,)`` in ``1..T``, text ``(B, L, text_dim)`` float, text_mask ``(B, L)`` bool (True = real token;
      an all-False row is the null condition) → logits of x_0 ``(B, K, H, W)``;
    * :meth:`loss` ``(tokens, text, text_mask)``: draws ``t`` uniformly and ``x_t ~ q(x_t | x_0)``, returns
      VQ-Diffusion's loss and metrics (:meth:`DiscreteDiffusion.loss`);
    * :meth:`generate`: parallel decoding from an all-[MASK] grid (strided steps, truncation, CFG);
    * :meth:`save_pretrained` / :meth:`from_pretrained`: safetensors + JSON config.

    ``self.diffusion`` is the :class:`~course_lib.diffusion.discrete.DiscreteDiffusion` (buffers only).
    """

    def __init__(self, config: DiffsoundConfig | None = None) -> None:
        super().__init__()
        config = config or DiffsoundConfig()
        if not isinstance(config, DiffsoundConfig):
            raise ValueError(f"DiffsoundModel expects a DiffsoundConfig, got {type(config).__name__}")
        config.validate()
        self.config = config
        k, dim = config.codebook_size, config.dim
        self.diffusion = DiscreteDiffusion(config.schedule())
        self.token_embedding = nn.Embedding(k + 1, dim)
        self.row_embedding = nn.Embedding(config.grid_rows, dim)
        self.col_embedding = nn.Embedding(config.max_cols, dim)
        self.time_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.transformer = Transformer(dim, config.num_layers, config.num_heads, mlp_ratio=config.mlp_ratio,
                                       cross_attention_dim=config.text_dim, causal=False, dropout=config.dropout,
                                       adaptive_norm_dim=dim)
        self.to_logits = nn.Linear(dim, k)

    @property
    def mask_id(self) -> int:
        """The [MASK] token id: ``codebook_size``."""
        return self.config.codebook_size

    @property
    def num_steps(self) -> int:
        """T, the number of diffusion steps."""
        return self.config.num_steps

    # ---- checks ---------------------------------------------------------------------------------------------

    def _check_grid(self, x: Tensor, name: str, high: int) -> None:
        h, w_max = self.config.grid_rows, self.config.max_cols
        if not isinstance(x, Tensor) or x.dim() != 3 or x.is_floating_point() or x.dtype == torch.bool:
            got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"DiffsoundModel expects {name} as an integer token grid (B, H={h}, W), got {got}")
        if x.shape[1] != h:
            raise ValueError(f"DiffsoundModel was built for grids of {h} token rows but {name} has {x.shape[1]} "
                             f"(shape {tuple(x.shape)}); grid_rows must match the VQ-VAE")
        if not 1 <= x.shape[2] <= w_max:
            raise ValueError(f"DiffsoundModel takes 1..max_cols={w_max} token columns, {name} has {x.shape[2]} "
                             f"(shape {tuple(x.shape)})")
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > high:
            raise ValueError(f"DiffsoundModel: {name} ids must be in [0, {high}] (codebook_size = "
                             f"{self.config.codebook_size}, [MASK] = {self.mask_id}), got values in [{lo}, {hi}]")

    def _check_text(self, text: Tensor, text_mask: Tensor | None, batch: int) -> None:
        d = self.config.text_dim
        if not isinstance(text, Tensor) or text.dim() != 3 or not text.is_floating_point():
            got = f"{tuple(text.shape)} {text.dtype}" if isinstance(text, Tensor) else type(text).__name__
            raise ValueError(f"DiffsoundModel expects text embeddings as a float tensor (B, L, text_dim={d}), "
                             f"got {got}")
        if text.shape[-1] != d:
            raise ValueError(f"DiffsoundModel was built for text_dim = {d} but the text embeddings have width "
                             f"{text.shape[-1]} (shape {tuple(text.shape)}); use the matching text encoder")
        if text.shape[0] != batch:
            raise ValueError(f"text has batch {text.shape[0]} but the tokens have batch {batch}")
        if text_mask is not None and (not isinstance(text_mask, Tensor) or text_mask.dtype != torch.bool
                                      or tuple(text_mask.shape) != tuple(text.shape[:2])):
            got = (f"{tuple(text_mask.shape)} {text_mask.dtype}" if isinstance(text_mask, Tensor)
                   else type(text_mask).__name__)
            raise ValueError(f"text_mask must be a bool tensor (B, L) = {tuple(text.shape[:2])}, True = real token, "
                             f"got {got}")

    def _check_t(self, t: Tensor | int, batch: int, device: torch.device) -> Tensor:
        if isinstance(t, int) and not isinstance(t, bool):
            t = torch.full((batch,), t, dtype=torch.long, device=device)
        if not isinstance(t, Tensor) or t.is_floating_point() or t.dtype == torch.bool or tuple(t.shape) != (batch,):
            got = f"{tuple(t.shape)} {t.dtype}" if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"DiffsoundModel expects t as integer timesteps (B={batch},), got {got}")
        lo, hi = int(t.min()), int(t.max())
        if lo < 1 or hi > self.num_steps:
            raise ValueError(f"DiffsoundModel: t must be in [1, T={self.num_steps}], got values in [{lo}, {hi}]")
        return t.long().to(device)

    # ---- network --------------------------------------------------------------------------------------------

    def forward(self, x_t: Tensor, t: Tensor, text: Tensor, text_mask: Tensor | None = None) -> Tensor:
        """Logits of ``p(x_0 | x_t, t, text)``: ``(B, K, H, W)`` for ids ``x_t`` ``(B, H, W)`` in ``0..K``.

        ``t`` long ``(B,)`` in ``1..T`` (an int is broadcast); ``text`` ``(B, L, text_dim)``; ``text_mask``
        ``(B, L)`` bool or None (all real). Raises ``ValueError`` naming what was expected on bad input.
        """
        self._check_grid(x_t, "x_t", self.mask_id)
        b, h, w = x_t.shape
        self._check_text(text, text_mask, b)
        t = self._check_t(t, b, x_t.device)
        rows = self.row_embedding.weight[:h].view(1, h, 1, -1)
        cols = self.col_embedding.weight[:w].view(1, 1, w, -1)
        x = (self.token_embedding(x_t) + rows + cols).reshape(b, h * w, -1)  # row-major flattening
        cond = self.time_mlp(sinusoidal_embedding(t, self.config.dim).to(x.dtype))
        x = self.transformer(x, text, text_mask, cond=cond)
        logits = self.to_logits(x)  # (B, H·W, K)
        return logits.view(b, h, w, -1).permute(0, 3, 1, 2)

    def loss(self, tokens: Tensor, text: Tensor, text_mask: Tensor | None = None, t: Tensor | None = None,
             generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Training loss of clean grids ``tokens`` ``(B, H, W)`` (ids ``0..K−1``) given the text; ``(loss, metrics)``.

        Draws ``t`` uniformly in ``1..T`` (unless given, long ``(B,)``) and ``x_t ~ q(x_t | x_0)`` from
        ``generator`` (on the tokens' device; None = global RNG), runs the network and returns
        :meth:`DiscreteDiffusion.loss` with ``config.aux_weight`` / ``config.adaptive_aux``: the variational
        bound (nats per token, an unbiased estimate over all t) plus λ times the auxiliary x_0 cross-entropy.
        Metrics (detached): ``vb``, ``lt``, ``aux_ce``, ``accuracy``, ``accuracy_masked``, ``mask_rate``.
        Condition dropout for CFG is the caller's (:func:`course_lib.nn.guidance.drop_condition`).
        """
        self._check_grid(tokens, "tokens", self.config.codebook_size - 1)
        b = tokens.shape[0]
        self._check_text(text, text_mask, b)
        if t is None:
            t = self.diffusion.sample_t(b, device=tokens.device, generator=generator)
        t = self._check_t(t, b, tokens.device)
        x0 = tokens.reshape(b, -1)
        x_t = self.diffusion.q_sample(x0, t, generator=generator)
        logits = self(x_t.view_as(tokens), t, text, text_mask)
        return self.diffusion.loss(logits.reshape(b, self.config.codebook_size, -1), x0, x_t, t,
                                   aux_weight=self.config.aux_weight, adaptive_aux=self.config.adaptive_aux)

    # ---- generation -------------------------------------------------------------------------------------------

    def guided_log_probs(self, x_t: Tensor, t: Tensor, text: Tensor, text_mask: Tensor | None,
                         cfg_scale: float = 1.0, null_text: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """``log p(x_0 | x_t)`` ``(B, K, H, W)`` with classifier-free guidance ``cfg_scale``.

        ``cfg_scale = 1`` is the conditional model alone. Otherwise the model also runs on the null condition —
        the same text with an all-False mask (:func:`~course_lib.nn.guidance.null_mask_like`, batched with the
        conditional branch as ``2B`` items), or ``null_text = (embeddings (1 or B, L0, text_dim), mask (1 or
        B, L0))`` if given (e.g. the encoding of an empty caption) — and the log-probabilities are mixed by
        :func:`~course_lib.nn.guidance.cfg_mix` and renormalised (improved VQ-Diffusion's ``cf_predict_start``).
        """
        b = x_t.shape[0]
        if cfg_scale == 1:
            return torch.log_softmax(self(x_t, t, text, text_mask).float(), dim=1)
        if text_mask is None:
            text_mask = torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)
        if null_text is None:
            both = self(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([text, text]),
                        torch.cat([text_mask, null_mask_like(text_mask)]))
            cond, uncond = both.float().chunk(2, dim=0)
        else:
            null_emb, null_mask = self._expand_null(null_text, b)
            cond = self(x_t, t, text, text_mask).float()
            uncond = self(x_t, t, null_emb, null_mask).float()
        mixed = cfg_mix(torch.log_softmax(cond, dim=1), torch.log_softmax(uncond, dim=1), cfg_scale)
        return torch.log_softmax(mixed, dim=1)

    def _expand_null(self, null_text: tuple[Tensor, Tensor], batch: int) -> tuple[Tensor, Tensor]:
        if (not isinstance(null_text, (tuple, list)) or len(null_text) != 2
                or not all(isinstance(x, Tensor) for x in null_text)):
            raise ValueError("null_text must be a pair (embeddings (1 or B, L0, text_dim), mask (1 or B, L0) bool)")
        emb, mask = null_text
        if emb.dim() != 3 or mask.dim() != 2 or emb.shape[0] not in (1, batch) or mask.shape[0] != emb.shape[0]:
            raise ValueError(f"null_text must be (embeddings (1 or B={batch}, L0, text_dim), mask (1 or B, L0)), got "
                             f"{tuple(emb.shape)} and {tuple(mask.shape)}")
        return emb.expand(batch, -1, -1), mask.expand(batch, -1)

    @torch.no_grad()
    def generate(self, text: Tensor, text_mask: Tensor | None, cols: int, steps: int | None = None,
                 cfg_scale: float = 1.0, truncation: float | None = 0.86, temperature: float = 1.0,
                 generator: torch.Generator | None = None, null_text: tuple[Tensor, Tensor] | None = None,
                 return_trajectory: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Sample token grids ``(B, grid_rows, cols)`` (long, ids ``0..K−1``) for text ``(B, L, text_dim)``.

        Parallel decoding (:meth:`DiscreteDiffusion.sample`) from an all-[MASK] grid in ``steps`` reverse
        jumps (``None`` = all T; fewer = the strided posterior), with ``truncation`` r (keep the top-r mass of
        each token's x_0 prediction, VQ-Diffusion's 0.86; ``None`` = off), ``temperature`` on the x_0 logits
        and classifier-free guidance ``cfg_scale`` (1 = none; :meth:`guided_log_probs`, ``null_text`` as
        there). ``generator`` (on the text's device) seeds the draws. The model runs in eval mode (restored
        afterwards). With ``return_trajectory`` also returns the grids ``x_T, …, x_0``.
        """
        if isinstance(cols, bool) or not isinstance(cols, int) or not 1 <= cols <= self.config.max_cols:
            raise ValueError(f"cols must be an int in [1, max_cols={self.config.max_cols}], got {cols!r}")
        if isinstance(cfg_scale, bool) or not isinstance(cfg_scale, (int, float)):
            raise ValueError(f"cfg_scale must be a number (1 = no guidance), got {cfg_scale!r}")
        if not isinstance(text, Tensor) or text.dim() != 3:
            raise ValueError(f"text must be embeddings (B, L, text_dim={self.config.text_dim}), got "
                             f"{tuple(text.shape) if isinstance(text, Tensor) else type(text).__name__}")
        self._check_text(text, text_mask, text.shape[0])
        if null_text is not None:
            self._expand_null(null_text, text.shape[0])

        def denoise(x_t: Tensor, t: Tensor) -> Tensor:
            if cfg_scale == 1:  # exactly the conditional model's logits (sample() normalises them)
                return self(x_t, t, text, text_mask)
            return self.guided_log_probs(x_t, t, text, text_mask, cfg_scale, null_text)

        was_training = self.training
        self.eval()
        try:
            return self.diffusion.sample(denoise, (text.shape[0], self.config.grid_rows, cols), steps=steps,
                                         truncation=truncation, temperature=temperature, generator=generator,
                                         return_trajectory=return_trajectory, device=text.device)
        finally:
            self.train(was_training)

    # ---- files ------------------------------------------------------------------------------------------------

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``model.safetensors`` and ``config.json`` into ``folder`` (created if needed); return it."""
        return save_pretrained(self, self.config, folder)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, map_location: str | torch.device = "cpu") -> DiffsoundModel:
        """Inverse of :meth:`save_pretrained` (JSON config + safetensors, nothing unpickled); eval mode."""
        return load_pretrained(cls, DiffsoundConfig, folder, map_location)
