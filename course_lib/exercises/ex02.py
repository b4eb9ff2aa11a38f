"""Checks for exercise notebook 02, the neural codec: bitrate, one codec training step, multi-resolution STFT
loss, μ-law companding.

Each checker compares the student's function with a reference written out here (or the library's:
:class:`course_lib.codecs.codec.Codec`, :func:`torchaudio.functional.mu_law_encoding`) on hand-made and random
inputs, and turns the first mismatch into a hint naming the likeliest mistake: bits instead of kilobits,
``K`` instead of ``log2 K``, the sum of the strides instead of their product; a training step without the
commitment term, with unweighted terms, without gradient clipping or without ``zero_grad``; a sum over
resolutions, a missing log, a power spectrum; truncation instead of rounding, ``log`` instead of ``log1p``, a
lost sign."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from torch import nn

from course_lib.codecs.codec import Codec, CodecConfig
from course_lib.codecs.losses import MultiScaleMelLoss
from course_lib.exercises.checks import (
    CheckContext,
    PlainSGD,
    WrongAnswer,
    expect_tensor,
    register_task,
    seeded,
)

LESSON = "02_neural_codec"

__all__ = ["LESSON", "PlainSGD", "reference_codec_train_step", "reference_mr_stft_loss", "train_step_codec",
           "train_step_mel_loss"]


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
    (16_000, (8, 5, 4, 2), 4, 2048),  # audiocraft's released AudioGen codec: 2.2 kbps
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
# Task 2: one training step of the codec
# --------------------------------------------------------------------------------------------------------

TRAIN_STEP_LR = 0.05
TRAIN_STEP_MAX_NORM = 0.05  # small enough that every step of the check is clipped
L1_WEIGHT, MEL_WEIGHT = 0.1, 2.0  # audiocraft's weights for the time L1 and the multi-scale mel loss


def train_step_codec() -> Codec:
    """A tiny codec in training mode, the same every call: 2 filters, 4-d latent, no LSTM, 2 × 8 codes; no
    k-means and no dead-code restarts, so its EMA codebook update is deterministic."""
    torch.manual_seed(0)
    codec = Codec(CodecConfig(n_filters=2, dimension=4, lstm=0, n_q=2, codebook_size=8, kmeans_init=False,
                              dead_code_threshold=0.0))
    return codec.train()


def train_step_mel_loss() -> MultiScaleMelLoss:
    """The check's multi-scale mel loss: two scales (windows 64 and 128), enough for 960-sample clips."""
    return MultiScaleMelLoss(16_000, n_ffts=(64, 128))


def _train_step_batches() -> list[torch.Tensor]:
    g = seeded(7)
    t = torch.arange(960) / 16_000
    tones = torch.sin(2 * math.pi * torch.tensor([[220.0], [660.0]]) * t)[:, None]  # (2, 1, 960)
    return [0.5 * tones + 0.05 * torch.randn(2, 1, 960, generator=g) for _ in range(2)]


def reference_codec_train_step(codec: nn.Module, optimizer: torch.optim.Optimizer | PlainSGD, wav: torch.Tensor,
                               mel_loss: nn.Module, max_norm: float = 1.0, *, clip: bool = True,
                               zero_grad: bool = True, vq: bool = True, weights: tuple[float, float] = (
                                   L1_WEIGHT, MEL_WEIGHT)) -> float:
    """One step: ``recon, q = codec(wav)``, loss ``0.1·L1 + 2·mel + q.loss``, clear the gradients, backward,
    clip their global norm to ``max_norm``, optimizer step; returns the loss as a float. The keywords switch
    parts off or change the weights (the wrong versions the check names)."""
    recon, q = codec(wav)
    loss = weights[0] * F.l1_loss(recon, wav) + weights[1] * mel_loss(recon, wav) + (q.loss if vq else 0.0)
    if zero_grad:
        optimizer.zero_grad()
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(codec.parameters(), max_norm)
    optimizer.step()
    return float(loss.detach())


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _close(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.allclose(x, y, rtol=1e-5, atol=1e-7) for x, y in zip(a, b))


def _stale_gradients(codec: nn.Module) -> None:
    """Leave large gradients in every ``.grad``, as an earlier backward (a validation pass, a previous step)
    would: a step that does not clear them before its backward adds them to its own."""
    g = seeded(11)
    for p in codec.parameters():
        p.grad = 10 * torch.randn(p.shape, generator=g)


def _run_reference(steps: int, **wrong) -> tuple[list[float], list[list[torch.Tensor]]]:
    codec, mel_loss = train_step_codec(), train_step_mel_loss()
    _stale_gradients(codec)
    optimizer = PlainSGD(codec.parameters(), lr=TRAIN_STEP_LR)
    losses, params = [], []
    for batch in _train_step_batches()[:steps]:
        losses.append(reference_codec_train_step(codec, optimizer, batch, mel_loss, TRAIN_STEP_MAX_NORM, **wrong))
        params.append(_params(codec))
    return losses, params


@register_task("codec_train_step", LESSON,
               hint_on_error="forward, loss = 0.1·L1 + 2·mel + q.loss, zero_grad, backward, clip_grad_norm_, "
                             "step, return loss.item().")
def check_codec_train_step_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(codec, optimizer, wav, mel_loss, max_norm)`` → float, called for two steps on a tiny training-mode
    ``Codec`` (:class:`PlainSGD`; stale gradients left in ``.grad`` before the first); the returned losses and the weights after each step are compared with
    :func:`reference_codec_train_step` and with named wrong versions."""
    codec, mel_loss = train_step_codec(), train_step_mel_loss()
    _stale_gradients(codec)
    before = _params(codec)
    optimizer = PlainSGD(codec.parameters(), lr=TRAIN_STEP_LR)
    expected_losses, expected_params = _run_reference(2)
    where = (f"on a tiny Codec trained with SGD (lr {TRAIN_STEP_LR}) and max_norm={TRAIN_STEP_MAX_NORM}, for "
             "clips of shape (2, 1, 960)")
    for step, batch in enumerate(_train_step_batches()):
        value = ctx.call(fn, codec, optimizer, batch.clone(), mel_loss, TRAIN_STEP_MAX_NORM)
        if value is None:
            raise WrongAnswer("codec_train_step returned None: return the loss as a float, loss.item()")
        if isinstance(value, torch.Tensor):
            raise WrongAnswer(f"{where} you returned a tensor: return loss.item(), a Python float (a tensor keeps "
                              "its whole graph alive in a list of losses)")
        if not isinstance(value, (int, float)):
            raise WrongAnswer(f"{where} expected a float (loss.item()), got {type(value).__name__}")
        at = f"{where}, step {step + 1}:"
        if not math.isclose(value, expected_losses[step], rel_tol=1e-4, abs_tol=1e-6):
            if step == 0:
                with torch.no_grad():
                    recon, q = train_step_codec()(batch)
                    l1, mel, vq = (float(t) for t in (F.l1_loss(recon, batch), mel_loss(recon, batch), q.loss))
                if math.isclose(value, L1_WEIGHT * l1 + MEL_WEIGHT * mel, rel_tol=1e-4):
                    raise WrongAnswer(f"{at} your loss has no commitment term: add q.loss (the quantizer's "
                                      "commitment loss), or the encoder's latents drift away from the codebooks")
                if any(math.isclose(value, v, rel_tol=1e-4) for v in (l1 + mel + vq, l1 + mel, mel + vq)):
                    raise WrongAnswer(f"{at} weigh the terms: 0.1 × the waveform L1 plus 2 × the multi-scale mel "
                                      "loss plus q.loss (audiocraft's weights)")
                if math.isclose(value, MEL_WEIGHT * mel + vq, rel_tol=1e-4):
                    raise WrongAnswer(f"{at} the waveform L1 term is missing: 0.1 × F.l1_loss(recon, wav)")
            raise WrongAnswer(f"{at} returned loss {value:.5f}, expected {expected_losses[step]:.5f} (the loss "
                              "computed before the update: 0.1·L1(recon, wav) + 2·mel_loss(recon, wav) + q.loss)")
        params = _params(codec)
        if _close(params, expected_params[step]):
            continue
        if step == 0 and _close(params, before):
            raise WrongAnswer(f"{at} the weights did not change: call optimizer.step() after loss.backward(), and "
                              "do not zero the gradients between them")
        if step == 0 and _close(params, _run_reference(1, clip=False)[1][0]):
            raise WrongAnswer(f"{at} the update was not clipped: call torch.nn.utils.clip_grad_norm_("
                              "codec.parameters(), max_norm) between loss.backward() and optimizer.step()")
        if step == 0 and _close(params, _run_reference(1, zero_grad=False)[1][0]):
            raise WrongAnswer(f"{at} the gradients already in .grad were added to this step's: call "
                              "optimizer.zero_grad() before loss.backward() (gradients accumulate in .grad)")
        raise WrongAnswer(f"{at} the weights after your step differ from one SGD step on the clipped gradient "
                          "of 0.1·L1 + 2·mel + q.loss: order zero_grad, backward, clip, step")


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
