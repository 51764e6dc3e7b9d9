"""k-means on torch tensors whose rows are sharded over the ranks of a process group.

Minimises the inertia Σ_i min_k ‖x_i − c_k‖² over all ranks' rows (Lloyd 1982, "Least squares
quantization in PCM"; init: Arthur & Vassilvitskii 2007, "k-means++: The Advantages of Careful
Seeding"). Every rank ends with the same centroids; no rank ever holds another rank's rows.

* **k-means++ init, exact and distributed.** Each of the k draws samples one row of the global
  data with probability ∝ D(x)² (uniform for the first): the ranks all-gather their local sums
  of D², draw the same uniform number from a generator seeded identically on every rank, the
  rank that owns the drawn row finds it, and an all-reduce (zeros elsewhere) hands it to
  everyone. That is 2k small collectives and no data movement, and the draw is the one a
  single process would make on the rows concatenated in rank order (rather than gathering the
  whole dataset, which scales with N, or sampling per-rank candidates, which changes the
  distribution). Plain k-means++, not scikit-learn's greedy variant with several trials per draw.
* **Lloyd iterations.** Assign locally; per-cluster sums and counts (float64) are
  all-reduced in one collective; new centroid = sum / count.
* **Empty clusters** are re-seeded with the rows farthest from their assigned centroid: each
  rank offers its top candidates, they are gathered and sorted by distance (a stable sort,
  ties broken by rank), so all ranks pick the same rows (scikit-learn too re-seeds empty
  clusters with the farthest rows, on one process).

Stops after ``iters`` updates or when an update leaves the centroids unchanged; labels and
inertia are then computed against the returned centroids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from avray.objectives.distributed import all_reduce_, gather, is_distributed, rank, world_size

# Distances per block of rows, so an N×K distance matrix never has to fit in memory at once.
_CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class KMeansResult:
    centroids: Tensor  # [K, D], identical on every rank
    labels: Tensor  # [n_local] long: this rank's rows' clusters
    inertia: float  # Σ over all ranks' rows of the squared distance to their centroid
    iterations: int  # Lloyd updates performed


def _nearest(x: Tensor, centroids: Tensor) -> tuple[Tensor, Tensor]:
    """Squared distance of every row to its nearest centroid [n], and that centroid [n]."""
    c_sq = (centroids * centroids).sum(1)
    step = max(1, _CHUNK_ELEMENTS // max(1, centroids.shape[0]))
    dists, labels = [], []
    for block in x.split(step):
        d = ((block * block).sum(1, keepdim=True) - 2 * block @ centroids.T + c_sq).clamp_min_(0)
        best = d.min(1)
        dists.append(best.values)
        labels.append(best.indices)
    if not dists:
        return x.new_zeros(0), torch.zeros(0, dtype=torch.long, device=x.device)
    return torch.cat(dists), torch.cat(labels)


def _rank_totals(weights: Tensor, sync: bool) -> Tensor:
    total = weights.sum().reshape(1)
    return gather(total, [1] * world_size()) if sync else total


def _draw(x: Tensor, weights: Tensor, generator: torch.Generator, sync: bool) -> Tensor:
    """One row of the global data drawn with probability ∝ ``weights`` (float64 [n]), the
    same row on every rank; uniform if all weights are zero (every row already a centroid)."""
    totals = _rank_totals(weights, sync)
    if totals.sum() <= 0:
        weights = torch.ones_like(weights)
        totals = _rank_totals(weights, sync)
    bounds = totals.cumsum(0)
    u = torch.rand((), generator=generator, dtype=torch.float64).item() * bounds[-1].item()
    # min(): rounding may put u on the very last bound.
    owner = min(int(torch.searchsorted(bounds, u, right=True)), len(bounds) - 1)
    point = x.new_zeros(x.shape[1])
    if owner == (rank() if sync else 0):
        below = u - (bounds[owner - 1].item() if owner else 0.0)
        index = int(torch.searchsorted(weights.cumsum(0), below, right=True))
        point = x[min(index, x.shape[0] - 1)].clone()
    return all_reduce_(point) if sync else point


@torch.no_grad()
def kmeans_plusplus(x: Tensor, k: int, generator: torch.Generator, distributed: bool = True) -> Tensor:
    """k-means++ seeding over all ranks' rows (this rank's: ``x`` [n_local, D]); [k, D],
    identical on every rank. ``distributed`` as in :func:`kmeans`."""
    sync = distributed and is_distributed()
    centroids = x.new_empty((k, x.shape[1]))
    d2 = torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
    for j in range(k):
        centroids[j] = _draw(x, d2, generator, sync)
        to_new = ((x - centroids[j]) ** 2).sum(1).double()
        d2 = to_new if j == 0 else torch.minimum(d2, to_new)
    return centroids


def _farthest(x: Tensor, d2: Tensor, m: int, sync: bool) -> Tensor:
    """Up to ``m`` rows of the global data farthest from their centroid, farthest first,
    [≤ m, D], the same on every rank."""
    top = d2.topk(min(m, x.shape[0]))
    # Pad to m rows (distance −1, never preferred to a real row) so ranks gather equal shapes.
    offers = torch.full((m, x.shape[1] + 1), -1.0, dtype=torch.float64, device=x.device)
    offers[: len(top.indices), 0] = top.values.double()
    offers[: len(top.indices), 1:] = x[top.indices].double()
    if sync:
        offers = gather(offers, [m] * world_size())
    offers = offers[offers[:, 0] >= 0]
    order = offers[:, 0].sort(descending=True, stable=True).indices[:m]
    return offers[order, 1:].to(x.dtype)


@torch.no_grad()
def kmeans(
    x: Tensor,
    k: int,
    iters: int = 20,
    init: Tensor | None = None,
    seed: int = 0,
    distributed: bool = True,
) -> KMeansResult:
    """k-means of the rows of ``x`` [n_local, D] (this rank's shard) into ``k`` clusters.

    ``init`` [k, D]: starting centroids (the same on every rank); default: k-means++ drawn
    with ``seed``. ``distributed``: use the process group when one is initialised (every rank
    must call); False clusters this rank's rows alone. A shard may be empty; the data as a
    whole may have fewer distinct rows than ``k`` (some clusters then stay empty)."""
    if x.ndim != 2:
        raise ValueError(f"kmeans expects a 2-D tensor of rows, got shape {tuple(x.shape)}")
    sync = distributed and is_distributed()
    if init is None:
        centroids = kmeans_plusplus(x, k, torch.Generator().manual_seed(seed), distributed)
    else:
        if tuple(init.shape) != (k, x.shape[1]):
            raise ValueError(f"init must have shape {(k, x.shape[1])}, got {tuple(init.shape)}")
        centroids = init.to(x.device, x.dtype).clone()
    iterations = 0
    for iterations in range(1, iters + 1):  # noqa: B007 - read after the loop: how many ran
        d2, labels = _nearest(x, centroids)
        stats = torch.zeros((k, x.shape[1] + 1), dtype=torch.float64, device=x.device)
        stats[:, :-1].index_add_(0, labels, x.double())
        stats[:, -1] = torch.bincount(labels, minlength=k).double()
        if sync:
            all_reduce_(stats)
        counts = stats[:, -1]
        updated = (stats[:, :-1] / counts.clamp_min(1)[:, None]).to(x.dtype)
        empty = (counts == 0).nonzero().flatten()
        if len(empty):
            seeds = _farthest(x, d2, len(empty), sync)
            updated[empty] = centroids[empty]  # clusters with no row left to offer keep their centroid
            updated[empty[: len(seeds)]] = seeds
        converged = torch.equal(updated, centroids)
        centroids = updated
        if converged:
            break
    d2, labels = _nearest(x, centroids)
    inertia = d2.double().sum()
    if sync:
        all_reduce_(inertia)
    return KMeansResult(centroids, labels, float(inertia), iterations)
