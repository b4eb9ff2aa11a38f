"""Vector quantizers: VQ (learned or EMA codebook) and residual VQ, with the codec-era remedies.

A vector quantizer replaces each D-dimensional encoder vector ``z`` by its nearest codebook entry
``e_k`` (van den Oord et al. 2017, "Neural Discrete Representation Learning")::

    k* = argmin_k ‖z − e_k‖²,        z_q = e_{k*}
    L_vq = ‖sg[z] − e_{k*}‖²  +  β ‖z − sg[e_{k*}]‖²        (codebook loss + commitment loss, β = 0.25)

and copies the decoder's gradient straight through the non-differentiable lookup: the forward value is
``z_q`` and the backward pass treats ``z_q`` as ``z`` (``z + sg[z_q − z]``). The paper's appendix replaces
the codebook loss by exponential moving averages (EMA, decay γ = 0.99) of the per-code counts ``N_k``
and vector sums ``m_k``, with Laplace smoothing of the counts, and sets ``e_k = m_k / N_k``.

Later codecs (SoundStream, EnCodec; see audiocraft's ``core_vq.py``) add remedies against codebook
collapse that this module also implements: k-means initialisation from the first training batch, and
restarting "dead" codes (EMA usage under a threshold) with random vectors from the current batch.
The residual quantizer (SoundStream) quantizes what the previous stage left over, with quantizer
dropout (a random number of stages per training batch) so one model serves several bitrates.

Shapes: inputs are ``(B, D, *spatial)`` with the channel (feature) dimension at index 1, e.g.
``(B, D, T)`` for a codec latent sequence or ``(B, D, H, W)`` for a 2-D token grid; codes are
``(B, *spatial)`` (VQ) or ``(B, K, *spatial)`` (RVQ, K stages). This module depends on torch alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = [
    "QuantizerOutput",
    "VectorQuantizer",
    "ResidualVectorQuantizer",
    "bitrate",
    "nearest_code",
    "is_nearest",
    "perplexity",
    "laplace_smoothing",
    "kmeans",
]


@dataclass
class QuantizerOutput:
    """What a quantizer returns.

    ``quantized``: ``(B, D, *spatial)``, forward value = the chosen codebook vectors, gradient = identity
    to the input (straight-through). ``codes``: long, ``(B, *spatial)`` for VQ, ``(B, K, *spatial)`` for
    RVQ. ``loss``: scalar, β·commitment (+ codebook loss when the codebook is learned by gradient).
    ``metrics``: detached scalars (perplexity, usage, dead codes, ...) for logging.
    """

    quantized: torch.Tensor
    codes: torch.Tensor
    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- helpers


def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _check_latent(z: torch.Tensor, dim: int, who: str) -> None:
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"{who} expects a torch.Tensor of shape (B, {dim}, *spatial), got {type(z).__name__}")
    if z.dim() < 2 or z.shape[1] != dim:
        raise ValueError(
            f"{who} expects a tensor of shape (B, D={dim}, *spatial) with the feature dimension at index 1, "
            f"got shape {tuple(z.shape)}"
        )
    if not z.is_floating_point():
        raise TypeError(f"{who} expects a floating-point tensor, got dtype {z.dtype}")


def _flatten(z: torch.Tensor) -> torch.Tensor:
    """``(B, D, *spatial)`` → ``(N, D)`` with N = B·prod(spatial)."""
    return z.movedim(1, -1).reshape(-1, z.shape[1])


def _unflatten(flat: torch.Tensor, like_shape: torch.Size) -> torch.Tensor:
    """``(N, D)`` → ``(B, D, *spatial)`` for the shape ``like_shape`` of the original input."""
    b, d, *spatial = like_shape
    return flat.reshape(b, *spatial, d).movedim(-1, 1)


def nearest_code(flat: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook row for every input row (squared Euclidean distance).

    ``flat``: ``(N, D)``; ``codebook``: ``(K, D)``; returns long ``(N,)`` with
    ``argmin_k ‖flat_n − e_k‖² = argmin_k (‖e_k‖² − 2 flat_n·e_k)`` (the ‖flat_n‖² term is constant).
    Ties go to the lowest index. Computed in float32.
    """
    flat = flat.float()
    codebook = codebook.float()
    dist_ = codebook.pow(2).sum(1)[None, :] - 2 * flat @ codebook.t()
    return dist_.argmin(dim=1)


def is_nearest(flat: torch.Tensor, codebook: torch.Tensor, codes: torch.Tensor, rtol: float = 1e-6) -> bool:
    """True if every ``codes[n]`` is a nearest codebook row of ``flat[n]`` up to float rounding.

    ``flat``: ``(N, D)``; ``codebook``: ``(K, D)``; ``codes``: integer ``(N,)``. Distances are recomputed in
    float64 (the referee) and a code passes if its squared distance exceeds the smallest by at most
    ``rtol · (1 + smallest)``. Two correct float32 formulas (``‖z‖² − 2z·e + ‖e‖²``, :func:`nearest_code`,
    ``torch.cdist``) round differently and may break a near-tie differently, and so may one formula on two
    CPUs: compare nearest-code choices with this, not with ``torch.equal``.
    """
    flat, codebook = flat.detach().double(), codebook.detach().double()
    dist = torch.cdist(flat, codebook).pow(2)  # (N, K)
    best = dist.min(dim=1).values
    chosen = dist.gather(1, codes.long().reshape(-1, 1))[:, 0]
    return bool((chosen <= best + rtol * (1 + best)).all())


def perplexity(codes: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Perplexity ``exp(−Σ_k p_k log p_k)`` of the code histogram ``p`` (how many codes are effectively used).

    ``codes``: long tensor of any shape with values in ``[0, codebook_size)``. Returns a float scalar in
    ``[1, codebook_size]``: 1 when one code takes everything, ``codebook_size`` when use is uniform.
    """
    counts = torch.bincount(codes.reshape(-1), minlength=codebook_size).float()
    p = counts / counts.sum().clamp(min=1)
    return torch.exp(-(p * torch.log(p.clamp(min=1e-10))).sum())


def laplace_smoothing(counts: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Laplace-smoothed counts ``(N_k + ε) / (n + K ε) · n`` with ``n = Σ_k N_k`` (VQ-VAE appendix / Sonnet).

    ``counts``: ``(K,)`` non-negative. The result has the same total ``n`` but no zero entry, so dividing
    the EMA sums by it never divides by zero.
    """
    n = counts.sum()
    k = counts.numel()
    return (counts + epsilon) / (n + k * epsilon) * n


def kmeans(samples: torch.Tensor, k: int, iters: int = 50, generator: torch.Generator | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain k-means (Lloyd) on ``samples`` ``(N, D)``: returns centres ``(k, D)`` and cluster sizes ``(k,)``.

    Centres start at k random samples (with replacement when N < k); an empty cluster keeps its centre.
    """
    samples = samples.float()
    n = samples.shape[0]
    if n >= k:
        idx = torch.randperm(n, generator=generator, device="cpu")[:k].to(samples.device)
    else:
        idx = torch.randint(0, n, (k,), generator=generator, device="cpu").to(samples.device)
    centres = samples[idx].clone()
    bins = torch.zeros(k, device=samples.device)
    for _ in range(max(1, iters)):
        assign = nearest_code(samples, centres)
        bins = torch.bincount(assign, minlength=k).float()
        sums = torch.zeros_like(centres).index_add_(0, assign, samples)
        nonempty = bins > 0
        centres[nonempty] = sums[nonempty] / bins[nonempty, None]
    return centres, bins


def _sample_rows(flat: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` random rows of ``flat`` ``(N, D)`` (without replacement when possible)."""
    if flat.shape[0] >= n:
        idx = torch.randperm(flat.shape[0], device=flat.device)[:n]
    else:
        idx = torch.randint(0, flat.shape[0], (n,), device=flat.device)
    return flat[idx]


# ------------------------------------------------------------------------------------------ VectorQuantizer


class VectorQuantizer(nn.Module):
    """One codebook of ``codebook_size`` vectors of size ``dim``; quantizes ``(B, dim, *spatial)`` inputs.

    Loss (van den Oord et al. 2017, eq. 3, without the reconstruction term, which the model adds):
    ``β·mean((z − sg[e])²)`` (commitment, β = 0.25 in the paper) plus, when ``ema=False``,
    ``mean((sg[z] − e)²)`` (codebook loss). Means are over all elements (the paper writes squared norms; the
    mean only rescales them, as in audiocraft's ``F.mse_loss``). With ``ema=True`` (the paper's appendix)
    the codebook is not a parameter: in training mode each forward updates
    ``N_k ← γ N_k + (1−γ) n_k`` and ``m_k ← γ m_k + (1−γ) Σ_{z→k} z``, then ``e_k = m_k / Ñ_k`` with
    Laplace-smoothed counts ``Ñ`` (see :func:`laplace_smoothing`). The counts start at 1 for every code
    (as if each had been chosen once), so a code that is not used on the first step stays where it is
    instead of being divided by ~ε; the paper does not say how it initialised them.

    Remedies against collapse (from SoundStream/EnCodec, not in the 2017 paper): ``kmeans_init`` runs
    ``kmeans_iters`` k-means iterations on the first training batch to place the codes; with
    ``dead_code_threshold > 0``, after each training update every code whose EMA count ``N_k`` is under the
    threshold is replaced by a random vector of the current batch (its count reset to the threshold).
    The EMA counts are kept (and restarts work) in both modes; with ``ema=False`` they are statistics only.
    Nothing is updated in eval mode. Under DistributedDataParallel (``torch.distributed`` initialised) the
    batch counts and sums are all-reduced before the EMA update, and after a k-means init or a restart the
    codebook buffers are broadcast from rank 0 so all replicas keep the same codebook.

    ``forward(z)`` → :class:`QuantizerOutput` (quantized ``(B, dim, *spatial)``, codes ``(B, *spatial)``);
    ``encode(z)`` → codes; ``decode(codes)`` → ``(B, dim, *spatial)``.
    """

    def __init__(self, dim: int, codebook_size: int, beta: float = 0.25, ema: bool = True, decay: float = 0.99,
                 epsilon: float = 1e-5, dead_code_threshold: float = 0.0, kmeans_init: bool = False,
                 kmeans_iters: int = 50) -> None:
        super().__init__()
        if not (isinstance(dim, int) and dim > 0):
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if not (isinstance(codebook_size, int) and codebook_size > 0):
            raise ValueError(f"codebook_size must be a positive int, got {codebook_size!r}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        if beta < 0 or epsilon <= 0 or dead_code_threshold < 0:
            raise ValueError(f"need beta >= 0, epsilon > 0, dead_code_threshold >= 0; got {beta}, {epsilon}, "
                             f"{dead_code_threshold}")
        self.dim, self.codebook_size = dim, codebook_size
        self.beta, self.ema, self.decay, self.epsilon = float(beta), bool(ema), float(decay), float(epsilon)
        self.dead_code_threshold = float(dead_code_threshold)
        self.kmeans_init, self.kmeans_iters = bool(kmeans_init), int(kmeans_iters)

        init = torch.randn(codebook_size, dim)
        if self.ema:
            self.register_buffer("embedding", init)
        else:
            self.embedding = nn.Parameter(init)
        self.register_buffer("cluster_size", torch.ones(codebook_size))
        self.register_buffer("embed_avg", init.clone())
        self.register_buffer("initialized", torch.tensor(not self.kmeans_init))

    @property
    def codebook(self) -> torch.Tensor:
        """The codebook, ``(codebook_size, dim)``."""
        return self.embedding

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, codebook_size={self.codebook_size}, beta={self.beta}, ema={self.ema}, "
                f"decay={self.decay}, dead_code_threshold={self.dead_code_threshold}, "
                f"kmeans_init={self.kmeans_init}")

    # -- state updates (training only) ---------------------------------------------------------------------
    def _broadcast_codebook(self) -> None:
        if _dist_on():
            for t in (self.embedding.data, self.cluster_size, self.embed_avg):
                dist.broadcast(t, src=0)

    @torch.no_grad()
    def _init_kmeans(self, flat: torch.Tensor) -> None:
        centres, bins = kmeans(flat, self.codebook_size, self.kmeans_iters)
        counts = bins.clamp(min=1.0)
        self.embedding.data.copy_(centres)
        self.cluster_size.copy_(counts)
        self.embed_avg.copy_(centres * counts[:, None])
        self.initialized.fill_(True)
        self._broadcast_codebook()

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, codes: torch.Tensor) -> None:
        counts = torch.bincount(codes, minlength=self.codebook_size).float()
        sums = torch.zeros(self.codebook_size, self.dim, device=flat.device).index_add_(0, codes, flat)
        if _dist_on():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        if self.ema:
            self.embed_avg.mul_(self.decay).add_(sums, alpha=1 - self.decay)
            smoothed = laplace_smoothing(self.cluster_size, self.epsilon)
            self.embedding.data.copy_(self.embed_avg / smoothed[:, None])

    @torch.no_grad()
    def _restart_dead(self, flat: torch.Tensor) -> int:
        dead = self.cluster_size < self.dead_code_threshold
        n_dead = int(dead.sum())
        if n_dead == 0:
            return 0
        new = _sample_rows(flat, n_dead).to(self.embedding.dtype)
        self.embedding.data[dead] = new
        self.cluster_size[dead] = self.dead_code_threshold
        self.embed_avg[dead] = new * self.dead_code_threshold
        self._broadcast_codebook()
        return n_dead

    # -- public API ------------------------------------------------------------------------------------------
    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest-code indices of ``z`` ``(B, dim, *spatial)`` → long ``(B, *spatial)``. No state change."""
        _check_latent(z, self.dim, "VectorQuantizer.encode")
        codes = nearest_code(_flatten(z.detach()), self.embedding.detach())
        return codes.reshape(z.shape[0], *z.shape[2:])

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codebook vectors for ``codes`` long ``(B, *spatial)`` → ``(B, dim, *spatial)``."""
        if not isinstance(codes, torch.Tensor) or codes.dtype not in (torch.int64, torch.int32, torch.int16,
                                                                       torch.uint8):
            raise TypeError(f"VectorQuantizer.decode expects an integer tensor of codes (B, *spatial), got "
                            f"{getattr(codes, 'dtype', type(codes).__name__)}")
        if codes.dim() < 1:
            raise ValueError("VectorQuantizer.decode expects codes of shape (B, *spatial), got a scalar")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), got range "
                             f"[{int(codes.min())}, {int(codes.max())}]")
        vectors = F.embedding(codes.long(), self.embedding)  # (B, *spatial, D)
        return vectors.movedim(-1, 1)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """Quantize ``z`` ``(B, dim, *spatial)``; in training mode also update the codebook statistics.

        Returns quantized (straight-through, same shape and dtype as ``z``), codes ``(B, *spatial)``, the VQ
        loss (scalar) and metrics: ``perplexity``, ``usage`` (fraction of codes used in this batch),
        ``unused_codes`` (count, this batch), ``dead_codes`` (EMA count under the threshold),
        ``restarted`` (codes restarted this step), ``commitment_loss``, ``codebook_loss``.
        """
        _check_latent(z, self.dim, "VectorQuantizer")
        flat = _flatten(z).float()
        if self.training and not bool(self.initialized):
            self._init_kmeans(flat.detach())
        codes = nearest_code(flat.detach(), self.embedding.detach())
        q_flat = F.embedding(codes, self.embedding).float()

        commitment = F.mse_loss(flat, q_flat.detach())
        codebook_loss = F.mse_loss(q_flat, flat.detach()) if not self.ema else flat.new_zeros(())
        loss = self.beta * commitment + codebook_loss

        restarted = 0
        if self.training:
            self._ema_update(flat.detach(), codes)
            if self.dead_code_threshold > 0:
                restarted = self._restart_dead(flat.detach())

        q = _unflatten(q_flat, z.shape)
        quantized = z + (q.to(z.dtype) - z).detach()  # straight-through: value q, gradient identity to z
        codes = codes.reshape(z.shape[0], *z.shape[2:])
        used = int(torch.unique(codes).numel())
        metrics = {
            "perplexity": perplexity(codes, self.codebook_size),
            "usage": torch.tensor(used / self.codebook_size),
            "unused_codes": torch.tensor(float(self.codebook_size - used)),
            "dead_codes": (self.cluster_size < self.dead_code_threshold).sum().float(),
            "restarted": torch.tensor(float(restarted)),
            "commitment_loss": commitment.detach(),
            "codebook_loss": codebook_loss.detach(),
        }
        return QuantizerOutput(quantized=quantized, codes=codes, loss=loss, metrics=metrics)


# --------------------------------------------------------------------------------- ResidualVectorQuantizer


class ResidualVectorQuantizer(nn.Module):
    """Residual VQ (SoundStream; EnCodec): ``n_q`` codebooks, each quantizing what the previous ones left.

    ``r_0 = z``; stage i picks ``c_i = VQ_i(r_i)`` and passes ``r_{i+1} = r_i − e_{c_i}``; the output is
    ``Σ_i e_{c_i}``. Each stage's straight-through output is detached and the straight-through estimator is
    applied once on the summed output (as audiocraft does, which fixes encodec issue #25), so the encoder
    gets the decoder's gradient unchanged. The loss is the mean over the used stages of each stage's VQ loss
    (audiocraft's convention), each stage's commitment term pulling its residual towards its code.

    With ``quantizer_dropout=True``, each training forward uses ``n_q`` drawn uniformly from ``1..N``
    (SoundStream; audiocraft's ``randint(1, n_q + 1)``), so the first stages learn to work alone and the
    model serves several bitrates (under DDP the draw is broadcast from rank 0, so every replica runs the same
    stages); in eval mode all stages are used unless ``n_q`` is given. Extra keyword
    arguments (``beta``, ``ema``, ``decay``, ``dead_code_threshold``, ``kmeans_init``...) go to every
    :class:`VectorQuantizer` stage. Codes are ``(B, K, *spatial)``, K = stages used.
    """

    def __init__(self, dim: int, n_q: int, codebook_size: int, quantizer_dropout: bool = False,
                 **vq_kwargs) -> None:
        super().__init__()
        if not (isinstance(n_q, int) and n_q > 0):
            raise ValueError(f"n_q must be a positive int, got {n_q!r}")
        self.dim, self.n_q, self.codebook_size = dim, n_q, codebook_size
        self.quantizer_dropout = bool(quantizer_dropout)
        self.layers = nn.ModuleList(VectorQuantizer(dim, codebook_size, **vq_kwargs) for _ in range(n_q))

    def _resolve_n_q(self, n_q: int | None) -> int:
        if n_q is None:
            return self.n_q
        if not (isinstance(n_q, int) and 1 <= n_q <= self.n_q):
            raise ValueError(f"n_q must be an int in [1, {self.n_q}], got {n_q!r}")
        return n_q

    def forward(self, z: torch.Tensor, n_q: int | None = None) -> QuantizerOutput:
        """Quantize ``z`` ``(B, dim, *spatial)`` with ``n_q`` stages (default: all, or random in training with
        quantizer dropout). Returns quantized ``(B, dim, *spatial)`` (straight-through on the sum), codes
        ``(B, n_q, *spatial)``, the mean stage loss, and metrics (``n_q``, mean ``perplexity``/``usage``
        over stages, per-stage ``perplexity_i``, ``dead_codes`` summed over stages)."""
        _check_latent(z, self.dim, "ResidualVectorQuantizer")
        if n_q is None and self.training and self.quantizer_dropout:
            drawn = torch.randint(1, self.n_q + 1, (1,), device=z.device)
            if _dist_on():  # every replica must run the same stages (their EMA all-reduces must pair up)
                dist.broadcast(drawn, src=0)
            n_q = int(drawn)
        n_q = self._resolve_n_q(n_q)
        residual = z
        total = torch.zeros_like(z)
        codes, losses, perplexities, usages, dead = [], [], [], [], []
        for layer in self.layers[:n_q]:
            out = layer(residual)
            q = out.quantized.detach()
            residual = residual - q
            total = total + q
            codes.append(out.codes)
            losses.append(out.loss)
            perplexities.append(out.metrics["perplexity"])
            usages.append(out.metrics["usage"])
            dead.append(out.metrics["dead_codes"])
        quantized = z + (total - z).detach()
        summary = {
            "perplexity": torch.stack(perplexities).mean(),
            "usage": torch.stack(usages).mean(),
            "dead_codes": torch.stack(dead).sum(),
            "n_q": torch.tensor(float(n_q)),
        }
        summary.update({f"perplexity_{i}": p for i, p in enumerate(perplexities)})
        return QuantizerOutput(quantized=quantized, codes=torch.stack(codes, dim=1),
                               loss=torch.stack(losses).mean(), metrics=summary)

    @torch.no_grad()
    def encode(self, z: torch.Tensor, n_q: int | None = None) -> torch.Tensor:
        """Codes of ``z`` ``(B, dim, *spatial)`` with the first ``n_q`` stages → long ``(B, n_q, *spatial)``."""
        _check_latent(z, self.dim, "ResidualVectorQuantizer.encode")
        n_q = self._resolve_n_q(n_q)
        residual, codes = z, []
        for layer in self.layers[:n_q]:
            c = layer.encode(residual)
            residual = residual - layer.decode(c)
            codes.append(c)
        return torch.stack(codes, dim=1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Sum of the stage vectors for ``codes`` ``(B, K, *spatial)`` with K ≤ n_q → ``(B, dim, *spatial)``."""
        if not isinstance(codes, torch.Tensor) or codes.dim() < 2:
            raise ValueError(f"ResidualVectorQuantizer.decode expects codes of shape (B, K, *spatial), got "
                             f"{tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__}")
        k = codes.shape[1]
        if not 1 <= k <= self.n_q:
            raise ValueError(f"codes have K={k} stages but this quantizer has n_q={self.n_q}")
        out = self.layers[0].decode(codes[:, 0])
        for i in range(1, k):
            out = out + self.layers[i].decode(codes[:, i])
        return out


def bitrate(frame_rate: float, n_q: int, codebook_size: int) -> float:
    """Bits per second of a token stream: ``frame_rate`` (frames/s) × ``n_q`` codebooks × log2(``codebook_size``).

    EnCodec 24 kHz: 75 frames/s × 8 codebooks × log2(1024) = 6000 bps (6 kbps); 750 bps per codebook.
    """
    if frame_rate <= 0 or n_q < 1 or codebook_size < 2:
        raise ValueError(f"need frame_rate > 0, n_q >= 1, codebook_size >= 2; got {frame_rate}, {n_q}, "
                         f"{codebook_size}")
    return float(frame_rate) * n_q * math.log2(codebook_size)
