import math
from unittest import mock

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from avray.config import InfoNCEConfig
from avray.objectives.distributed import rank
from avray.objectives.infonce import InfoNCE, infonce_loss
from tests.objectives.tiny import DIMS, assert_same_step, make_inputs, rows, step


def _reference(audio, video, tau):
    """The formula written out, one row at a time."""
    a, v = F.normalize(audio, dim=1), F.normalize(video, dim=1)
    n = len(a)
    terms = []
    for x, y in ((a, v), (v, a)):
        for i in range(n):
            scores = [float(x[i] @ y[j]) / tau for j in range(n)]
            terms.append(-scores[i] + math.log(sum(math.exp(s) for s in scores)))
    return sum(terms) / len(terms)


def test_matches_the_written_out_formula():
    g = torch.Generator().manual_seed(0)
    audio, video = (torch.randn(6, 5, generator=g, dtype=torch.float64) for _ in range(2))
    assert float(infonce_loss(audio, video, 0.3)) == pytest.approx(_reference(audio, video, 0.3), rel=1e-12)


def test_aligned_orthogonal_embeddings_at_small_temperature_cost_nothing():
    e = torch.eye(5, dtype=torch.float64) * 3.0  # unnormalised on purpose
    assert float(infonce_loss(e, e, 0.01)) < 1e-30


def test_identical_embeddings_cost_log_batch():
    x = torch.ones(8, 4, dtype=torch.float64)
    assert float(infonce_loss(x, x, 0.07)) == pytest.approx(math.log(8), rel=1e-12)


def test_symmetric_in_the_modalities_and_gradient_reaches_both():
    g = torch.Generator().manual_seed(1)
    audio = torch.randn(5, 4, generator=g, requires_grad=True)
    video = torch.randn(5, 4, generator=g, requires_grad=True)
    loss = infonce_loss(audio, video, 0.1)
    assert loss.item() == pytest.approx(infonce_loss(video, audio, 0.1).item(), rel=1e-6)
    loss.backward()
    for x in (audio, video):
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_learnable_temperature_is_a_clamped_log_parameter():
    learnable = InfoNCE(temperature=0.07, learnable_temperature=True, min_temperature=0.01)
    assert [n for n, _ in learnable.named_parameters()] == ["log_temperature"]
    outputs = {"audio": torch.randn(6, 4), "video": torch.randn(6, 4)}
    learnable(outputs).backward()
    assert learnable.log_temperature.grad.abs() > 0
    with torch.no_grad():
        learnable.log_temperature.fill_(math.log(1e-4))
    assert learnable.temperature.item() == pytest.approx(0.01)

    fixed = InfoNCE(temperature=0.2)
    assert list(fixed.parameters()) == [] and "log_temperature" in fixed.state_dict()
    assert float(fixed.temperature) == pytest.approx(0.2)


def test_from_config_needs_equal_projection_widths():
    InfoNCE.from_config(InfoNCEConfig(), DIMS, True)
    with pytest.raises(ValueError, match="equal width"):
        InfoNCE.from_config(InfoNCEConfig(), DIMS | {"audio": 3}, True)


# --- 2 ranks × B rows must equal 1 process × 2B rows, loss and parameter gradients ---------


class _NaiveGather(torch.autograd.Function):
    """The bug this package avoids: backward returns this rank's slice of its own gradient."""

    @staticmethod
    def forward(ctx, x, sizes):
        parts = [torch.empty_like(x) for _ in sizes]
        dist.all_gather(parts, x.contiguous())
        ctx.start, ctx.n = sum(sizes[: rank()]), len(x)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        return grad[ctx.start : ctx.start + ctx.n], None


def _make():
    return InfoNCE(temperature=0.1, learnable_temperature=True)


def _infonce_job(inputs, sizes, uneven_inputs, uneven_sizes):
    r = rank()
    result = {"even": step(_make, rows(inputs, sizes, r)), "uneven": step(_make, rows(uneven_inputs, uneven_sizes, r))}
    with mock.patch("avray.objectives.infonce.gather", lambda x, s=None: _NaiveGather.apply(x, s)):
        result["naive"] = step(_make, rows(inputs, sizes, r))
    return result


@pytest.fixture(scope="module")
def two_rank_steps(two_ranks):
    inputs, uneven = make_inputs(12, seed=3), make_inputs(9, seed=4)
    return inputs, uneven, two_ranks.run(_infonce_job, inputs, [6, 6], uneven, [2, 7])


def test_two_ranks_equal_one_process_with_the_global_batch(two_rank_steps):
    inputs, uneven, results = two_rank_steps
    want, want_uneven = step(_make, inputs), step(_make, uneven)
    for result in results:
        assert_same_step(result["even"], want)
        assert_same_step(result["uneven"], want_uneven)


def test_a_gather_without_gradient_sum_would_fail_that_check(two_rank_steps):
    inputs, _, results = two_rank_steps
    want = step(_make, inputs)
    naive = results[0]["naive"]
    torch.testing.assert_close(naive["loss"], want["loss"])  # the forward is the same...
    worst = max(float((naive["grads"][k] - g).abs().max() / g.abs().max()) for k, g in want["grads"].items())
    assert worst > 1e-2  # ...the gradient is not
