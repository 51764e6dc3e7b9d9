"""The objective zoo: one loss per module, each exact and identical on one process or many.

``LossMixture.from_config(cfg.objectives, model.output_dims)`` is what training uses; the
pure functions and modules are public for tests, notebooks and other mixtures.
"""

from avray.objectives.base import Objective
from avray.objectives.cluster_contrastive import ClusterContrastive, cluster_contrastive_loss
from avray.objectives.dcca import DCCA, canonical_correlations, dcca_loss
from avray.objectives.fused import FusedContrastive
from avray.objectives.infonce import InfoNCE, infonce_loss
from avray.objectives.kmeans import KMeansResult, kmeans, kmeans_plusplus
from avray.objectives.mixture import OBJECTIVES, LossMixture, MixtureResult, NonFiniteLossError, register_objective
from avray.objectives.sdl import SDL
from avray.objectives.simclr import SimCLR, nt_xent_loss
from avray.objectives.xdc import VARIANT_TERMS, XDC

__all__ = [
    "OBJECTIVES",
    "VARIANT_TERMS",
    "ClusterContrastive",
    "DCCA",
    "FusedContrastive",
    "InfoNCE",
    "KMeansResult",
    "LossMixture",
    "MixtureResult",
    "NonFiniteLossError",
    "Objective",
    "SDL",
    "SimCLR",
    "XDC",
    "canonical_correlations",
    "cluster_contrastive_loss",
    "dcca_loss",
    "infonce_loss",
    "kmeans",
    "kmeans_plusplus",
    "nt_xent_loss",
    "register_objective",
]
