import pytest
import torch
import torch.nn.functional as F

from avray.config import SDLConfig
from avray.objectives.distributed import rank
from avray.objectives.sdl import SDL
from tests.objectives.tiny import DIMS, TinyModel, assert_same_step, make_inputs, rows, step


def _reference(video, audio, running, weight, momentum, lam):
    """The soft-CCA formula with torch's own batch norm, one view at a time."""
    normed = [F.batch_norm(x, None, None, training=True, eps=1e-5) for x in (video, audio)]
    e = video.shape[1]
    distance = ((normed[0] - normed[1]) ** 2).mean()
    penalty = 0.0
    for view, x in enumerate(normed):
        estimate = (momentum * running[view] + x.T @ x / len(x)) / (momentum * weight + 1)
        penalty = penalty + (estimate.abs().sum() - estimate.diagonal().abs().sum()) / (e * (e - 1))
    return distance + lam * penalty


def _views(n, e, seed):
    g = torch.Generator().manual_seed(seed)
    return {
        "video": torch.randn(n, e, generator=g, dtype=torch.float64) * 3 + 1,
        "audio": torch.randn(n, e, generator=g, dtype=torch.float64),
    }


def test_matches_the_written_out_formula_over_consecutive_steps():
    sdl = SDL(4, decorrelation_weight=0.5, momentum=0.8)
    running, weight = torch.zeros(2, 4, 4, dtype=torch.float64), 0.0
    for seed in range(3):
        batch = _views(10, 4, seed)
        want = _reference(batch["video"], batch["audio"], running, weight, 0.8, 0.5)
        torch.testing.assert_close(sdl(batch), want)
        normed = [F.batch_norm(x, None, None, training=True, eps=1e-5) for x in batch.values()]
        running = 0.8 * running + torch.stack([x.T @ x / 10 for x in normed])
        weight = 0.8 * weight + 1
        torch.testing.assert_close(sdl.running_covariance, running)
        assert float(sdl.running_weight) == pytest.approx(weight)


def test_known_values():
    sdl = SDL(3, decorrelation_weight=1.0, momentum=0.0)
    # Zero-mean orthogonal ±1 columns (a Hadamard matrix without its constant column):
    # decorrelated dimensions; identical views: no distance.
    hadamard = torch.tensor([[1, 1, 1], [-1, 1, -1], [1, -1, -1], [-1, -1, 1]], dtype=torch.float64)
    assert float(sdl({"video": hadamard, "audio": hadamard})) == pytest.approx(0.0, abs=1e-9)
    # Every dimension a copy of one signal: |correlation| 1 off the diagonal, in both views.
    copies = torch.randn(16, 1, dtype=torch.float64).repeat(1, 3)
    assert float(sdl({"video": copies, "audio": copies})) == pytest.approx(2.0, rel=1e-4)


def test_eval_mode_does_not_touch_the_running_estimate():
    sdl = SDL(4).eval()
    sdl(_views(8, 4, 0))
    assert float(sdl.running_weight) == 0 and sdl.running_covariance.abs().sum() == 0


def test_a_non_finite_batch_does_not_poison_the_running_estimate():
    sdl = SDL(4)
    sdl(_views(8, 4, 0))
    before = sdl.running_covariance.clone()
    bad = _views(8, 4, 1)
    bad["video"][0, 0] = float("nan")
    assert not torch.isfinite(sdl(bad))
    assert torch.equal(sdl.running_covariance, before) and float(sdl.running_weight) == 1
    assert torch.isfinite(sdl(_views(8, 4, 2)))


@pytest.mark.parametrize("n, e", [(1, 4), (3, 8)], ids=["one-row", "E>B"])
def test_degenerate_batches_stay_finite(n, e):
    for batch in (
        _views(n, e, 0),
        {"video": torch.ones(n, e, dtype=torch.float64), "audio": torch.ones(n, e, dtype=torch.float64)},
    ):
        batch = {k: v.requires_grad_() for k, v in batch.items()}
        loss = SDL(e)(batch)
        loss.backward()
        assert torch.isfinite(loss) and all(torch.isfinite(v.grad).all() for v in batch.values())


def test_from_config_needs_equal_widths():
    assert SDL.from_config(SDLConfig(momentum=0.5), DIMS, True).momentum == 0.5
    with pytest.raises(ValueError, match="equal width"):
        SDL.from_config(SDLConfig(), DIMS | {"video": 3}, True)


# --- distributed: two consecutive steps, buffers included --------------------------------------


def _make():
    return SDL(DIMS["video"], decorrelation_weight=0.7, momentum=0.9)


def _two_steps(inputs: list[dict]) -> dict:
    torch.manual_seed(0)
    model, sdl = TinyModel().double(), _make()
    losses, grads = [], []
    for batch in inputs:
        model.zero_grad()
        loss = sdl(model(batch))
        loss.backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters()])
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(grad)
            grad /= torch.distributed.get_world_size()
        losses.append(loss.detach())
        grads.append(grad)
    return {"losses": losses, "grads": grads, "state": sdl.state_dict()}


def _job(batches, sizes):
    return {
        "two": _two_steps([rows(b, sizes, rank()) for b in batches]),
        "step": step(_make, rows(batches[0], sizes, rank())),
    }


@pytest.mark.parametrize("sizes", [[6, 4], [1, 1]], ids=["6+4", "one-per-rank"])
def test_two_ranks_equal_one_process_with_the_global_batch(two_ranks, sizes):
    batches = [make_inputs(sum(sizes), seed=s) for s in (7, 8)]
    want = _two_steps(batches)
    for result in two_ranks.run(_job, batches, sizes):
        assert_same_step(result["step"], step(_make, batches[0]))
        for got_value, want_value in zip(
            result["two"]["losses"] + result["two"]["grads"], want["losses"] + want["grads"]
        ):
            torch.testing.assert_close(got_value, want_value, rtol=1e-9, atol=1e-12)
        for name, value in want["state"].items():
            torch.testing.assert_close(result["two"]["state"][name], value, rtol=1e-9, atol=1e-12)
