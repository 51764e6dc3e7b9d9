"""Evaluation figures (PNG, matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.metrics import confusion_matrix  # noqa: E402

from avray.metrics import l2_normalize, recall_at  # noqa: E402


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_projection(
    embeddings: np.ndarray, labels: np.ndarray | None, path: Path, seed: int = 0, title: str = "fused embeddings (PCA)"
) -> Path:
    """2-D PCA of the L2-normalised ``embeddings`` [N, D], one colour per label.

    PCA rather than t-SNE: linear, deterministic and fast, so it shows the structure a linear
    probe can use, without t-SNE's cluster-shaped artefacts.
    """
    points = PCA(n_components=2, random_state=seed).fit_transform(l2_normalize(np.asarray(embeddings, np.float64)))
    fig, ax = plt.subplots(figsize=(6, 5))
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=8, alpha=0.7)
    else:
        classes = sorted(set(labels.tolist()))
        colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        for i, label in enumerate(classes):
            mask = labels == label
            ax.scatter(points[mask, 0], points[mask, 1], s=8, alpha=0.7, color=colours(i % colours.N), label=str(label))
        ax.legend(fontsize=7, markerscale=2, loc="best", ncol=2 if len(classes) > 10 else 1)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_recall_curves(ranks: Mapping[str, np.ndarray], path: Path, max_k: int = 50) -> Path:
    """Recall@k against k (1..max_k) for each named array of 1-based true-match ranks, e.g.
    ``{"a2v trained": ..., "a2v baseline": ...}``; baselines are drawn dashed."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in ranks.items():
        ks = np.arange(1, min(max_k, len(r)) + 1)
        ax.plot(ks, [recall_at(r, k) for k in ks], "--" if "baseline" in name else "-", label=name)
    ax.set_xlabel("k")
    ax.set_ylabel("recall@k")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_confusion(
    labels: np.ndarray, predictions: np.ndarray, path: Path, title: str = "linear probe (fused), out-of-fold"
) -> Path:
    """Row-normalised confusion matrix (rows: true label, columns: predicted), counts written in."""
    classes = sorted(set(labels.tolist()) | set(predictions.tolist()))
    counts = confusion_matrix(labels, predictions, labels=classes)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * len(classes), 1 + 0.45 * len(classes)))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, fontsize=7, rotation=90 if len(classes) > 12 else 0)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    for (i, j), n in np.ndenumerate(counts):
        if n:
            ax.text(j, i, str(n), ha="center", va="center", fontsize=6, color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046)
    return _save(fig, path)
