"""Shared neural-network building blocks (torch only): adversarial losses, and layers used by several models.

``course_lib.nn.gan``: hinge losses and feature matching for every GAN in the course (MelGAN, the codec).
``course_lib.nn.attention``: multi-head self/cross attention with a KV cache.
``course_lib.nn.transformer``: pre-norm transformer blocks (cross-attention, adaptive LayerNorm).
``course_lib.nn.guidance``: classifier-free guidance (condition dropout, guided mixing).
"""

from course_lib.nn.attention import KVCache, MultiHeadAttention, causal_mask
from course_lib.nn.gan import discriminator_hinge_loss, feature_matching_loss, generator_hinge_loss
from course_lib.nn.guidance import cfg_mix, drop_condition, null_mask_like
from course_lib.nn.transformer import (
    AdaptiveLayerNorm,
    Transformer,
    TransformerBlock,
    TransformerCache,
    sinusoidal_embedding,
)

__all__ = ["discriminator_hinge_loss", "generator_hinge_loss", "feature_matching_loss",
           "MultiHeadAttention", "KVCache", "causal_mask",
           "TransformerBlock", "Transformer", "TransformerCache", "AdaptiveLayerNorm", "sinusoidal_embedding",
           "drop_condition", "cfg_mix", "null_mask_like"]
