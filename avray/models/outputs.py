"""What every encoder returns (one pooled vector per clip and the token sequence behind it),
and what every model returns (:class:`ModelOutputs`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields, replace
from typing import NamedTuple

from torch import Tensor

# The embeddings a model gives a clip, by the names its outputs, exports and metrics use.
MODALITIES = ("audio", "video", "fused")
# The pooled encoder outputs, before the projection heads: where the field's linear probes read
# a representation (the projections are shaped by the objective's comparison, not for reuse).
ENCODER_FEATURES = ("audio_features", "video_features")


class EncoderOutput(NamedTuple):
    """``pooled`` [B, D]: the clip-level feature. ``tokens`` [B, N, D]: the encoder's final
    feature map flattened over its grid (space-time for video, frequency-time for audio),
    kept for fusion modules that attend across modalities."""

    pooled: Tensor
    tokens: Tensor


@dataclass(frozen=True)
class ModelOutputs(Mapping):
    """What a model returns and every objective reads, one field per output:

    - ``video_features`` [B, Dv], ``audio_features`` [B, Da]: pooled encoder outputs (what
      probes and retrieval evaluate);
    - ``video_tokens`` [B, Nv, Dv], ``audio_tokens`` [B, Na, Da]: the encoders' final feature
      maps as token sequences (None for pooled frozen features);
    - ``video`` [B, E], ``audio`` [B, E]: projection-head outputs, not L2-normalised;
    - ``fused`` [B, F]: the joint embedding;
    - ``views``: with more than one augmented view per clip (an objective's ``needs.views``),
      each view's outputs, in order; the fields above are then the first view's.

    It reads as a mapping of its tensors (``outputs["video"]``; None fields and ``views``
    left out), so a loss written against a plain dict of tensors takes it as it is.
    """

    video_features: Tensor
    audio_features: Tensor
    video: Tensor
    audio: Tensor
    fused: Tensor
    video_tokens: Tensor | None = None
    audio_tokens: Tensor | None = None
    views: tuple[ModelOutputs, ...] = ()

    def _present(self) -> list[str]:
        return [f.name for f in fields(self) if f.name != "views" and getattr(self, f.name) is not None]

    def map(self, fn: Callable[[Tensor], Tensor]) -> ModelOutputs:
        """``fn`` applied to every tensor, the views' included."""
        return replace(self, **{k: fn(v) for k, v in self.items()}, views=tuple(v.map(fn) for v in self.views))

    def split_views(self, count: int) -> ModelOutputs:
        """Outputs of ``count`` views stacked along the batch (view-major) -> the first view's
        fields with every view in ``views``."""
        if count == 1:
            return self
        views = tuple(replace(self, **{k: v.chunk(count)[i] for k, v in self.items()}) for i in range(count))
        return replace(views[0], views=views)

    def __getitem__(self, key: str) -> Tensor:
        if key not in self._present():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._present())

    def __len__(self) -> int:
        return len(self._present())
