"""The objective protocol: what an objective reads, and the hooks the training loop calls
without knowing which objective it drives.

An objective is one module holding a loss and everything the loss keeps between steps
(clusters, queues, running statistics), so that its state is in ``state_dict`` and a resumed
run continues exactly. The loop (``avray.train.loop``) calls, for every enabled objective:

- ``on_epoch_start(context)`` before each epoch; ``context.embed_videos()`` embeds the whole
  training set (per-video means of the encoder features, this rank's share of the videos,
  collective), for objectives that cluster offline. Returns the parameters it re-initialised,
  whose optimizer state the loop then drops;
- ``batch_targets(batch, device)`` before each step: this step's targets from the batch's
  columns (e.g. pseudo-labels of the clips' source videos), passed to ``forward``;
- ``forward(outputs, targets) -> Tensor | None`` (None: nothing to learn from yet);
- ``on_step_end(step)`` after each optimizer step;
- ``no_weight_decay()``: parameters AdamW must not decay (a learnable temperature decayed
  towards 1 is a different objective);
- ``config_buffers()``: buffers set from the config (fixed temperatures) that keep the
  config's value over a restored checkpoint's, since a tuner may have changed them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from avray.objectives.distributed import is_distributed


@dataclass(frozen=True)
class Needs:
    """What an objective reads. ``outputs``: model output keys; ``views``: augmented views per
    modality (1: the clip as it is); ``labels``: a supervised objective, refused on a corpus
    without labels."""

    outputs: tuple[str, ...] = ("audio", "video")
    views: int = 1
    labels: bool = False


@dataclass(frozen=True)
class VideoEmbeddings:
    """Per-video means of encoder features: ``sources`` [n] (this rank's share of the training
    videos, each video on exactly one rank), ``features`` ``{output key: Tensor [n, D]}``;
    ``share(values)`` all-gathers ``{source: value}`` dicts, giving every rank every video's."""

    sources: list[str]
    features: dict[str, Tensor]
    share: Callable[[dict], dict] = field(repr=False)


@dataclass(frozen=True)
class EpochContext:
    """What ``on_epoch_start`` gets: the (0-based) epoch, and the training set's per-video
    embeddings, computed on first call (a collective: every rank's objective must call it, or
    none)."""

    epoch: int
    embed_videos: Callable[[], VideoEmbeddings] = field(repr=False)


class Objective(nn.Module):
    """Base of the loss modules held by :class:`~avray.objectives.mixture.LossMixture`.

    ``forward(outputs, targets=None) -> Tensor | None`` takes the model's output dict (see
    ``avray.models.AVModel``) and this objective's targets, if it has any, and returns a
    scalar loss, or None when it has nothing to learn from yet (XDC before its first
    clustering). With ``gather_distributed`` the loss is the global-batch loss, identical on
    every rank; without it, each rank's loss only sees its own rows.
    """

    needs = Needs()

    def __init__(self, gather_distributed: bool = True) -> None:
        super().__init__()
        self.gather_distributed = gather_distributed

    @property
    def synced(self) -> bool:
        # Collectives only while training: validation often runs on rank 0 alone, and a
        # collective that the other ranks never join would hang it.
        return self.gather_distributed and self.training and is_distributed()

    def on_epoch_start(self, context: EpochContext) -> list[nn.Parameter]:
        return []

    def batch_targets(self, batch: Mapping[str, Any], device: torch.device) -> object | None:
        return None

    def on_step_end(self, step: int) -> None:
        return None

    def no_weight_decay(self) -> list[nn.Parameter]:
        return []

    def config_buffers(self) -> list[Tensor]:
        return []
