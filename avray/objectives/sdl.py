"""Soft CCA: align the batch-normalised views, softly decorrelate each view's dimensions.

Chang, Xiang & Hospedales 2018, "Scalable and Effective Deep CCA via Soft Decorrelation",
CVPR 2018, arXiv:1707.09669. Instead of DCCA's exact whitening (an eigendecomposition per
step), each view F_m [N, E] is batch-normalised (no affine) to F̂_m, the views are pulled
together, and a Stochastic Decorrelation Loss (SDL) penalises the off-diagonal entries of a
running estimate of each view's covariance:

    L_dist = 1/(N E) ‖F̂_v − F̂_a‖²_F
    C_mini^m = F̂_mᵀ F̂_m / N,   Ĉ^m = (α A^m + C_mini^m) / (α c + 1)
    L_SDL^m = 1/(E(E−1)) Σ_{i≠j} |Ĉ^m_ij|
    L = L_dist + λ (L_SDL^v + L_SDL^a)

where α is ``momentum``, λ ``decorrelation_weight``, and the buffers ``A ← α A + C_mini``,
``c ← α c + 1`` (detached) carry the past, so the gradient flows only through the current
batch's share, as in the paper. The paper sums over entries; dividing by their number
(NE and E(E−1)) keeps λ meaningful whatever the embedding width. The running estimate is
updated in training mode only, and not by a batch with non-finite statistics (so one bad step
cannot poison every later one).

Distributed: batch-norm moments, the distance and C_mini are all-reduced (summing backward),
so every rank uses global-batch statistics, returns the same L and updates its buffers
identically.
"""

from __future__ import annotations

import torch
from torch import Tensor

from avray.config import SDLConfig
from avray.objectives.base import Objective
from avray.objectives.distributed import all_reduce_sum

_BN_EPS = 1e-5  # BatchNorm's default


class SDL(Objective):
    """Soft CCA on ``outputs["video"]`` and ``outputs["audio"]`` (both [B, dim]).

    Buffers: ``running_covariance`` [2, dim, dim] (A above, video then audio) and
    ``running_weight`` (c)."""

    def __init__(
        self, dim: int, decorrelation_weight: float = 1.0, momentum: float = 0.9, gather_distributed: bool = True
    ) -> None:
        super().__init__(gather_distributed)
        self.decorrelation_weight, self.momentum = decorrelation_weight, momentum
        self.register_buffer("running_covariance", torch.zeros(2, dim, dim, dtype=torch.float64))
        self.register_buffer("running_weight", torch.zeros((), dtype=torch.float64))

    @classmethod
    def from_config(cls, cfg: SDLConfig, dims: dict[str, int], gather_distributed: bool) -> SDL:
        if dims["audio"] != dims["video"]:
            raise ValueError(
                f"objectives.sdl compares audio and video projections of equal width; "
                f"got audio {dims['audio']}, video {dims['video']}"
            )
        return cls(dims["video"], cfg.decorrelation_weight, cfg.momentum, gather_distributed)

    def _sum(self, x: Tensor) -> Tensor:
        return all_reduce_sum(x) if self.synced else x

    def forward(self, outputs: dict[str, Tensor], targets: None = None) -> Tensor:
        views = torch.stack([outputs["video"], outputs["audio"]]).double()  # [2, B, E]
        _, n, e = views.shape
        moments = self._sum(
            torch.cat([views.new_full((1,), float(n)), views.sum(1).flatten(), (views * views).sum(1).flatten()])
        )
        count = moments[0]
        mean = (moments[1 : 1 + 2 * e] / count).view(2, 1, e)
        variance = (moments[1 + 2 * e :].view(2, 1, e) / count - mean**2).clamp_min(0)
        normed = (views - mean) / (variance + _BN_EPS).sqrt()
        second = self._sum(
            torch.cat(
                [
                    ((normed[0] - normed[1]) ** 2).sum().reshape(1),
                    torch.einsum("vbi,vbj->vij", normed, normed).flatten(),
                ]
            )
        )
        distance = second[0] / (count * e)
        batch_covariance = second[1:].view(2, e, e) / count
        running = (self.momentum * self.running_covariance + batch_covariance) / (
            self.momentum * self.running_weight + 1
        )
        off_diagonal = ~torch.eye(e, dtype=torch.bool, device=running.device)
        decorrelation = running[:, off_diagonal].abs().sum(1) / max(e * (e - 1), 1)
        if self.training:
            self._update(batch_covariance.detach())
        loss = distance + self.decorrelation_weight * decorrelation.sum()
        return loss.to(outputs["video"].dtype)

    @torch.no_grad()
    def _update(self, batch_covariance: Tensor) -> None:
        # torch.where instead of an `if`: no host sync on the GPU.
        ok = torch.isfinite(batch_covariance).all()
        self.running_covariance.copy_(
            torch.where(ok, self.momentum * self.running_covariance + batch_covariance, self.running_covariance)
        )
        self.running_weight.copy_(torch.where(ok, self.momentum * self.running_weight + 1, self.running_weight))
