"""Feature-level Space-Time Crop & Attend.

Patrick et al. 2021, "Space-Time Crop & Attend: Improving Cross-modal Video Representation
Learning" (arXiv 2103.10211). Instead of cropping input frames (costly: one encoder pass per
crop), crop the encoder's final spatio-temporal feature map, then replace average pooling by
attention pooling: a learned query attends over the features that survive the crop. Cropping
only during training makes the pooled feature see partial views of the clip, the
augmentation the paper finds cheap and effective; at eval the crop is the identity and the
query attends over the whole map.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def crop_extents(grid: tuple[int, ...], keep_fraction: float) -> list[int]:
    """Box side lengths whose volume is close to ``keep_fraction`` of ``grid`` (within one slice).

    Feature maps are small (4×4×4 for the default clip), so rounding one shared per-axis
    scale would often crop nothing. Instead shrink, one step at a time, an axis picked at
    random among those whose shrinking brings the volume closer to the target: the crop is
    sometimes temporal, sometimes spatial, as in the paper's space-time crops.
    """
    extents = list(grid)
    target = keep_fraction * math.prod(grid)
    while True:
        volume = math.prod(extents)
        improving = [
            axis
            for axis, extent in enumerate(extents)
            if extent > 1 and abs(volume // extent * (extent - 1) - target) < abs(volume - target)
        ]
        if not improving:
            return extents
        extents[improving[int(torch.randint(len(improving), ()))]] -= 1


def random_box_mask(batch: int, grid: tuple[int, ...], keep_fraction: float, device: torch.device) -> Tensor:
    """One random axis-aligned box per sample covering about ``keep_fraction`` of ``grid``:
    side lengths from :func:`crop_extents`, shared by the batch; offsets uniform, per sample.
    Returns bool [B, *grid], True inside the box.
    """
    keep = torch.ones((batch, *grid), dtype=torch.bool, device=device)
    for axis, (size, extent) in enumerate(zip(grid, crop_extents(grid, keep_fraction))):
        start = torch.randint(0, size - extent + 1, (batch, 1), device=device)
        position = torch.arange(size, device=device)
        inside = (position >= start) & (position < start + extent)  # [B, size]
        shape = [batch] + [1] * len(grid)
        shape[axis + 1] = size
        keep &= inside.view(shape)
    return keep


class SpaceTimeCropAttend(nn.Module):
    """Random space-time crop of a feature map (training only), then attention pooling.

    Input: feature map [B, D, T, H, W] (any grid rank works). Output: [B, D].
    """

    def __init__(self, dim: int, num_heads: int, mask_ratio: float) -> None:
        super().__init__()
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        self.mask_ratio = mask_ratio
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.norm = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)

    def crop_mask(self, feature_map: Tensor) -> Tensor | None:
        """Bool [B, N] of tokens to ignore (True = cropped away), or None when nothing is."""
        if not self.training or self.mask_ratio == 0.0:
            return None
        batch, _, *grid = feature_map.shape
        keep = random_box_mask(batch, tuple(grid), 1.0 - self.mask_ratio, feature_map.device)
        return ~keep.flatten(1)

    def forward(self, feature_map: Tensor) -> Tensor:
        tokens = self.norm(feature_map.flatten(2).transpose(1, 2))  # [B, N, D]
        query = self.query.expand(tokens.shape[0], -1, -1)
        pooled, _ = self.attention(
            query, tokens, tokens, key_padding_mask=self.crop_mask(feature_map), need_weights=False
        )
        return pooled.squeeze(1)
