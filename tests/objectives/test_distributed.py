import pytest
import torch

from avray.objectives.distributed import (
    all_reduce_,
    all_reduce_sum,
    batch_sizes,
    gather,
    global_mean,
    is_distributed,
    rank,
    world_size,
)

SIZES = [3, 2]  # uneven on purpose


def test_single_process_is_a_no_op():
    x = torch.randn(4, 3, requires_grad=True)
    assert (is_distributed(), world_size(), rank()) == (False, 1, 0)
    assert batch_sizes(4, x.device) == [4]
    assert gather(x) is x and all_reduce_sum(x) is x and all_reduce_(x) is x
    assert global_mean(torch.tensor(6.0), 4) == 1.5


def _collectives_job() -> dict:
    r = rank()
    x = torch.arange(SIZES[r] * 2, dtype=torch.float64).reshape(-1, 2).add(10 * r).requires_grad_()
    gathered = gather(x)
    # A rank-dependent weighting, so the gradient that reaches x must come from both ranks.
    weights = torch.arange(gathered.numel(), dtype=torch.float64).reshape(gathered.shape) * (r + 1)
    (weights * gathered).sum().backward()
    gather_grad = x.grad.clone()

    x.grad = None
    summed = all_reduce_sum(x[0])
    ((r + 1) * summed).sum().backward()
    mean = global_mean(torch.tensor(float(SIZES[r]) * (r + 1)), SIZES[r])
    return {
        "sizes": batch_sizes(SIZES[r], x.device),
        "gathered": gathered.detach(),
        "gather_grad": gather_grad,
        "sum": summed.detach(),
        "sum_grad": x.grad.clone(),
        "mean": mean,
        "world": world_size(),
        "distributed": is_distributed(),
    }


@pytest.fixture(scope="module")
def collectives(two_ranks):
    return two_ranks.run(_collectives_job)


def test_ranks_see_the_group(collectives):
    assert [c["world"] for c in collectives] == [2, 2] and all(c["distributed"] for c in collectives)
    assert all(c["sizes"] == SIZES for c in collectives)


def test_gather_concatenates_uneven_shards_in_rank_order(collectives):
    want = torch.cat([torch.arange(SIZES[r] * 2, dtype=torch.float64).reshape(-1, 2) + 10 * r for r in range(2)])
    for c in collectives:
        torch.testing.assert_close(c["gathered"], want)


def test_gather_backward_sums_every_ranks_gradient(collectives):
    # d/dx_r of Σ_s (s+1) Σ w·gathered = (1 + 2) · w restricted to rank r's rows.
    w = torch.arange(sum(SIZES) * 2, dtype=torch.float64).reshape(-1, 2)
    for r, c in enumerate(collectives):
        start = sum(SIZES[:r])
        torch.testing.assert_close(c["gather_grad"], 3 * w[start : start + SIZES[r]])


def test_all_reduce_sum_forward_and_backward(collectives):
    for c in collectives:
        torch.testing.assert_close(c["sum"], torch.tensor([10.0, 12.0], dtype=torch.float64))
        # Both ranks' losses (weights 1 and 2) depend on each x[0]: gradient 1 + 2.
        torch.testing.assert_close(c["sum_grad"][0], torch.full((2,), 3.0, dtype=torch.float64))


def test_global_mean_weights_ranks_by_count(collectives):
    # (3·1 + 2·2) / (3 + 2), the same on both ranks.
    assert [float(c["mean"]) for c in collectives] == [pytest.approx(7 / 5)] * 2
