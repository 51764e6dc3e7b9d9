"""What every encoder returns: one pooled vector per clip and the token sequence behind it."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class EncoderOutput(NamedTuple):
    """``pooled`` [B, D]: the clip-level feature. ``tokens`` [B, N, D]: the encoder's final
    feature map flattened over its grid (space-time for video, frequency-time for audio),
    kept for fusion modules that attend across modalities."""

    pooled: Tensor
    tokens: Tensor
