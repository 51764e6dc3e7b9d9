"""Projection heads: the small MLP between an encoder and the space a loss compares in."""

from __future__ import annotations

from torch import nn


class ProjectionHead(nn.Sequential):
    """SimCLR-style MLP (Chen et al. 2020): Linear-BN-ReLU-Linear, [B, in_dim] -> [B, out_dim].

    Outputs are not L2-normalised; objectives that want the unit sphere normalise themselves.
    The hidden layer is as wide as the input, as in SimCLR. BatchNorm needs B >= 2 in training.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__(
            nn.Linear(in_dim, in_dim, bias=False),
            nn.BatchNorm1d(in_dim),
            nn.ReLU(inplace=True),
            nn.Linear(in_dim, out_dim),
        )
        self.out_dim = out_dim
