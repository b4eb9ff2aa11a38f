"""Small models the course trained on its own generated data, shipped in the repository with a card each.

Each model lives in ``course_lib/pretrained/<name>/``: ``model.safetensors`` + ``config.json`` (what the
model's ``from_pretrained`` reads), ``card.json`` (how it was trained, on what, and the metrics it
reached on held-out clips) and ``CARD.md`` (the same for people). Nothing is downloaded::

    from course_lib import pretrained
    pretrained.available()                    # ['mel_vqvae_course', ...]
    vqvae = pretrained.load("mel_vqvae_course")
    pretrained.measure("mel_vqvae_course")    # re-measures the card's metrics on fresh held-out clips

The tests call :func:`measure` and :func:`compare_with_card`, and fail if a card's numbers are not reproduced
within the tolerance the card states (:func:`metric_tolerance`).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch

PRETRAINED_DIR = Path(__file__).resolve().parent

# name -> (model class, measuring function). A model is listed here once its folder is committed.
_REGISTRY: dict[str, tuple[str, str]] = {
    "mel_vqvae_course": ("course_lib.codecs.mel_vqvae:MelVQVAE", "course_lib.pretrained.measures:measure_mel_vqvae"),
    "mel_vqvae_v2": ("course_lib.codecs.mel_vqvae:MelVQVAE", "course_lib.pretrained.measures:measure_mel_vqvae"),
    "codec_course": ("course_lib.codecs.codec:Codec", "course_lib.pretrained.measures:measure_codec"),
    "melgan_course": ("course_lib.vocoders.melgan:MelGAN", "course_lib.pretrained.measures:measure_melgan"),
    "vocos_course": ("course_lib.vocoders.vocos:Vocos", "course_lib.pretrained.measures:measure_vocoder"),
    "text_encoder_course": ("course_lib.text.course_encoder:CourseTextEncoder",
                            "course_lib.text.captions:measure_text_encoder"),
    "text_encoder_v2": ("course_lib.text.course_encoder:CourseTextEncoder", "course_lib.text.captions:measure_text_encoder"),
    "audiogen_course": ("course_lib.lm.model:AudioLM", "course_lib.pretrained.measures:measure_audiogen"),
    "diffsound_course": ("course_lib.diffusion.diffsound:DiffsoundModel",
                         "course_lib.pretrained.measures:measure_diffsound"),
    "diffsound_ar_course": ("course_lib.lm.model:AudioLM", "course_lib.pretrained.measures:measure_diffsound"),
    "diffsound_v2": ("course_lib.diffusion.diffsound:DiffsoundModel", "course_lib.pretrained.measures:measure_diffsound"),
    "diffsound_ar_v2": ("course_lib.lm.model:AudioLM", "course_lib.pretrained.measures:measure_diffsound"),
    "n2m_generator_course": ("course_lib.pipelines.noise2music:Noise2MusicStage",
                             "course_lib.pretrained.measures:measure_n2m_generator"),
    "n2m_cascader_course": ("course_lib.pipelines.noise2music:Noise2MusicStage",
                            "course_lib.pretrained.measures:measure_n2m_cascader"),
    "audio_classifier_course": ("course_lib.metrics.embeddings:CourseAudioClassifier",
                                "course_lib.metrics.embeddings:measure_audio_classifier"),
    "agreement_course": ("course_lib.metrics.agreement:AgreementModel", "course_lib.metrics.agreement:measure_agreement"),
    "audio_classifier_v2": ("course_lib.metrics.embeddings:CourseAudioClassifier",
                            "course_lib.metrics.embeddings:measure_audio_classifier"),
    "agreement_v2": ("course_lib.metrics.agreement:AgreementModel", "course_lib.metrics.agreement:measure_agreement"),
}


def _resolve(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def available() -> list[str]:
    """Names of the shipped models whose weights are present."""
    return sorted(name for name in _REGISTRY if (PRETRAINED_DIR / name / "model.safetensors").is_file())


def path(name: str) -> Path:
    """Folder of a shipped model; a clear error lists the names that exist."""
    if name not in _REGISTRY:
        raise KeyError(f"no shipped model {name!r}; available: {available()}")
    folder = PRETRAINED_DIR / name
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"{folder} has no model.safetensors: the weights of {name!r} are not in this checkout")
    return folder


def card(name: str) -> dict[str, Any]:
    """The model card (training command, data, steps, time, metrics) as a dict."""
    return json.loads((path(name) / "card.json").read_text())


def load(name: str) -> torch.nn.Module:
    """Load a shipped model in eval mode (safetensors + JSON config; nothing unpickled)."""
    folder = path(name)  # checks the name first, with a message listing what exists
    return _resolve(_REGISTRY[name][0]).from_pretrained(folder)


def measure(name: str, model: torch.nn.Module | None = None, **kwargs: Any) -> dict[str, float]:
    """Recompute the card's metrics for ``name`` on freshly generated held-out (test-split) clips.

    ``model`` measures another model of the same kind with ``name``'s measure and settings (e.g. a fine-tuned
    or a damaged copy); ``kwargs`` override the card's settings."""
    model = load(name) if model is None else model  # load checks the name
    settings = {**card(name)["evaluation"]["settings"], **kwargs}
    return _resolve(_REGISTRY[name][1])(model, **settings)


def metric_tolerance(evaluation: dict[str, Any], key: str) -> float:
    """The absolute tolerance within which a re-measured ``key`` reproduces a card's ``evaluation`` block.

    Another CPU computes the same model in another float order (a kernel for another matrix shape, another
    vector width, another thread split), so results agree to float rounding, not bit for bit. For a
    continuous metric that is a small relative change: ``relative_tolerance × |value|`` (at least 1e-3). For a
    rate over ``n`` prompts (``rate_counts[key] = n``) it is not: when one sampled token falls the other way,
    a generative model's whole clip changes and the rate moves by ``1/n``. So a rate may differ by
    ``rate_flips`` prompts, ``rate_flips / n``, or by the relative tolerance if that is larger. A damaged model
    moves far more (``tests/test_pretrained.py`` shows it)."""
    value = abs(float(evaluation["metrics"][key]))
    tolerance = max(evaluation["relative_tolerance"] * value, 1e-3)
    n = evaluation.get("rate_counts", {}).get(key)
    if n:
        tolerance = max(tolerance, evaluation.get("rate_flips", 0) / n + 1e-4)  # + the 4-decimal rounding
    return tolerance


def compare_with_card(name: str, measured: dict[str, float]) -> list[str]:
    """Every way ``measured`` fails to reproduce ``name``'s card: one line each, empty when it reproduces it."""
    evaluation = card(name)["evaluation"]
    expected = evaluation["metrics"]
    problems = [f"{name}: {key} is on the card but was not measured" for key in expected if key not in measured]
    problems += [f"{name}: {key} was measured but is not on the card" for key in measured if key not in expected]
    for key in expected:
        if key in measured:
            tolerance = metric_tolerance(evaluation, key)
            if not abs(float(measured[key]) - float(expected[key])) <= tolerance:
                problems.append(f"{name}: {key} measured {measured[key]}, card says {expected[key]} (tolerance "
                                f"{tolerance:.4g})")
    return problems
