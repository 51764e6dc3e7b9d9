"""Collectives for the objectives, with the gradients that make DDP exact; no-ops on one process.

Why the backward of :func:`gather` and :func:`all_reduce_sum` *sums* over ranks
-------------------------------------------------------------------------------
Under DDP every rank ``r`` builds a loss ``L_r`` from its own activations ``X_r`` and from what
it received from the other ranks, and DDP averages the parameter gradients:
``g = (1/W) Σ_r ∂L_r/∂θ``, each term computed on rank ``r``'s graph. Once a loss looks at
other ranks' rows (a gather) or at global statistics (an all-reduce), ``L_s`` depends on
``X_r`` for every ``s``, but rank ``r``'s graph only differentiates its own ``L_r``. A backward
that all-reduces (sums) the incoming gradient hands rank ``r`` the full
``Σ_s ∂L_s/∂X_r``, so

    g = (1/W) Σ_r Σ_s ∂L_s/∂X_r · ∂X_r/∂θ = ∂/∂θ [ (1/W) Σ_s L_s ].

Every objective in this package returns the same global-batch loss ``L`` on every rank (local
sums are all-reduced too, see :func:`global_mean`), hence ``(1/W) Σ_s L_s = L`` and DDP's
gradient is exactly the single-process gradient of ``L`` on the concatenated batch. A gather
whose backward returns only this rank's slice of its own gradient (the bug in several SSL
libraries) drops the cross terms ``∂L_s/∂X_r, s ≠ r``: the gradient is then that of a
different, smaller objective. (``torch.distributed.nn.functional`` also sums, but is
deprecated.)

Shards may have different sizes (the last batch of an epoch, one sample on a worker):
:func:`gather` pads to the largest shard and trims, so rows are concatenated in rank order.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True when a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def batch_sizes(n: int, device: torch.device) -> list[int]:
    """Every rank's number of rows, in rank order (one small all-gather)."""
    if not is_distributed():
        return [n]
    local = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(sizes, local)
    return [int(s) for s in torch.cat(sizes).tolist()]


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, sizes: list[int]) -> Tensor:
        ctx.start = sum(sizes[: rank()])
        ctx.n = x.shape[0]
        padded = torch.cat([x, x.new_zeros((max(sizes) - x.shape[0], *x.shape[1:]))]).contiguous()
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        return torch.cat([part[:n] for part, n in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        # Clone: all_reduce works in place and autograd may still hold the incoming buffer.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.start : ctx.start + ctx.n], None


def gather(x: Tensor, sizes: list[int] | None = None) -> Tensor:
    """All ranks' ``x`` [n_r, ...] concatenated along dim 0 in rank order, [Σ n_r, ...].

    Backward: sum-all-reduce of the incoming gradient, then this rank's rows. ``sizes``
    (from :func:`batch_sizes`) saves the size exchange when the caller already has them.
    Identity on one process."""
    if not is_distributed():
        return x
    return _Gather.apply(x, sizes if sizes is not None else batch_sizes(x.shape[0], x.device))


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        out = x.contiguous().clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def all_reduce_sum(x: Tensor) -> Tensor:
    """Σ over ranks of ``x``, differentiable; its backward is again a sum over ranks."""
    return _AllReduceSum.apply(x) if is_distributed() else x


def global_mean(local_sum: Tensor, local_count: float) -> Tensor:
    """``Σ_r local_sum_r / Σ_r local_count_r``: the global-batch mean, the same on every rank.

    One all-reduce of two numbers; exact whatever the shard sizes."""
    if not is_distributed():
        return local_sum / local_count
    both = all_reduce_sum(torch.stack([local_sum, local_sum.new_tensor(float(local_count))]))
    return both[0] / both[1]


@torch.no_grad()
def all_reduce_(x: Tensor) -> Tensor:
    """In-place sum over ranks without autograd (k-means statistics); returns ``x``."""
    if is_distributed():
        dist.all_reduce(x)
    return x


def share(values: dict) -> dict:
    """Every rank's ``{key: value}`` dict merged into one, on every rank (picklable values)."""
    if not is_distributed():
        return dict(values)
    parts: list = [None] * world_size()
    dist.all_gather_object(parts, values)
    return {key: value for part in parts for key, value in part.items()}
