"""Cluster-level contrastive loss between the audio and video soft cluster assignments.

A cluster head per modality maps the projection to soft assignments ``P^v, P^a`` [N, K]
(softmax over K clusters; N = global batch, rows gathered from all ranks). Column ``k`` of
``P^m`` is cluster k's "representation" over the batch; the 2K normalised columns
``y_k = P_{:,k}/‖P_{:,k}‖`` are contrasted with NT-Xent at temperature τ, the positive of a
video cluster being the audio cluster with the same index and vice versa:

    ℓ_k^v = −log  exp(y_k^v·y_k^a/τ) / Σ_{j≠k^v over all 2K columns} exp(y_k^v·y_j/τ)
    L_contrast = 1/(2K) Σ_k (ℓ_k^v + ℓ_k^a)

and, against the trivial solution where every clip lands in one cluster, the entropy of each
modality's cluster-size distribution ``q^m = Σ_i P^m_{i,:} / N`` is maximised:

    L = L_contrast + w_H Σ_m (log K − H(q^m)),    H(q) = −Σ_k q_k log q_k.

(``log K − H`` is −H up to a constant, as in the authors' code; it is ≥ 0 and 0 for balanced
clusters.) Every rank computes L on the gathered global matrices, so all ranks return the same
value.

Papers: Li, Hu, Liu, Peng, Zhou & Peng 2021, "Contrastive Clustering", AAAI 2021,
arXiv:2009.09687 (its cluster-level contrastive head; τ_C = 1.0 there); Ke et al., "A Clustering-guided
Contrastive Fusion for Multi-view Representation Learning" (CLOVEN), IEEE TCSVT (code:
github.com/guanzhou-ke/cloven), which applies the idea across views.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avray.config import ClusterContrastiveConfig
from avray.objectives.base import Objective
from avray.objectives.distributed import gather, is_distributed


def _entropy_gap(assignments: Tensor) -> Tensor:
    """log K − H(mean assignment) of [N, K] soft assignments."""
    sizes = assignments.sum(0)
    q = sizes / sizes.sum()
    # The clamp keeps d/dq (q log q) finite where a cluster's mass underflows to 0.
    return math.log(q.shape[0]) + (q * q.clamp_min(torch.finfo(q.dtype).tiny).log()).sum()


def cluster_contrastive_loss(
    p_video: Tensor,
    p_audio: Tensor,
    temperature: float = 1.0,
    entropy_weight: float = 1.0,
    gather_distributed: bool = True,
) -> Tensor:
    """``p_video``, ``p_audio``: soft assignments [B, K] (rows sum to 1). Returns a scalar."""
    if gather_distributed and is_distributed():
        both = gather(torch.stack([p_video, p_audio], dim=1))
        p_video, p_audio = both[:, 0], both[:, 1]
    k = p_video.shape[1]
    columns = F.normalize(torch.cat([p_video.T, p_audio.T]), dim=1)  # [2K, N]
    logits = columns @ columns.T / temperature
    logits = logits.masked_fill(torch.eye(2 * k, dtype=torch.bool, device=logits.device), float("-inf"))
    positives = torch.cat([torch.arange(k, 2 * k), torch.arange(k)]).to(logits.device)
    contrast = F.cross_entropy(logits, positives)
    return contrast + entropy_weight * (_entropy_gap(p_video) + _entropy_gap(p_audio))


class ClusterContrastive(Objective):
    """Linear cluster heads on ``outputs["video"]``/``outputs["audio"]`` (softmax over K)
    trained with :func:`cluster_contrastive_loss`. ``dims``: ``{"video": E_v, "audio": E_a}``."""

    def __init__(
        self,
        dims: dict[str, int],
        num_clusters: int = 16,
        temperature: float = 1.0,
        entropy_weight: float = 1.0,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__(gather_distributed)
        self.temperature, self.entropy_weight = temperature, entropy_weight
        self.heads = nn.ModuleDict({m: nn.Linear(dims[m], num_clusters) for m in ("video", "audio")})

    @classmethod
    def from_config(
        cls, cfg: ClusterContrastiveConfig, dims: dict[str, int], gather_distributed: bool
    ) -> ClusterContrastive:
        return cls(dims, cfg.num_clusters, cfg.temperature, cfg.entropy_weight, gather_distributed)

    def assignments(self, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """Soft cluster assignments [B, K] per modality."""
        return {m: head(outputs[m]).softmax(dim=1) for m, head in self.heads.items()}

    def forward(self, outputs: dict[str, Tensor], targets: None = None) -> Tensor:
        p = self.assignments(outputs)
        return cluster_contrastive_loss(p["video"], p["audio"], self.temperature, self.entropy_weight, self.synced)
