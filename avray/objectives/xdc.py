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

How the training loop drives it (between epochs, every ``recluster_every_epochs``):

1. embed the training set in eval mode and average ``video_features``/``audio_features`` per
   source video; shard the videos over the ranks (every video on exactly one rank);
2. ``labels = xdc.recluster({"video_features": [n_r, Dv], "audio_features": [n_r, Da]})`` on
   every rank (collective): distributed k-means; returns LongTensor [n_r] per cluster key
   (``xdc.target_keys``), re-initialises the heads identically on all ranks, and stores the
   centroids in buffers (``centroids_video`` etc.) and the round in ``rounds``, so the state
   is in ``state_dict``. Reset the optimizer's state for ``xdc.parameters()`` too: stale
   Adam moments belong to the old cluster order;
3. share every video's labels (all-gather) and for each batch pass
   ``targets = {key: LongTensor[B]}`` (the labels of each clip's source video) to ``forward``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avray.config import XDCConfig
from avray.objectives.base import Objective
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
    ) -> None:
        super().__init__(gather_distributed)
        if variant not in VARIANT_TERMS:
            raise ValueError(f"XDC variant must be one of {sorted(VARIANT_TERMS)}, got {variant!r}")
        self.variant, self.num_clusters, self.kmeans_iters, self.seed = variant, num_clusters, kmeans_iters, seed
        self.terms = VARIANT_TERMS[variant]
        self.target_keys = tuple(sorted({key for _, key in self.terms}))
        self.heads = nn.ModuleDict({
            f"{source}_to_{key}": nn.Linear(feature_dims[source], num_clusters) for source, key in self.terms
        })
        space_dims = {"video": feature_dims["video"], "audio": feature_dims["audio"],
                      "concat": feature_dims["video"] + feature_dims["audio"]}
        for key in self.target_keys:
            self.register_buffer(f"centroids_{key}", torch.zeros(num_clusters, space_dims[key]))
        self.register_buffer("rounds", torch.zeros((), dtype=torch.long))
        self._reset_heads()

    @classmethod
    def from_config(cls, cfg: XDCConfig, dims: dict[str, int], gather_distributed: bool) -> "XDC":
        feature_dims = {"video": dims["video_features"], "audio": dims["audio_features"]}
        return cls(feature_dims, cfg.num_clusters, cfg.variant, cfg.kmeans_iters, cfg.seed, gather_distributed)

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

    def forward(self, outputs: dict[str, Tensor], targets: dict[str, Tensor] | None = None) -> Tensor | None:
        if targets is None:
            return None
        loss_sum = sum(
            F.cross_entropy(self.heads[f"{source}_to_{key}"](outputs[f"{source}_features"]), targets[key],
                            reduction="sum")
            for source, key in self.terms
        )
        count = len(self.terms) * outputs["video_features"].shape[0]
        return global_mean(loss_sum, count) if self.synced else loss_sum / count
