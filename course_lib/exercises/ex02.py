"""Checks for exercise notebook 02, the neural codec: bitrate, residual-VQ encoding, multi-resolution STFT loss,
μ-law companding.

Each checker compares the student's function with a reference written out here (or the library's:
:func:`course_lib.quantize.nearest_code`, :func:`torchaudio.functional.mu_law_encoding`) on hand-made and random
inputs, and turns the first mismatch into a hint naming the likeliest mistake: bits instead of kilobits,
``K`` instead of ``log2 K``, the sum of the strides instead of their product; every RVQ stage quantizing
``z`` instead of the residual; a sum over resolutions, a missing log, a power spectrum; truncation instead
of rounding, ``log`` instead of ``log1p``, a lost sign.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import torch
import torchaudio.functional as AF

from course_lib.exercises.checks import CheckContext, WrongAnswer, expect_tensor, register_task, seeded
from course_lib.quantize import is_nearest, nearest_code

LESSON = "02_neural_codec"

__all__ = ["LESSON", "reference_mr_stft_loss", "reference_rvq_encode"]


def _number(value: object, fn_name: str) -> float:
    if value is None:
        raise WrongAnswer(f"{fn_name} returned None: did you forget the `return` statement?")
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.item())
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    raise WrongAnswer(f"{fn_name} should return a number (a float), got {type(value).__name__} {value!r}")


def _unchanged(before: Sequence[torch.Tensor], after: Sequence[torch.Tensor], where: str) -> None:
    if not all(torch.equal(a, b) for a, b in zip(before, after)):
        raise WrongAnswer(f"{where} your function changed its inputs in place; compute on new tensors")


# --------------------------------------------------------------------------------------------------------
# Task 1: bitrate
# --------------------------------------------------------------------------------------------------------

BITRATE_CASES: list[tuple[int, tuple[int, ...], int, int]] = [
    (16_000, (8, 5, 4, 2), 4, 2048),  # AudioGen's codec: 2.2 kbps
    (24_000, (8, 5, 4, 2), 8, 1024),  # EnCodec 24 kHz at 6 kbps
    (24_000, (8, 5, 4, 2), 32, 1024),  # ... and at 24 kbps
    (16_000, (4, 4, 2), 1, 256),
    (44_100, (8, 8, 4, 2), 9, 1024),  # a frame rate that is not an integer
    (16_000, (8, 5, 4, 2), 3, 1000),  # a codebook size that is not a power of two
]


@register_task("codec_bitrate", LESSON, hint_on_error="you need the hop (product of ratios), the frame rate and log2.")
def check_codec_bitrate_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(sample_rate, ratios, n_q, codebook_size)`` must return the bitrate in kbps."""
    for rate, ratios, n_q, size in BITRATE_CASES:
        hop = math.prod(ratios)
        expected = rate / hop * n_q * math.log2(size) / 1000  # = course_lib.quantize.bitrate(...) / 1000
        got = _number(ctx.call(fn, rate, list(ratios), n_q, size), "codec_bitrate")
        if math.isclose(got, expected, rel_tol=1e-6):
            continue
        where = (f"for {rate} Hz, ratios {list(ratios)}, {n_q} codebooks of {size} entries expected "
                 f"{expected:.6g} kbps, got {got:.6g}")
        frames = rate / hop
        variants = [
            (expected * 1000, "that is bits per second; the task asks for kilobits per second (divide by 1000)"),
            (expected * 1000 / 1024, "a kilobit here is 1000 bits, not 1024 (bitrates use SI prefixes)"),
            (frames * n_q * size / 1000, "an index into a codebook of K entries carries log2(K) bits, not K"),
            (frames * n_q * math.ceil(math.log2(size)) / 1000,
             "use log2(K) itself, not rounded up: the ideal bitrate counts fractional bits"),
            (rate / sum(ratios) * n_q * math.log2(size) / 1000,
             "the hop is the PRODUCT of the strides (each downsamples what the previous one left), not their sum"),
            (frames * math.log2(size) / 1000, "each of the n_q codebooks sends one index per frame: multiply by n_q"),
            (rate * n_q * math.log2(size) / 1000,
             "tokens come at the frame rate sample_rate / hop, not at the sample rate"),
        ]
        for value, hint in variants:
            if math.isclose(got, value, rel_tol=1e-6):
                raise WrongAnswer(f"{where}: {hint}")
        raise WrongAnswer(f"{where}: bitrate = (sample_rate / prod(ratios)) × n_q × log2(codebook_size) bits/s")


# --------------------------------------------------------------------------------------------------------
# Task 2: residual VQ encoding
# --------------------------------------------------------------------------------------------------------


def reference_rvq_encode(z: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """Residual-VQ codes of ``z`` ``(B, D, T)`` with ``codebooks`` ``(K, N, D)`` → long ``(B, K, T)``."""
    b, d, t = z.shape
    residual = z.movedim(1, -1).reshape(-1, d)
    codes = []
    for codebook in codebooks:
        index = nearest_code(residual, codebook)
        residual = residual - codebook[index]
        codes.append(index)
    return torch.stack(codes, dim=1).reshape(b, t, -1).permute(0, 2, 1)


def _rvq_cases() -> list[tuple[torch.Tensor, torch.Tensor]]:
    hand_z = torch.tensor([[[4.9, 7.2, -0.6]]])  # (1, 1, 3)
    hand_books = torch.tensor([[[0.0], [4.0], [8.0]], [[-1.0], [0.0], [1.0]]])  # (2, 3, 1)
    g = seeded(2)
    scales = torch.tensor([1.0, 0.5, 0.25, 0.125])[:, None, None]  # later stages refine: smaller codes
    books = torch.randn(4, 16, 8, generator=g) * scales
    z = torch.randn(2, 8, 40, generator=g)
    books2 = torch.randn(3, 32, 5, generator=g) * torch.tensor([2.0, 0.7, 0.2])[:, None, None]
    z2 = torch.randn(3, 5, 17, generator=g) * 2
    return [(hand_z, hand_books), (z, books), (z2, books2)]


def _is_nearest_path(z: torch.Tensor, codebooks: torch.Tensor, codes: torch.Tensor) -> bool:
    """True if every stage's code is (up to float rounding) a nearest code of the residual that the
    student's own earlier choices leave: accepts ties broken differently."""
    d = z.shape[1]
    residual = z.movedim(1, -1).reshape(-1, d).double()
    flat_codes = codes.permute(0, 2, 1).reshape(-1, codes.shape[1])
    for k, codebook in enumerate(codebooks.double()):
        if not is_nearest(residual, codebook, flat_codes[:, k]):
            return False
        residual = residual - codebook[flat_codes[:, k]]
    return True


@register_task("rvq_encode", LESSON, hint_on_error="loop over the K codebooks; keep a residual; use nearest codes.")
def check_rvq_encode_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(z (B, D, T), codebooks (K, N, D))`` must return the long ``(B, K, T)`` residual-VQ codes."""
    for z, books in _rvq_cases():
        expected = reference_rvq_encode(z, books)
        z_in, books_in = z.clone(), books.clone()
        got = expect_tensor(ctx.call(fn, z_in, books_in), "rvq_encode", "a tensor of code indices")
        b, d, t = z.shape
        k = books.shape[0]
        where = f"for z of shape {(b, d, t)} and codebooks of shape {tuple(books.shape)}"
        _unchanged((z, books), (z_in, books_in), where)
        if got.is_floating_point() or got.is_complex():
            raise WrongAnswer(f"{where} you returned {got.dtype} values: return integer indices (argmin gives "
                              "torch.long), not the code vectors or distances")
        if got.shape != expected.shape:
            if got.shape in ((b, t, k), (k, b, t)):
                hint = "stack the stages on dim 1 so that codes[:, k] are stage k's indices"
            else:
                hint = "one index per stage and frame"
            raise WrongAnswer(f"{where} expected codes of shape (B, K, T) = {tuple(expected.shape)}, got "
                              f"{tuple(got.shape)}: {hint}")
        got = got.long()
        if (got < 0).any() or (got >= books.shape[1]).any():
            raise WrongAnswer(f"{where} some indices fall outside [0, {books.shape[1]}): each is a row of a codebook")
        if torch.equal(got, expected) or _is_nearest_path(z, books, got):
            continue
        flat = z.movedim(1, -1).reshape(-1, d)
        no_residual = torch.stack([nearest_code(flat, cb) for cb in books], 1).reshape(b, t, k).permute(0, 2, 1)
        inner = []
        residual = flat
        for cb in books:
            index = (residual @ cb.T).argmax(dim=1)
            residual = residual - cb[index]
            inner.append(index)
        inner_codes = torch.stack(inner, 1).reshape(b, t, k).permute(0, 2, 1)
        last_only, previous = [], None
        for cb in books:
            target = flat if previous is None else flat - previous
            index = nearest_code(target, cb)
            previous = cb[index]
            last_only.append(index)
        last_only_codes = torch.stack(last_only, 1).reshape(b, t, k).permute(0, 2, 1)
        if torch.equal(got, no_residual):
            hint = ("every stage quantized z itself: stage k must quantize the residual r_k = z − (sum of the "
                    "vectors chosen by the stages before it)")
        elif torch.equal(got, inner_codes):
            hint = "the nearest code minimises ‖r − e‖², which is not the largest inner product r·e"
        elif torch.equal(got, last_only_codes):
            hint = ("your residual only removes the previous stage's vector from z: subtract every earlier "
                    "stage's vector (update the residual, r ← r − e, and keep going)")
        elif torch.equal(got[:, 0], expected[:, 0]):
            bad = int((got != expected).any(dim=(0, 2)).nonzero()[0])
            hint = (f"stage 0 is right but stage {bad} is not: after each stage, subtract the chosen code vectors "
                    "from the residual before the next stage")
        else:
            hint = ("stage 0 is already wrong: move the feature axis last (z.movedim(1, -1)) so that each frame "
                    "is one D-dimensional vector, then take its nearest code")
        raise WrongAnswer(f"{where}: {hint}")


# --------------------------------------------------------------------------------------------------------
# Task 3: multi-resolution STFT loss
# --------------------------------------------------------------------------------------------------------

MAG_FLOOR = 1e-7


def _magnitudes(wav: torch.Tensor, n_fft: int, hop: int, power: float = 1.0) -> torch.Tensor:
    spec = torch.stft(wav, n_fft, hop, window=torch.hann_window(n_fft, dtype=wav.dtype), return_complex=True)
    return spec.abs().clamp_min(MAG_FLOOR).pow(power)


def reference_mr_stft_loss(estimate: torch.Tensor, target: torch.Tensor, fft_sizes: Sequence[int] = (512, 1024, 2048),
                           *, hop_div: int = 4, power: float = 1.0, log: bool = True, mean: bool = True,
                           norm_by_estimate: bool = False, squared_sc: bool = False) -> torch.Tensor:
    """Multi-resolution STFT loss (Yamamoto et al. 2020, Parallel WaveGAN, eqs. 4-6) of ``(B, T)`` waveforms.

    Per resolution (Hann window ``n_fft``, hop ``n_fft // 4``, centred STFT, magnitudes floored at 1e-7):
    spectral convergence ``‖S_x − S_y‖_F / ‖S_x‖_F`` (x = target, y = estimate, norms over the whole batch)
    plus log-magnitude ``mean |log S_x − log S_y|``; the loss is the mean over resolutions. The keyword
    switches build the wrong variants the check recognises.
    """
    total = estimate.new_zeros(())
    for n_fft in fft_sizes:
        s_y = _magnitudes(estimate, n_fft, max(n_fft // hop_div, 1), power)
        s_x = _magnitudes(target, n_fft, max(n_fft // hop_div, 1), power)
        sc = (s_x - s_y).norm() / (s_y if norm_by_estimate else s_x).norm()
        total = total + (sc ** 2 if squared_sc else sc)
        total = total + ((s_x.log() - s_y.log()) if log else (s_x - s_y)).abs().mean()
    return total / len(fft_sizes) if mean else total


def _mr_stft_cases() -> list[tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]]:
    g = seeded(3)
    t = torch.arange(4000) / 16_000
    target = 0.5 * torch.sin(2 * math.pi * 440 * t)[None].repeat(2, 1) + 0.01 * torch.randn(2, 4000, generator=g)
    estimate = target + 0.05 * torch.randn(2, 4000, generator=g)
    noise = torch.randn(3, 3000, generator=g) * 0.3
    smooth = torch.nn.functional.avg_pool1d(noise[:, None], 5, 1, 2)[:, 0]  # a low-passed copy
    return [(estimate, target, (512, 1024, 2048)), (smooth, noise, (64, 128, 256, 512)), (target, target, (256,))]


@register_task("multi_resolution_stft_loss", LESSON,
               hint_on_error="use torch.stft(x, n_fft, n_fft // 4, window=torch.hann_window(n_fft), return_complex=True).")
def check_mr_stft_loss_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(estimate (B, T), target (B, T), fft_sizes)`` must return the scalar multi-resolution STFT loss."""
    for estimate, target, sizes in _mr_stft_cases():
        expected = float(reference_mr_stft_loss(estimate, target, sizes))
        e_in, t_in = estimate.clone(), target.clone()
        value = ctx.call(fn, e_in, t_in, sizes)
        where = f"for waveforms of shape {tuple(estimate.shape)} and fft_sizes {list(sizes)}"
        _unchanged((estimate, target), (e_in, t_in), where)
        if isinstance(value, torch.Tensor) and value.numel() != 1:
            raise WrongAnswer(f"{where} expected a scalar loss, got a tensor of shape {tuple(value.shape)}: average "
                              "(or take norms) over every time-frequency bin and the batch")
        got = _number(value, "multi_resolution_stft_loss")
        if math.isclose(got, expected, rel_tol=1e-4, abs_tol=1e-6):
            continue
        if expected == 0.0:
            raise WrongAnswer(f"{where}: identical waveforms must give a loss of 0, got {got:.4g}")
        variants = [
            (dict(mean=False), "average the per-resolution losses (divide by the number of resolutions), not sum them"),
            (dict(log=False), "the magnitude term compares LOG magnitudes: mean |log S_x − log S_y|"),
            (dict(norm_by_estimate=True), "spectral convergence divides by the TARGET's norm ‖S_x‖, not the estimate's"),
            (dict(power=2.0), "use magnitudes |STFT|, not the power |STFT|²"),
            (dict(squared_sc=True), "spectral convergence is the ratio of Frobenius norms, not its square"),
            (dict(hop_div=1), "the hop is n_fft // 4 (75% overlap), not n_fft"),
            (dict(hop_div=2), "the hop is n_fft // 4 (75% overlap), not n_fft // 2"),
        ]
        for kwargs, hint in variants:
            if math.isclose(got, float(reference_mr_stft_loss(estimate, target, sizes, **kwargs)), rel_tol=1e-4):
                raise WrongAnswer(f"{where} expected {expected:.5g}, got {got:.5g}: {hint}")
        raise WrongAnswer(f"{where} expected {expected:.5g}, got {got:.5g}: for each n_fft, add ‖S_x − S_y‖_F / "
                          "‖S_x‖_F and mean |log S_x − log S_y| (magnitudes floored at 1e-7), then average over "
                          "the resolutions")


# --------------------------------------------------------------------------------------------------------
# Task 4: μ-law companding
# --------------------------------------------------------------------------------------------------------


def _mu_law_cases() -> list[tuple[torch.Tensor, int]]:
    g = seeded(4)
    ramp = torch.linspace(-1, 1, 2001)
    speechy = (torch.randn(4000, generator=g) * 0.05).clamp(-1, 1)  # mostly quiet samples: where μ-law shines
    return [(ramp, 255), (speechy, 255), (torch.tensor([-1.0, -0.5, 0.0, 1e-4, 0.5, 1.0]), 15)]


def _companded(x: torch.Tensor, mu: int) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)


def _mostly_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal but for float32-vs-float64 rounding at a few level boundaries (≥ 99% of the entries agree)."""
    return a.shape == b.shape and float((a == b).double().mean()) >= 0.99


@register_task("mu_law_encode", LESSON, hint_on_error="F(x) = sign(x)·ln(1 + μ|x|)/ln(1 + μ), then map [-1, 1] to 0..μ.")
def check_mu_law_encode_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(x (T,), mu)`` must return the long μ-law levels ``0..mu`` of :func:`torchaudio.functional.mu_law_encoding`."""
    for x, mu in _mu_law_cases():
        expected = AF.mu_law_encoding(x, mu + 1)
        x_in = x.clone()
        got = expect_tensor(ctx.call(fn, x_in, mu), "mu_law_encode", "a tensor of levels")
        where = f"for {x.numel()} samples with mu={mu}"
        _unchanged((x,), (x_in,), where)
        if got.shape != expected.shape:
            raise WrongAnswer(f"{where} expected one level per sample, shape {tuple(expected.shape)}, got "
                              f"{tuple(got.shape)}")
        if got.is_floating_point():
            raise WrongAnswer(f"{where} you returned {got.dtype} values: return integer levels (torch.long), "
                              "e.g. with .long() after rounding")
        got = got.long()
        scaled = (_companded(x.double(), mu) + 1) / 2 * mu
        tie = ((scaled - scaled.floor()) - 0.5).abs() < 1e-6  # round-half-even may differ here, harmlessly
        wrong = (got != expected) & ~(tie & ((got - expected).abs() <= 1))
        if not wrong.any():
            continue
        i = int(wrong.nonzero()[0])
        detail = f"x = {float(x[i]):.4g} should be level {int(expected[i])}, got {int(got[i])}"
        if got.min() < 0 or got.max() > mu:
            hint = (f"levels must lie in 0..{mu}: map F(x) ∈ [-1, 1] to [0, μ] with (F(x) + 1) / 2 · μ, then round "
                    "(and if x = 0 gives a wild level, you took ln(μ|x|) = −∞: use ln(1 + μ|x|), torch.log1p)")
        elif _mostly_equal(got, scaled.floor().long()):
            hint = "round to the nearest level (floor(v + 0.5)), do not truncate"
        elif _mostly_equal(got, ((x.double() + 1) / 2 * mu + 0.5).floor().long()):
            hint = ("that is uniform (linear) quantization: compand first with F(x) = sign(x)·ln(1 + μ|x|)/ln(1 + μ), "
                    "which spends more levels on quiet samples")
        elif _mostly_equal(got, ((_companded(x.double().abs(), mu) + 1) / 2 * mu + 0.5).floor().long()):
            hint = "keep the sign of x: F(x) = sign(x)·ln(1 + μ|x|)/ln(1 + μ)"
        else:
            hint = "use ln(1 + μ|x|) (torch.log1p), not ln(μ|x|), and divide by ln(1 + μ)"
        raise WrongAnswer(f"{where}: {detail}; {hint}")
