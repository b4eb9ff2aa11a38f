"""Shared neural-network building blocks (torch only): adversarial losses, and layers used by several models.

``course_lib.nn.gan``: hinge losses and feature matching for every GAN in the course (MelGAN, the codec).
"""

from course_lib.nn.gan import discriminator_hinge_loss, feature_matching_loss, generator_hinge_loss

__all__ = ["discriminator_hinge_loss", "generator_hinge_loss", "feature_matching_loss"]
