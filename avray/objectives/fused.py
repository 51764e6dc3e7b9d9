"""Fused-to-unimodal contrastive: the joint embedding must pick out its clip from either modality.

With f_i the fused embedding of clip i (``outputs["fused"]`` [B, F]) mapped by a linear head
h to the projection space, and z^v_i, z^a_i the video and audio projections [B, E],

    L = ½ [ InfoNCE(h(f), z^v) + InfoNCE(h(f), z^a) ],

each term the symmetric InfoNCE of :func:`avray.objectives.infonce.infonce_loss` over the
global batch. The cross-modal objectives only compare the two modality projections, so
without this term nothing would train the fusion module; with it, the fused embedding holds
what each stream says about the clip.

Paper: Shvetsova et al. 2022, "Everything at Once – Multi-modal Fusion Transformer for Video
Retrieval", arXiv:2112.04446 (the combinatorial loss, here for the fused pair against each
single modality).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from avray.config import FusedContrastiveConfig
from avray.objectives.base import Objective
from avray.objectives.infonce import infonce_loss


class FusedContrastive(Objective):
    """``forward(outputs) -> scalar``; owns the head h: Linear(F, E)."""

    def __init__(self, fused_dim: int, embed_dim: int, temperature: float = 0.07, gather_distributed: bool = True):
        super().__init__(gather_distributed)
        self.head = nn.Linear(fused_dim, embed_dim)
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    @classmethod
    def from_config(
        cls, cfg: FusedContrastiveConfig, dims: dict[str, int], gather_distributed: bool
    ) -> FusedContrastive:
        if dims["audio"] != dims["video"]:
            raise ValueError(
                f"objectives.fused needs audio and video projections of equal width; "
                f"got audio {dims['audio']}, video {dims['video']}"
            )
        return cls(dims["fused"], dims["video"], cfg.temperature, gather_distributed)

    def config_buffers(self) -> list[Tensor]:
        return [self.temperature]

    def forward(self, outputs: dict[str, Tensor], targets: None = None) -> Tensor:
        fused = self.head(outputs["fused"])
        return 0.5 * (
            infonce_loss(fused, outputs["video"], self.temperature, self.synced)
            + infonce_loss(fused, outputs["audio"], self.temperature, self.synced)
        )
