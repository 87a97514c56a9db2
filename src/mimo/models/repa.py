"""REPA's projector h_φ (Yu et al. 2025, "Representation Alignment for Generation Made Easy").

It maps the backbone's tokens at layer l to a frozen encoder's feature size, where the REPA loss
(`mimo.objectives.repa`) aligns them with the encoder's features of the clean frames. Training-only,
like MiMo's decoder: inference never builds the projector or the encoder.
"""

from __future__ import annotations

from torch import Tensor, nn


class RepaProjector(nn.Module):
    """REPA's h_φ: Linear(D, 2048) → SiLU → Linear(2048, 2048) → SiLU → Linear(2048, E)."""

    def __init__(self, width: int, feature_dim: int, hidden: int = 2048):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, feature_dim),
        )
        for layer in self.mlp[0::2]:  # SiT/REPA initialise every linear layer the Xavier way
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.mlp(tokens)
