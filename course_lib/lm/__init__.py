"""AudioGen-style language modelling of codec tokens: codebook patterns, the text-conditioned LM, sampling.

``course_lib.lm.patterns``: flattening / parallel / delay interleaving of codes ``(B, K, T)``;
``course_lib.lm.model``: :class:`AudioLM` and its config; ``course_lib.lm.sampling``: top-k/top-p,
classifier-free guidance, KV-cached :func:`generate` with audio continuation; ``course_lib.lm.musicgen_hf``:
:func:`lm_from_musicgen`, transformers' MusicGen decoder loaded into an :class:`AudioLM` (same logits).
"""

from course_lib.lm.model import PAPER_CONFIGS, AudioLM, AudioLMConfig
from course_lib.lm.musicgen_hf import lm_config_from_musicgen, lm_from_musicgen
from course_lib.lm.patterns import DelayPattern, FlatteningPattern, ParallelPattern, Pattern, make_pattern
from course_lib.lm.sampling import (
    generate,
    guided_logits,
    sample_next,
    time_generation,
    top_k_filter,
    top_p_filter,
)

__all__ = ["AudioLM", "AudioLMConfig", "PAPER_CONFIGS", "Pattern", "FlatteningPattern", "ParallelPattern",
           "DelayPattern", "make_pattern", "generate", "guided_logits", "sample_next", "time_generation",
           "top_k_filter", "top_p_filter", "lm_config_from_musicgen", "lm_from_musicgen"]
