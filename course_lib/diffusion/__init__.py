"""Diffusion models of the course: discrete diffusion over tokens (Diffsound) and Gaussian diffusion over
waveforms (Noise2Music).

``course_lib.diffusion.discrete``: the mask-and-replace process (:class:`MaskReplaceSchedule`,
:class:`DiscreteDiffusion`: closed-form q(x_t | x_0), posterior, loss, truncation and strided sampling);
``course_lib.diffusion.diffsound``: Diffsound's token decoder (:class:`DiffsoundModel`, :class:`DiffsoundConfig`).
``course_lib.diffusion.gaussian``: Gaussian diffusion in continuous time (schedules, the ε / v / x0
parameterisations, the loss, DDPM and DDIM samplers, classifier-free guidance);
``course_lib.diffusion.unet1d``: Imagen's Efficient U-Net made 1-D, as Noise2Music used it (:class:`UNet1D`).
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
from course_lib.diffusion.gaussian import (
    GaussianDiffusion,
    GaussianDiffusionConfig,
    alpha_bar,
    alpha_sigma,
    eps_to_x0,
    guided,
    log_snr,
    v_to_eps,
    v_to_x0,
    x0_eps_to_v,
    x0_to_eps,
)
from course_lib.diffusion.unet1d import PAPER_CONFIGS as UNET1D_PAPER_CONFIGS
from course_lib.diffusion.unet1d import UNet1D, UNet1DConfig

__all__ = ["MaskReplaceSchedule", "DiscreteDiffusion", "LOG_ZERO", "index_to_log_onehot", "log_add_exp",
           "DiffsoundConfig", "DiffsoundModel", "DIFFSOUND_PAPER_CONFIG",
           "GaussianDiffusion", "GaussianDiffusionConfig", "alpha_bar", "alpha_sigma", "log_snr", "eps_to_x0",
           "x0_to_eps", "v_to_x0", "v_to_eps", "x0_eps_to_v", "guided", "UNet1D", "UNet1DConfig",
           "UNET1D_PAPER_CONFIGS"]
