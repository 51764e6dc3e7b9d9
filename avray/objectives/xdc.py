"""Deep clustering across audio and video: XDC and its single/multi-modal baselines.

Alwassel, Mahajan, Korbar, Torresani, Ghanem & Tran 2020, "Self-Supervised Learning by
Cross-Modal Audio-Video Clustering", NeurIPS 2020, arXiv:1911.12667. Training alternates, as
in DeepCluster (Caron et al. 2018, arXiv:1807.05520), between

1. clustering: k-means with K clusters on the encoder features of the whole dataset gives
   each video pseudo-labels ``y_v`` (video features), ``y_a`` (audio features) or ``y_c``
   (their concatenation), and
2. learning: classifier heads g on the encoder features ``f_v = E_v(v)``, ``f_a = E_a(a)``
   are trained with cross-entropy ℓ on those pseudo-labels, the heads being re-initialised
   after every clustering (cluster indices are arbitrary from one round to the next).

DeepCluster's learning step is min_{θ,W} 1/N Σ_n ℓ(g_W(f_θ(x_n)), y_n) with y_n the cluster
of f_θ(x_n); XDC's is the same problem with the labels taken from the other modality,

    min_{θ_v, W_v} 1/N Σ_n ℓ(g_{W_v}(E_v(v_n)), y^a_n)   and   min_{θ_a, W_a} 1/N Σ_n ℓ(g_{W_a}(E_a(a_n)), y^v_n).

The four variants of the paper (its Fig. 1) differ only in which head learns which labels:

=========  ======================================  ==========================================
variant    clusters                                cross-entropy terms
=========  ======================================  ==========================================
``cross``  ``video``, ``audio``                    ℓ(h_v(f_v), y_a) + ℓ(h_a(f_a), y_v)   (XDC)
``self``   ``video``, ``audio``                    ℓ(h_v(f_v), y_v) + ℓ(h_a(f_a), y_a)   (SDC)
``multi``  ``video``, ``audio``                    both heads of each modality, 4 terms  (MDC)
``concat`` ``concat`` = [f_v/‖f_v‖, f_a/‖f_a‖]     ℓ(h_v(f_v), y_c) + ℓ(h_a(f_a), y_c)   (CDC)
=========  ======================================  ==========================================

The loss is the mean of those cross-entropies over terms and over the global batch, so one
weight λ means the same for every variant. Features are L2-normalised per modality before
k-means (so that in ``concat`` neither modality dominates by scale); DeepCluster also
PCA-whitens them, which we leave out.

No public XDC training code exists; this module follows the paper's description and is our
reference implementation.

Its lifecycle (the hooks of :mod:`avray.objectives.base`), every ``recluster_every_epochs``
epochs and whenever it has no pseudo-labels yet, in ``on_epoch_start``:

1. ``context.embed_videos()``: the training set embedded in eval mode, ``video_features`` /
   ``audio_features`` averaged per source video, the videos sharded over the ranks;
2. :meth:`XDC.recluster` on every rank (collective): distributed k-means, per cluster key
   (``target_keys``); the heads are re-initialised identically on all ranks, and the
   centroids (``centroids_video`` etc.) and the round (``rounds``) kept in buffers;
3. every video's labels shared (all-gather) and kept as the module's extra state, so a
   checkpoint holds them; the heads' parameters are returned, so that the loop drops their
   Adam moments, which belong to the old cluster order.

``batch_targets`` then gives each batch ``{key: LongTensor [B]}``, the labels of each clip's
source video.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avray.config import XDCConfig
from avray.objectives.base import EpochContext, Objective
from avray.objectives.distributed import global_mean
from avray.objectives.kmeans import kmeans

# (modality whose features feed the head, cluster key it predicts), per variant.
VARIANT_TERMS: dict[str, tuple[tuple[str, str], ...]] = {
    "cross": (("video", "audio"), ("audio", "video")),
    "self": (("video", "video"), ("audio", "audio")),
    "multi": (("video", "video"), ("video", "audio"), ("audio", "video"), ("audio", "audio")),
    "concat": (("video", "concat"), ("audio", "concat")),
}


class XDC(Objective):
    """Cluster-prediction loss with linear heads on ``{video,audio}_features``.

    ``feature_dims``: ``{"video": Dv, "audio": Da}`` (encoder output widths).
    ``forward(outputs, targets)``: ``targets`` maps each key of :attr:`target_keys` to
    LongTensor [B]; returns None when ``targets`` is None (nothing clustered yet)."""

    def __init__(
        self,
        feature_dims: dict[str, int],
        num_clusters: int = 16,
        variant: str = "cross",
        kmeans_iters: int = 20,
        seed: int = 0,
        gather_distributed: bool = True,
        recluster_every_epochs: int = 1,
    ) -> None:
        super().__init__(gather_distributed)
        if variant not in VARIANT_TERMS:
            raise ValueError(f"XDC variant must be one of {sorted(VARIANT_TERMS)}, got {variant!r}")
        self.variant, self.num_clusters, self.kmeans_iters, self.seed = variant, num_clusters, kmeans_iters, seed
        self.recluster_every_epochs = recluster_every_epochs
        # Source video -> {cluster key: label}, for every training video (all ranks alike).
        self.pseudo_labels: dict[str, dict[str, int]] = {}
        self.terms = VARIANT_TERMS[variant]
        self.target_keys = tuple(sorted({key for _, key in self.terms}))
        self.heads = nn.ModuleDict(
            {f"{source}_to_{key}": nn.Linear(feature_dims[source], num_clusters) for source, key in self.terms}
        )
        space_dims = {
            "video": feature_dims["video"],
            "audio": feature_dims["audio"],
            "concat": feature_dims["video"] + feature_dims["audio"],
        }
        for key in self.target_keys:
            self.register_buffer(f"centroids_{key}", torch.zeros(num_clusters, space_dims[key]))
        self.register_buffer("rounds", torch.zeros((), dtype=torch.long))
        self._reset_heads()

    @classmethod
    def from_config(cls, cfg: XDCConfig, dims: dict[str, int], gather_distributed: bool) -> XDC:
        feature_dims = {"video": dims["video_features"], "audio": dims["audio_features"]}
        return cls(
            feature_dims,
            cfg.num_clusters,
            cfg.variant,
            cfg.kmeans_iters,
            cfg.seed,
            gather_distributed,
            cfg.recluster_every_epochs,
        )

    def _round_seed(self, salt: int) -> int:
        return self.seed * 1_000_003 + int(self.rounds) * 1_009 + salt

    @torch.no_grad()
    def _reset_heads(self) -> None:
        # nn.Linear's default distribution, U(±1/√fan_in), but from a generator seeded the
        # same on every rank: DDP broadcasts parameters only once, at construction.
        generator = torch.Generator().manual_seed(self._round_seed(0))
        for head in self.heads.values():
            bound = 1 / math.sqrt(head.in_features)
            for param in (head.weight, head.bias):
                fresh = torch.rand(param.shape, generator=generator, dtype=param.dtype) * 2 * bound - bound
                param.copy_(fresh)

    @torch.no_grad()
    def recluster(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """Cluster all ranks' rows and return this rank's pseudo-labels.

        ``features``: this rank's rows of ``"video_features"`` [n, Dv] and ``"audio_features"``
        [n, Da] (``"video"``/``"audio"`` accepted as aliases), one row per video, the same
        video on the same row of both. Collective: every rank calls it, even with n = 0.
        Returns ``{key: LongTensor [n]}`` for ``key`` in :attr:`target_keys`."""
        features = {name.removesuffix("_features"): value for name, value in features.items()}
        video = F.normalize(features["video"].float(), dim=1)
        audio = F.normalize(features["audio"].float(), dim=1)
        spaces = {"video": video, "audio": audio}
        if "concat" in self.target_keys:
            spaces["concat"] = torch.cat([video, audio], dim=1)
        labels = {}
        for salt, key in enumerate(self.target_keys, start=1):
            # Clustering is always global when a group exists: pseudo-labels must mean the
            # same cluster on every rank, whatever gather_distributed says about batches.
            result = kmeans(spaces[key], self.num_clusters, self.kmeans_iters, seed=self._round_seed(salt))
            getattr(self, f"centroids_{key}").copy_(result.centroids)
            labels[key] = result.labels
        self.rounds += 1
        self._reset_heads()
        return labels

    def on_epoch_start(self, context: EpochContext) -> list[nn.Parameter]:
        if self.pseudo_labels and context.epoch % self.recluster_every_epochs:
            return []
        videos = context.embed_videos()
        labels = self.recluster({key: videos.features[key] for key in ("video_features", "audio_features")})
        self.pseudo_labels = videos.share(
            {source: {key: int(t[i]) for key, t in labels.items()} for i, source in enumerate(videos.sources)}
        )
        return list(self.parameters())

    def batch_targets(self, batch: Mapping[str, Any], device: torch.device) -> dict[str, Tensor] | None:
        if not self.pseudo_labels:
            return None
        return {
            key: torch.tensor(
                [self.pseudo_labels[str(s)][key] for s in batch["source"]], dtype=torch.long, device=device
            )
            for key in self.target_keys
        }

    def get_extra_state(self) -> dict[str, dict[str, int]]:
        return self.pseudo_labels

    def set_extra_state(self, state: dict[str, dict[str, int]]) -> None:
        self.pseudo_labels = dict(state)

    def forward(self, outputs: dict[str, Tensor], targets: dict[str, Tensor] | None = None) -> Tensor | None:
        if targets is None:
            return None
        loss_sum = sum(
            F.cross_entropy(
                self.heads[f"{source}_to_{key}"](outputs[f"{source}_features"]), targets[key], reduction="sum"
            )
            for source, key in self.terms
        )
        count = len(self.terms) * outputs["video_features"].shape[0]
        return global_mean(loss_sum, count) if self.synced else loss_sum / count
