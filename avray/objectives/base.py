"""What every objective module shares: the ``forward(outputs, targets)`` contract and when to sync."""

from __future__ import annotations

from torch import nn

from avray.objectives.distributed import is_distributed


class Objective(nn.Module):
    """Base of the loss modules held by :class:`~avray.objectives.mixture.LossMixture`.

    ``forward(outputs, targets=None) -> Tensor | None`` takes the model's output dict (see
    ``avray.models.AVModel``) and this objective's targets, if it has any, and returns a
    scalar loss, or None when it has nothing to learn from yet (XDC before its first
    clustering). With ``gather_distributed`` the loss is the global-batch loss, identical on
    every rank; without it, each rank's loss only sees its own rows.
    """

    def __init__(self, gather_distributed: bool = True) -> None:
        super().__init__()
        self.gather_distributed = gather_distributed

    @property
    def synced(self) -> bool:
        # Collectives only while training: validation often runs on rank 0 alone, and a
        # collective that the other ranks never join would hang it.
        return self.gather_distributed and self.training and is_distributed()
