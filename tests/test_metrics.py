"""Evaluation metrics on small synthetic embeddings whose right answers are known."""

import numpy as np
import pytest

from avray.metrics import (
    alignment,
    class_mean_average_precision,
    clustering,
    effective_rank,
    knn_accuracy,
    linear_probe,
    retrieval,
    retrieval_ranks,
    uniformity,
)

N_CLASSES, VIDEOS_PER_CLASS, CLIPS_PER_VIDEO = 4, 6, 3


def clustered(seed: int, spread: float = 0.1, dim: int = 8):
    """Clips in tight, well separated clusters, one per class: x [N, dim], labels, sources (video ids)."""
    rng = np.random.default_rng(seed)
    centres = 3.0 * np.eye(N_CLASSES, dim)
    labels = np.repeat(np.arange(N_CLASSES), VIDEOS_PER_CLASS * CLIPS_PER_VIDEO)
    sources = np.repeat(np.arange(N_CLASSES * VIDEOS_PER_CLASS), CLIPS_PER_VIDEO).astype(str)
    return centres[labels] + spread * rng.standard_normal((len(labels), dim)), labels, sources


def test_aligned_embeddings_retrieve_perfectly():
    x, labels, _ = clustered(0)
    scores = retrieval(x, x.copy(), labels, labels)
    assert scores["recall@1"] == scores["recall@5"] == scores["recall@10"] == 1.0
    assert scores["median_rank"] == 1.0
    assert scores["class_map"] == pytest.approx(1.0)


def test_random_embeddings_retrieve_at_chance():
    n = 400
    rng = np.random.default_rng(1)
    scores = retrieval(rng.standard_normal((n, 16)), rng.standard_normal((n, 16)))
    assert scores["recall@1"] < 5 / n
    assert scores["recall@10"] < 30 / n
    assert abs(scores["median_rank"] - n / 2) < n / 8


def test_collapsed_embeddings_rank_last_not_first():
    # Every gallery item ties with the true match: ties count against the query.
    ranks = retrieval_ranks(np.ones((10, 4)), np.ones((10, 4)))
    assert (ranks == 10).all()


def test_class_map_matches_sklearn_average_precision():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(2)
    q, g = rng.standard_normal((60, 8)), rng.standard_normal((60, 8))
    labels = rng.integers(0, 5, 60)
    qn, gn = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in (q, g))
    expected = np.mean([average_precision_score(labels == labels[i], qn[i] @ gn.T) for i in range(60)])
    assert class_mean_average_precision(q, g, labels, labels) == pytest.approx(expected)


@pytest.mark.parametrize("classifier", ["logistic", "svm"])
def test_probe_separates_clusters_and_is_at_chance_on_shuffled_labels(classifier):
    x, labels, sources = clustered(3)
    probe = linear_probe(x, labels, sources, classifier)
    assert probe.accuracy == 1.0 and (probe.predictions == labels).all()
    # Labels shuffled by video (a video keeps one label): nothing in x predicts them.
    video_labels = np.random.default_rng(4).permutation(np.repeat(np.arange(N_CLASSES), VIDEOS_PER_CLASS))
    shuffled = video_labels[np.repeat(np.arange(N_CLASSES * VIDEOS_PER_CLASS), CLIPS_PER_VIDEO)]
    assert linear_probe(x, shuffled, sources, classifier).accuracy < 0.5


def test_folds_never_split_a_video():
    # Each video sits at its own random point (more dimensions than videos: linearly
    # separable) and carries a random label: a video seen in training gives its label away
    # (leaky split: accuracy 1), an unseen one gives nothing (chance).
    rng = np.random.default_rng(5)
    videos, clips, dim = 40, 4, 64
    x = np.repeat(rng.standard_normal((videos, dim)), clips, axis=0) + 0.01 * rng.standard_normal((videos * clips, dim))
    labels = np.repeat(rng.integers(0, 2, videos), clips)
    sources = np.repeat(np.arange(videos), clips)
    leaky = linear_probe(x, labels, np.arange(len(x)), folds=4)  # one group per clip
    assert leaky.accuracy > 0.95
    honest = linear_probe(x, labels, sources, folds=4)
    assert 0.2 < honest.accuracy < 0.8
    assert knn_accuracy(x, labels, np.arange(len(x)), k=3, folds=4) > 0.95
    assert 0.2 < knn_accuracy(x, labels, sources, k=3, folds=4) < 0.8


def test_probe_needs_two_videos():
    probe = linear_probe(np.zeros((3, 2)), np.array(["a", "b", "a"]), np.array(["v", "v", "v"]))
    assert np.isnan(probe.accuracy)


def test_clustering_recovers_perfect_clusters():
    x, labels, _ = clustered(6)
    assert clustering(x, labels, seed=0) == {"nmi": pytest.approx(1.0), "ari": pytest.approx(1.0)}
    noise = np.random.default_rng(7).standard_normal(x.shape)
    scores = clustering(noise, labels, seed=0)
    assert scores["nmi"] < 0.2 and abs(scores["ari"]) < 0.1


def test_metrics_are_deterministic():
    x, labels, sources = clustered(8, spread=2.0)
    assert clustering(x, labels, seed=1) == clustering(x, labels, seed=1)
    first, second = linear_probe(x, labels, sources), linear_probe(x, labels, sources)
    assert first.accuracy == second.accuracy and (first.predictions == second.predictions).all()


def test_alignment_and_uniformity_match_their_definitions():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((20, 5)), rng.standard_normal((20, 5))
    zx = x / np.linalg.norm(x, axis=1, keepdims=True)
    zy = y / np.linalg.norm(y, axis=1, keepdims=True)
    assert alignment(x, y) == pytest.approx(np.mean(np.sum((zx - zy) ** 2, axis=1)))
    assert alignment(x, 3 * x) == pytest.approx(0.0, abs=1e-12)
    pairs = [np.exp(-2 * np.sum((zx[i] - zx[j]) ** 2)) for i in range(20) for j in range(20) if i != j]
    assert uniformity(x) == pytest.approx(np.log(np.mean(pairs)))
    assert uniformity(np.ones((6, 4))) == pytest.approx(0.0, abs=1e-12)  # collapsed
    assert uniformity(np.vstack([x] * 200)) == pytest.approx(uniformity(np.vstack([x] * 200), max_rows=4000), abs=0.05)


def test_effective_rank_counts_the_spread_directions():
    rng = np.random.default_rng(1)
    assert effective_rank(np.ones((10, 4))) == 1.0
    line = rng.standard_normal((50, 1)) @ rng.standard_normal((1, 8))
    assert effective_rank(line) == pytest.approx(1.0, abs=1e-6)
    isotropic = rng.standard_normal((5000, 6))
    assert 5.9 < effective_rank(isotropic) <= 6.0
