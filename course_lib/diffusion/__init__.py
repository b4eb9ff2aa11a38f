"""Diffusion models of the course: discrete mask-and-replace diffusion (Diffsound / VQ-Diffusion).

``course_lib.diffusion.discrete``: the mask-and-replace process (:class:`MaskReplaceSchedule`,
:class:`DiscreteDiffusion`: closed-form q(x_t | x_0), posterior, loss, truncation and strided sampling);
``course_lib.diffusion.diffsound``: Diffsound's token decoder (:class:`DiffsoundModel`, :class:`DiffsoundConfig`).
"""

from course_lib.diffusion.diffsound import PAPER_CONFIG as DIFFSOUND_PAPER_CONFIG
from course_lib.diffusion.diffsound import DiffsoundConfig, DiffsoundModel
from course_lib.diffusion.discrete import (
    LOG_ZERO,
    DiscreteDiffusion,
    MaskReplaceSchedule,
    index_to_log_onehot,
    log_add_exp,
)

__all__ = ["MaskReplaceSchedule", "DiscreteDiffusion", "LOG_ZERO", "index_to_log_onehot", "log_add_exp",
           "DiffsoundConfig", "DiffsoundModel", "DIFFSOUND_PAPER_CONFIG"]
