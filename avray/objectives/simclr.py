"""Within-modality contrastive: SimCLR's NT-Xent between two augmented views of each clip.

For one modality, with z¹_i, z²_i the L2-normalised projections (``outputs.views[0..1]``) of
clip i's two views over the global batch of N clips, stack u = [z¹; z²] (2N rows). Row k's
positive p(k) is the other view of the same clip, and its 2N − 2 negatives are every other
row, both views of the other clips:

    ℓ_k = −log  exp(u_k·u_p(k) / τ) / Σ_{j ≠ k} exp(u_k·u_j / τ),      L_m = 1/(2N) Σ_k ℓ_k,

and L is the mean of L_m over the configured modalities. Each rank computes its own rows
against the gathered columns and the local sums are all-reduced, so every rank returns the
global-batch L.

Why in an audio-visual recipe: the cross-modal terms only train the video encoder through
what the audio encoder already tells apart, which from random weights is little; this term
gives each encoder a signal of its own, invariance to the augmentations, from the first step.

Paper: Chen, Kornblith, Norouzi & Hinton 2020, "A Simple Framework for Contrastive Learning of
Visual Representations" (SimCLR), arXiv:2002.05709, eq. 1 (NT-Xent) and its Algorithm 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from avray.config import SimCLRConfig
from avray.models.outputs import ModelOutputs
from avray.objectives.base import Needs, Objective
from avray.objectives.distributed import batch_sizes, gather, global_mean, is_distributed, rank


def nt_xent_loss(first: Tensor, second: Tensor, temperature: float | Tensor, gather_distributed: bool = True) -> Tensor:
    """NT-Xent. ``first``, ``second`` [B, E]: the two views' projections of the same B clips,
    in the same order (not normalised). The global-batch mean when ``gather_distributed`` and a
    process group exist, else this batch's mean."""
    a, b = F.normalize(first, dim=1), F.normalize(second, dim=1)
    n = a.shape[0]
    sync = gather_distributed and is_distributed()
    if sync:
        sizes = batch_sizes(n, a.device)
        offset, total = sum(sizes[: rank()]), sum(sizes)
        columns = torch.cat([gather(a, sizes), gather(b, sizes)])
    else:
        offset, total, columns = 0, n, torch.cat([a, b])
    own = torch.arange(offset, offset + n, device=a.device)
    itself = torch.cat([own, own + total])
    positives = torch.cat([own + total, own])
    logits = torch.cat([a, b]) @ columns.T / temperature
    # A row is never its own negative.
    logits = logits.masked_fill(F.one_hot(itself, 2 * total).bool(), float("-inf"))
    loss_sum = F.cross_entropy(logits, positives, reduction="sum")
    return global_mean(loss_sum, 2 * n) if sync else loss_sum / (2 * n)


class SimCLR(Objective):
    """NT-Xent on the projections (``video``, ``audio``) of two augmented views, per modality."""

    needs = Needs(outputs=("audio", "video"), views=2)

    def __init__(
        self, modalities: tuple[str, ...] = ("video",), temperature: float = 0.5, gather_distributed: bool = True
    ) -> None:
        super().__init__(gather_distributed)
        self.modalities = tuple(modalities)
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    @classmethod
    def from_config(cls, cfg: SimCLRConfig, dims: dict[str, int], gather_distributed: bool) -> SimCLR:
        return cls(cfg.modalities, cfg.temperature, gather_distributed)

    def config_buffers(self) -> list[Tensor]:
        return [self.temperature]

    def forward(self, outputs: ModelOutputs, targets: None = None) -> Tensor | None:
        if len(outputs.views) < 2:
            return None  # validation and embedding see each clip once, unaugmented
        first, second = outputs.views[:2]
        terms = [nt_xent_loss(first[m], second[m], self.temperature, self.synced) for m in self.modalities]
        return sum(terms) / len(terms)
