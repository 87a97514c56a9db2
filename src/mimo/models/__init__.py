"""Models: the frame-causal DiT backbone and training-only heads."""

from __future__ import annotations

from mimo.config import Config
from mimo.models.dit import FrameCausalDiT


def build_backbone(config: Config) -> FrameCausalDiT:
    """The backbone a config describes (frames of data.channels × data.frame_size²)."""
    return FrameCausalDiT(
        config.model,
        config.data.channels,
        config.data.frame_size,
        config.num_classes,
        history_conditioned=config.diffusion.history_conditioned,
    )
