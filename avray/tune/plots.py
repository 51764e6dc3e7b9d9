"""Sweep plots: each trial's λ over training (PBT's exploits show as jumps) and its fitness."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from avray.train.report import save_epoch_plot  # noqa: E402


def plot_lambda_trajectories(histories: dict[str, list[dict]], objectives: list[str], path: Path) -> Path:
    """``histories``: trial -> its results (dicts with ``training_iteration`` and ``lambda/<name>``)."""
    fig, axes = plt.subplots(1, len(objectives), figsize=(4 * len(objectives), 3.2), squeeze=False)
    for ax, name in zip(axes[0], objectives):
        for trial, rows in sorted(histories.items()):
            ax.step(
                [r["training_iteration"] for r in rows],
                [r.get(f"lambda/{name}") for r in rows],
                where="post",
                marker=".",
                label=trial,
            )
        ax.set_title(f"λ {name}")
        ax.set_xlabel("epoch")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_fitness(histories: dict[str, list[dict]], metric: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for trial, rows in sorted(histories.items()):
        ax.plot([r["training_iteration"] for r in rows], [r.get(metric) for r in rows], marker=".", label=trial)
    return save_epoch_plot(fig, ax, metric, path)
