import numpy as np
import pytest
import torch

from avray.config import DCCAConfig
from avray.objectives.dcca import DCCA, _InvSqrtPSD, canonical_correlations, dcca_loss
from avray.objectives.distributed import rank
from tests.objectives.tiny import DIMS, assert_same_step, make_inputs, rows, step

# scikit-learn is imported inside the tests that use it: the two-rank workers import this
# module for its jobs and would otherwise pay seconds for it.


def _correlated_views(n=500, seed=0):
    """Two 3-d views sharing 2 latent signals of different strength, plus noise."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 2))
    x = np.c_[latent[:, 0] + 0.3 * rng.normal(size=n), latent[:, 1] + 1.0 * rng.normal(size=n), rng.normal(size=n)]
    y = np.c_[latent[:, 0] + 0.5 * rng.normal(size=n), rng.normal(size=n), latent[:, 1] + 0.8 * rng.normal(size=n)]
    return x, y


def test_linear_encoders_match_scikit_learn_cca():
    from sklearn.cross_decomposition import CCA

    x, y = _correlated_views()
    cca = CCA(n_components=3, max_iter=5000, tol=1e-12).fit(x, y)
    xs, ys = cca.transform(x, y)
    want = sorted((abs(np.corrcoef(xs[:, i], ys[:, i])[0, 1]) for i in range(3)), reverse=True)
    # Linear (invertible) encoders leave canonical correlations unchanged.
    g = torch.Generator().manual_seed(0)
    w1, w2 = torch.randn(3, 3, generator=g, dtype=torch.float64), torch.randn(3, 3, generator=g, dtype=torch.float64)
    h1, h2 = torch.from_numpy(x) @ w1, torch.from_numpy(y) @ w2
    got = canonical_correlations(h1, h2, eps=1e-9)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-3)


def test_loss_sums_the_top_k_correlations():
    x, y = (torch.from_numpy(v) for v in _correlated_views())
    rho = canonical_correlations(x, y, eps=1e-9)
    assert torch.all(rho[:-1] >= rho[1:])
    torch.testing.assert_close(dcca_loss(x, y, top_k=2, eps=1e-9), -rho[:2].sum())
    torch.testing.assert_close(dcca_loss(x, y, eps=1e-9), -rho.sum())


def test_linearly_related_views_are_perfectly_correlated():
    h1 = torch.randn(200, 4, dtype=torch.float64)
    h2 = h1 @ torch.randn(4, 4, dtype=torch.float64) + 3.0
    torch.testing.assert_close(canonical_correlations(h1, h2, eps=1e-10), torch.ones(4, dtype=torch.float64))


def test_inverse_square_root_gradient_is_exact():
    a = torch.randn(5, 5, dtype=torch.float64)
    spd = (a @ a.T + 0.5 * torch.eye(5, dtype=torch.float64)).requires_grad_()
    # Perturb symmetrically: the function is only defined on symmetric matrices.
    assert torch.autograd.gradcheck(lambda m: _InvSqrtPSD.apply((m + m.T) / 2, 1e-6), (spd,))
    torch.testing.assert_close(
        _InvSqrtPSD.apply(spd, 1e-6) @ _InvSqrtPSD.apply(spd, 1e-6) @ spd, torch.eye(5, dtype=torch.float64)
    )


def _naive_eigh_loss(h1, h2, eps):
    """DCCA through eigh's own autograd: its backward divides by λ_i − λ_j."""

    def inv_sqrt(c):
        lam, v = torch.linalg.eigh(c)
        return v @ torch.diag(lam.clamp_min(eps).rsqrt()) @ v.T

    h1, h2 = h1 - h1.mean(0), h2 - h2.mean(0)
    n = len(h1) - 1
    eye = torch.eye(h1.shape[1], dtype=h1.dtype)
    t = inv_sqrt(h1.T @ h1 / n + eps * eye) @ (h1.T @ h2 / n) @ inv_sqrt(h2.T @ h2 / n + eps * eye)
    return -torch.linalg.svdvals(t).sum()


def test_rank_deficient_covariances_keep_gradients_finite_and_exact():
    # E = 8 > B = 3: each covariance has the eigenvalue ε repeated 6 times.
    g = torch.Generator().manual_seed(0)
    h1, h2 = (torch.randn(3, 8, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    loss = dcca_loss(h1, h2, eps=1e-3)
    loss.backward()
    assert torch.isfinite(h1.grad).all() and torch.isfinite(h2.grad).all() and h1.grad.abs().sum() > 0
    # Here eigh's own autograd happens to survive (the degenerate block gets no gradient): same answer.
    naive = [x.detach().clone().requires_grad_() for x in (h1, h2)]
    naive_loss = _naive_eigh_loss(*naive, eps=1e-3)
    naive_loss.backward()
    torch.testing.assert_close(naive_loss, loss.detach())
    torch.testing.assert_close(naive[0].grad, h1.grad)
    torch.testing.assert_close(naive[1].grad, h2.grad)


def test_identical_rows_break_eigh_autograd_but_not_ours():
    # Covariance exactly ε·I: all eigenvalues equal, eigh's backward divides 0 by 0.
    h1 = torch.ones(4, 4, dtype=torch.float64, requires_grad=True)
    h2 = (2 * torch.ones(4, 4, dtype=torch.float64)).requires_grad_()
    naive = [x.detach().clone().requires_grad_() for x in (h1, h2)]
    _naive_eigh_loss(*naive, eps=1e-3).backward()
    assert not torch.isfinite(naive[0].grad).all()
    dcca_loss(h1, h2, eps=1e-3).backward()
    assert torch.isfinite(h1.grad).all() and torch.isfinite(h2.grad).all()


@pytest.mark.parametrize("batch", [torch.ones(4, 4), torch.randn(1, 4)], ids=["identical-rows", "one-row"])
def test_degenerate_batches_stay_finite(batch):
    h1 = batch.clone().requires_grad_()
    h2 = (batch * 2).requires_grad_()
    loss = dcca_loss(h1, h2)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(h1.grad).all() and torch.isfinite(h2.grad).all()
    assert loss.dtype == torch.float32


def test_from_config_checks_top_k():
    assert DCCA.from_config(DCCAConfig(top_k=2), DIMS, True).top_k == 2
    with pytest.raises(ValueError, match="top_k"):
        DCCA.from_config(DCCAConfig(top_k=5), DIMS, True)


# --- distributed: statistics are all-reduced, so 2 × B rows equal 1 × 2B ---------------------


def _make():
    return DCCA(eps=1e-3)


def _job(inputs, sizes):
    r = rank()
    shard = rows(inputs, sizes, r)
    return {"rho": canonical_correlations(shard["video"], shard["audio"]), "step": step(_make, shard)}


@pytest.mark.parametrize("sizes", [[20, 12], [1, 1]], ids=["20+12", "one-per-rank"])
def test_two_ranks_equal_one_process_with_the_global_batch(two_ranks, sizes):
    inputs = make_inputs(sum(sizes), seed=5)
    want = step(_make, inputs)
    for result in two_ranks.run(_job, inputs, sizes):
        torch.testing.assert_close(result["rho"], canonical_correlations(inputs["video"], inputs["audio"]))
        assert_same_step(result["step"], want)


def test_non_finite_input_gives_nan_not_an_exception():
    h1 = torch.randn(6, 3)
    h1[2, 1] = float("inf")
    assert torch.isnan(dcca_loss(h1, torch.randn(6, 3)))
