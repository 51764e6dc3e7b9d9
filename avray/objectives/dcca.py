"""Deep canonical correlation analysis between the video and audio projections.

Andrew, Arora, Bilmes & Livescu 2013, "Deep Canonical Correlation Analysis", ICML 2013
(PMLR 28(3):1247-1255). For views H1 = video projections [N, d1] and H2 = audio projections
[N, d2] over the global batch,

    Σ11 = cov(H1) + ε I,   Σ22 = cov(H2) + ε I,   Σ12 = cov(H1, H2)     (unbiased, 1/(N−1))
    T   = Σ11^{-1/2} Σ12 Σ22^{-1/2}
    ρ   = singular values of T  (the canonical correlations, descending)
    L   = −Σ_{i ≤ k} ρ_i        (k = ``top_k``; all min(d1, d2) by default: the trace norm of T)

Distributed: each rank contributes its count, sums and sums of outer products; one
all-reduce (with a summing backward) gives every rank the global statistics, so every rank
returns the global-batch L.

Numerics, the usual source of NaN gradients in DCCA:

* everything after the cast is float64, and the moments are raw sums (one collective), which
  float64 keeps accurate;
* Σ^{-1/2} comes from ``torch.linalg.eigh`` with eigenvalues clamped at ε, but its gradient is
  *not* eigh's autograd (which divides by λ_i − λ_j and is inf for the repeated eigenvalues of a
  rank-deficient covariance, e.g. d > N where ε is repeated d − N + 1 times). It is the
  Daleckii–Krein formula for the matrix function f(λ) = λ^{-1/2}, whose divided differences
  (f(λ_i) − f(λ_j))/(λ_i − λ_j) = −1/(s_i s_j (s_i + s_j)), s = √λ, are exact and finite for
  equal eigenvalues too;
* ρ uses ``torch.linalg.svdvals``, whose gradient U diag(g) Vᵀ is stable for repeated or zero
  singular values;
* non-finite inputs give NaN correlations rather than the exception eigh/svd would raise.
"""

from __future__ import annotations

import torch
from torch import Tensor

from avray.config import DCCAConfig
from avray.objectives.base import Objective
from avray.objectives.distributed import all_reduce_sum, is_distributed


class _InvSqrtPSD(torch.autograd.Function):
    """A^{-1/2} of a symmetric positive-definite A, eigenvalues clamped at ``floor``."""

    @staticmethod
    def forward(ctx, a: Tensor, floor: float) -> Tensor:
        eigenvalues, vectors = torch.linalg.eigh(a)
        roots = eigenvalues.clamp_min(floor).sqrt()
        ctx.save_for_backward(vectors, roots)
        return (vectors / roots) @ vectors.T

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        vectors, roots = ctx.saved_tensors
        # Daleckii–Krein with the divided differences of λ^{-1/2} (module docstring): no λ_i − λ_j.
        divided = -1.0 / (roots[:, None] * roots[None, :] * (roots[:, None] + roots[None, :]))
        return vectors @ (divided * (vectors.T @ grad @ vectors)) @ vectors.T, None


def _covariances(h1: Tensor, h2: Tensor, eps: float, sync: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Ridge-regularised Σ11, Σ22 and Σ12 of the (global) batch, float64, and whether the
    statistics were finite (if not, the covariances are those of zeros)."""
    n, d1, d2 = h1.shape[0], h1.shape[1], h2.shape[1]
    stats = torch.cat(
        [
            h1.new_full((1,), float(n)),
            h1.sum(0),
            h2.sum(0),
            (h1.T @ h1).flatten(),
            (h2.T @ h2).flatten(),
            (h1.T @ h2).flatten(),
        ]
    )
    if sync:
        stats = all_reduce_sum(stats)
    # eigh and svd raise on NaN/Inf instead of propagating them; the loss is made NaN below,
    # so that the mixture can name the term (or skip the step) on every rank alike.
    finite = torch.isfinite(stats).all()
    stats = stats.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
    count, s1, s2, s11, s22, s12 = stats.split([1, d1, d2, d1 * d1, d2 * d2, d1 * d2])
    count = count[0]
    m1, m2 = s1 / count, s2 / count
    scale = (count - 1).clamp_min(1)

    def covariance(products: Tensor, mean_a: Tensor, mean_b: Tensor) -> Tensor:
        return (products.view(len(mean_a), len(mean_b)) - count * torch.outer(mean_a, mean_b)) / scale

    def ridge(d: int) -> Tensor:
        return eps * torch.eye(d, dtype=h1.dtype, device=h1.device)

    c11 = covariance(s11, m1, m1) + ridge(d1)
    c22 = covariance(s22, m2, m2) + ridge(d2)
    c12 = covariance(s12, m1, m2)
    return c11, c22, c12, finite


def canonical_correlations(h1: Tensor, h2: Tensor, eps: float = 1e-3, gather_distributed: bool = True) -> Tensor:
    """Canonical correlations [min(d1, d2)], descending, of ``h1`` [B, d1] and ``h2`` [B, d2]
    over the global batch (float64, differentiable)."""
    sync = gather_distributed and is_distributed()
    c11, c22, c12, finite = _covariances(h1.double(), h2.double(), eps, sync)
    t = _InvSqrtPSD.apply(c11, eps) @ c12 @ _InvSqrtPSD.apply(c22, eps)
    return torch.where(finite, torch.linalg.svdvals(t), torch.nan)


def dcca_loss(
    h1: Tensor, h2: Tensor, top_k: int | None = None, eps: float = 1e-3, gather_distributed: bool = True
) -> Tensor:
    """−(sum of the ``top_k`` largest canonical correlations; all if None), in ``h1``'s dtype."""
    correlations = canonical_correlations(h1, h2, eps, gather_distributed)
    return -correlations[:top_k].sum().to(h1.dtype)


class DCCA(Objective):
    """:func:`dcca_loss` with H1 = ``outputs["video"]``, H2 = ``outputs["audio"]``."""

    def __init__(self, top_k: int | None = None, eps: float = 1e-3, gather_distributed: bool = True) -> None:
        super().__init__(gather_distributed)
        self.top_k, self.eps = top_k, eps

    @classmethod
    def from_config(cls, cfg: DCCAConfig, dims: dict[str, int], gather_distributed: bool) -> DCCA:
        available = min(dims["video"], dims["audio"])
        if cfg.top_k is not None and cfg.top_k > available:
            raise ValueError(
                f"objectives.dcca.top_k ({cfg.top_k}) exceeds the {available} canonical "
                "correlations of the video and audio projections"
            )
        return cls(cfg.top_k, cfg.eps, gather_distributed)

    def forward(self, outputs: dict[str, Tensor], targets: None = None) -> Tensor:
        return dcca_loss(outputs["video"], outputs["audio"], self.top_k, self.eps, self.synced)
