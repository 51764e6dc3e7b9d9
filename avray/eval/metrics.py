"""Label-free and label-based quality of embeddings (numpy in, floats out)."""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans
from sklearn.model_selection import GroupKFold
from sklearn.neighbors import KNeighborsClassifier


def l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def zipf_fitness(embeddings: np.ndarray, clusters: int = 16, exponent: float = 1.0, seed: int = 0) -> float:
    """ELo's unsupervised fitness (Piergiovanni et al. 2020, "Evolving Losses for
    Unsupervised Video Representation Learning", arXiv 2002.12177): how closely the
    cluster-usage distribution of the embeddings follows a Zipf law.

    k-means with k clusters on the L2-normalised embeddings x [N, D];
    p(c_i) = mean over x of softmax_j(-||x - c_j||²)_i, sorted in descending order;
    q(c_i) = (1 / i^s) / Σ_j (1 / j^s);  fitness = -KL(p || q)  (higher is better, 0 is a
    perfect match). Normalising first makes the softmax temperature independent of the
    embeddings' scale, which a loss mixture is free to change.
    """
    x = l2_normalize(np.asarray(embeddings, np.float64))
    k = max(2, min(clusters, len(x)))
    centroids = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(x).cluster_centers_
    distances = ((x[:, None, :] - centroids[None, :, :]) ** 2).sum(-1)
    logits = -distances - (-distances).max(axis=1, keepdims=True)
    soft = np.exp(logits)
    soft /= soft.sum(axis=1, keepdims=True)
    p = np.sort(soft.mean(axis=0))[::-1]
    ranks = np.arange(1, k + 1, dtype=np.float64)
    q = ranks**-exponent
    q /= q.sum()
    return float(-(p * (np.log(np.maximum(p, 1e-12)) - np.log(q))).sum())


def knn_accuracy(embeddings: np.ndarray, labels: np.ndarray, groups: np.ndarray, k: int = 5, folds: int = 5) -> float:
    """Cosine kNN accuracy, cross-validated with folds split by ``groups`` (source video),
    so clips of one video never sit on both sides."""
    x = l2_normalize(np.asarray(embeddings, np.float64))
    labels = np.asarray(labels)
    folds = min(folds, len(np.unique(groups)))
    if folds < 2:
        return float("nan")
    correct = 0
    for train, test in GroupKFold(n_splits=folds).split(x, labels, groups):
        knn = KNeighborsClassifier(n_neighbors=min(k, len(train)), metric="cosine").fit(x[train], labels[train])
        correct += int((knn.predict(x[test]) == labels[test]).sum())
    return correct / len(x)
