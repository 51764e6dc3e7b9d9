import numpy as np
import pytest
import torch

from avray.objectives.distributed import rank
from avray.objectives.kmeans import kmeans, kmeans_plusplus

# scikit-learn is imported inside the tests that use it: the two-rank workers import this
# module for its jobs and would otherwise pay seconds for it.

SIZES = [300, 301]
K = 6


def _blobs(n: int, k: int = 5, dim: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, dim, generator=g) * 4
    truth = torch.randint(0, k, (n,), generator=g)
    return centres[truth] + torch.randn(n, dim, generator=g), truth


def _shard(x, r):
    start = sum(SIZES[:r])
    return x[start : start + SIZES[r]]


def _init(x):
    # Deliberately poor: the first K rows (several in the same blob), so Lloyd has work to do.
    return x[:K].clone()


def _far_init(x):
    # One centroid far from every row: its cluster is empty after the first assignment.
    init = _init(x)
    init[-1] = 1e3
    return init


def _kmeans_job(x):
    local = _shard(x, rank())
    given = kmeans(local, K, iters=50, init=_init(x))
    seeded = kmeans_plusplus(local, K, torch.Generator().manual_seed(7))
    reseeded = kmeans(local, K, iters=50, init=_far_init(x))
    return {"given": given, "plusplus": seeded, "reseeded": reseeded}


@pytest.fixture(scope="module")
def data():
    return _blobs(sum(SIZES))[0]


@pytest.fixture(scope="module")
def two_rank_runs(two_ranks, data):
    return two_ranks.run(_kmeans_job, data)


def test_distributed_inertia_matches_scikit_learn_from_the_same_init(two_rank_runs, data):
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    reference = KMeans(K, init=_init(data).numpy(), n_init=1, max_iter=50, algorithm="lloyd").fit(data.numpy())
    for run in two_rank_runs:
        assert run["given"].inertia == pytest.approx(reference.inertia_, rel=1e-2)
    labels = torch.cat([run["given"].labels for run in two_rank_runs]).numpy()
    assert adjusted_rand_score(labels, reference.labels_) > 0.99


def test_ranks_agree_and_equal_one_process_on_all_rows(two_rank_runs, data):
    single = kmeans(data, K, iters=50, init=_init(data))
    for run in two_rank_runs:
        torch.testing.assert_close(run["given"].centroids, single.centroids)
        assert run["given"].inertia == pytest.approx(single.inertia, rel=1e-6)
    assert torch.equal(torch.cat([run["given"].labels for run in two_rank_runs]), single.labels)


def test_kmeans_plusplus_is_identical_on_every_rank_and_to_one_process(two_rank_runs, data):
    first, second = (run["plusplus"] for run in two_rank_runs)
    assert torch.equal(first, second)
    torch.testing.assert_close(first, kmeans_plusplus(data, K, torch.Generator().manual_seed(7)))
    # Every seed is a data row.
    assert all((data == c).all(1).any() for c in first)


def test_empty_cluster_is_reseeded_identically_on_every_rank(two_rank_runs, data):
    first, second = (run["reseeded"] for run in two_rank_runs)
    assert torch.equal(first.centroids, second.centroids)
    labels = torch.cat([first.labels, second.labels])
    assert torch.bincount(labels, minlength=K).min() > 0
    assert first.centroids.abs().max() < 100  # the far centroid moved onto the data
    single = kmeans(data, K, iters=50, init=_far_init(data))
    torch.testing.assert_close(first.centroids, single.centroids)


def test_kmeans_plusplus_recovers_separated_blobs():
    from sklearn.metrics import adjusted_rand_score

    x, truth = _blobs(400, k=4, seed=2)
    result = kmeans(x, 4, iters=30, seed=0)
    assert adjusted_rand_score(truth.numpy(), result.labels.numpy()) == pytest.approx(1.0)
    assert result.iterations < 30  # converged: an update left the centroids unchanged
    np.testing.assert_allclose(result.inertia, float(((x - result.centroids[result.labels]) ** 2).sum()), rtol=1e-5)


def test_degenerate_data_stays_finite():
    same = torch.ones(10, 3)
    result = kmeans(same, 4, iters=5)
    assert result.inertia == 0 and torch.isfinite(result.centroids).all()
    few = torch.randn(3, 2)  # fewer rows than clusters: some clusters stay empty, nothing breaks
    result = kmeans(few, 5, iters=5)
    assert result.inertia == pytest.approx(0, abs=1e-6) and result.labels.max() < 5


def test_init_must_match_k_and_width():
    with pytest.raises(ValueError, match="init must have shape"):
        kmeans(torch.randn(10, 3), 2, init=torch.zeros(2, 4))
