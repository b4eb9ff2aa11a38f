"""Measuring generated and reconstructed audio.

``course_lib.metrics.spectral``: the log-mel distance in dB that every lesson uses to compare a reconstruction
(tokenizer, codec, vocoder) with its original.

Evaluation of generators (lesson 08):

* ``fad``: Gaussian fits of embeddings, the Fréchet distance with a stable matrix square root, the
  sample-size bias and FAD∞;
* ``kl``: the paired KL between a classifier's label distributions on reference and generated clips;
* ``embeddings``: the audio embedders behind FAD and KL (the course's CNN classifier, or a Hugging Face
  model by name or path);
* ``agreement``: a small contrastive text–audio model and the CLAP-style agreement score.
"""

from importlib import import_module

from course_lib.metrics.spectral import log_mel_distance_db

# Imported on first use, so `python -m course_lib.metrics.embeddings` / `.agreement` run cleanly. The function
# `fad` is NOT exported here: `course_lib.metrics.fad` is its submodule, and one name cannot be both (the package
# attribute flips to the submodule as soon as anything imports it). Use `from course_lib.metrics.fad import fad`.
_LAZY = {
    **{name: "course_lib.metrics.fad" for name in ("fad_infinity", "frechet_distance", "gaussian_stats",
                                                   "sample_size_bias")},
    **{name: "course_lib.metrics.kl" for name in ("paired_kl", "classifier_kl")},
    **{name: "course_lib.metrics.embeddings" for name in ("AudioEmbedder", "CourseAudioClassifier", "HFAudioEmbedder",
                                                          "load_audio_embedder", "train_course_classifier")},
    **{name: "course_lib.metrics.agreement" for name in ("AgreementModel", "HFClapAgreement", "agreement_score",
                                                         "info_nce_loss", "load_agreement_model",
                                                         "train_agreement_model")},
}

__all__ = ["log_mel_distance_db", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'course_lib.metrics' has no attribute {name!r}")
