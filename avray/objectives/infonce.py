"""Symmetric cross-modal InfoNCE between audio and video projections.

With ``a_i = audio_i/‖audio_i‖`` and ``v_j = video_j/‖video_j‖`` over the global batch of N
clips (all ranks' rows, in rank order),

    L = 1/(2N) Σ_i [ −log softmax_j(a_i·v_j / τ)_i  −  log softmax_j(v_i·a_j / τ)_i ],

the mean of the audio→video and video→audio cross-entropies, each clip's positive being the
other modality of the same clip and its N−1 negatives the other clips of the global batch.
Each rank computes the rows it owns against the gathered columns (positives at offset
``Σ_{s<r} B_s``) and the local sums are all-reduced, so every rank returns the same L.

Papers: Oord, Li & Vinyals 2018, "Representation Learning with Contrastive Predictive
Coding", arXiv:1807.03748 (InfoNCE); Radford et al. 2021, "Learning Transferable Visual
Models From Natural Language Supervision" (CLIP), arXiv:2103.00020 (symmetric form, learnable
temperature as a clamped log-scale); Morgado, Vasconcelos & Misra 2021, "Audio-Visual Instance
Discrimination with Cross-Modal Agreement" (AVID), arXiv:2004.12943 (the cross-modal
audio↔video form).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avray.config import InfoNCEConfig
from avray.objectives.base import Objective
from avray.objectives.distributed import (
    batch_sizes,
    gather,
    global_mean,
    is_distributed,
    rank,
)


def infonce_loss(audio: Tensor, video: Tensor, temperature: float | Tensor, gather_distributed: bool = True) -> Tensor:
    """Symmetric InfoNCE. ``audio`` [B, E], ``video`` [B, E] (not normalised), ``temperature``
    τ > 0 (float or 0-dim tensor). Returns a scalar, the global-batch mean when
    ``gather_distributed`` and a process group exist, else this batch's mean."""
    a = F.normalize(audio, dim=1)
    v = F.normalize(video, dim=1)
    n = a.shape[0]
    sync = gather_distributed and is_distributed()
    if sync:
        sizes = batch_sizes(n, a.device)
        offset = sum(sizes[: rank()])
        all_a, all_v = gather(a, sizes), gather(v, sizes)
    else:
        offset, all_a, all_v = 0, a, v
    positives = torch.arange(offset, offset + n, device=a.device)
    loss_sum = F.cross_entropy(a @ all_v.T / temperature, positives, reduction="sum") + F.cross_entropy(
        v @ all_a.T / temperature, positives, reduction="sum"
    )
    return global_mean(loss_sum, 2 * n) if sync else loss_sum / (2 * n)


class InfoNCE(Objective):
    """InfoNCE on ``outputs["audio"]`` and ``outputs["video"]`` with a fixed or learnable τ.

    A learnable τ is the parameter ``log_temperature``, clamped below at ``log(min_temperature)``
    in the forward pass (CLIP's clamp of its logit scale at 100 is ``min_temperature=0.01``);
    a fixed τ is a buffer of the same name."""

    def __init__(
        self,
        temperature: float = 0.07,
        learnable_temperature: bool = False,
        min_temperature: float = 0.01,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__(gather_distributed)
        log_temperature = torch.tensor(math.log(temperature))
        if learnable_temperature:
            self.log_temperature = nn.Parameter(log_temperature)
        else:
            self.register_buffer("log_temperature", log_temperature)
        self.min_log_temperature = math.log(min_temperature)

    @classmethod
    def from_config(cls, cfg: InfoNCEConfig, dims: dict[str, int], gather_distributed: bool) -> InfoNCE:
        if dims["audio"] != dims["video"]:
            raise ValueError(
                f"objectives.infonce compares audio and video projections of equal width; "
                f"got audio {dims['audio']}, video {dims['video']}"
            )
        return cls(cfg.temperature, cfg.learnable_temperature, cfg.min_temperature, gather_distributed)

    @property
    def temperature(self) -> Tensor:
        return self.log_temperature.clamp(min=self.min_log_temperature).exp()

    def no_weight_decay(self) -> list[nn.Parameter]:
        return [self.log_temperature] if isinstance(self.log_temperature, nn.Parameter) else []

    def config_buffers(self) -> list[Tensor]:
        return [] if isinstance(self.log_temperature, nn.Parameter) else [self.log_temperature]

    def forward(self, outputs: dict[str, Tensor], targets: None = None) -> Tensor:
        return infonce_loss(outputs["audio"], outputs["video"], self.temperature, self.synced)
