"""End-of-run summary for MLflow: loss curves, the best checkpoint, what was skipped."""

from __future__ import annotations

import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from avray.config import Config  # noqa: E402
from avray.data.report import SkipReport  # noqa: E402
from avray.storage import is_remote  # noqa: E402
from avray.tracking import Tracker, redact  # noqa: E402


def plot_losses(history: list[dict], path: Path) -> Path:
    """One line per loss term (training) and held-out terms dashed, against the epoch."""
    fig, ax = plt.subplots(figsize=(7, 4))
    epochs = [h["epoch"] for h in history]
    keys = sorted(
        {k for h in history for k in h if k == "loss" or k.startswith(("loss/", "val/"))}
        - {"val/elo_fitness", "val/knn_accuracy"}
    )
    for key in keys:
        ax.plot(epochs, [h.get(key, float("nan")) for h in history], "--" if key.startswith("val/") else "-", label=key)
    return save_epoch_plot(fig, ax, "loss", path)


def save_epoch_plot(fig, ax, ylabel: str, path: Path) -> Path:
    """Label a curves-against-epochs plot, write it as a PNG and free it."""
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def best_epoch(history: list[dict]) -> dict | None:
    """Highest held-out ELo fitness when validated, else the lowest training loss."""
    if not history:
        return None
    if all("val/elo_fitness" in h for h in history):
        return max(history, key=lambda h: h["val/elo_fitness"])
    return min(history, key=lambda h: h.get("loss", float("inf")))


def log_run_summary(
    tracker: Tracker, history: list[dict], checkpoint: str | None, skipped: SkipReport, cfg: Config
) -> None:
    folder = Path(tempfile.mkdtemp(prefix="avray-summary-"))
    if history:
        tracker.log_artifact(plot_losses(history, folder / "loss_curves.png"), "plots")
    best = best_epoch(history)
    if best is not None:
        tracker.set_tag("avray.best_epoch", str(int(best["epoch"])))
    if checkpoint is not None:
        tracker.set_tag("avray.checkpoint", checkpoint)
        if not is_remote(checkpoint):  # a remote checkpoint is already where the cluster can read it
            tracker.log_artifact(checkpoint, "checkpoint")
            log_mlflow_model(tracker, checkpoint, cfg)
    counts = skipped.counts()
    if counts:
        tracker.log_metrics({f"data/skipped/{reason}": n for reason, n in counts.items()}, step=0)
    tracker.log_text(skipped.summary(), "skipped_files.txt")
    tracker.finish()


def log_mlflow_model(tracker: Tracker, checkpoint: str, cfg: Config) -> None:
    """The checkpoint as an MLflow Model (avray.mlflow_model), registered when the config asks;
    a tracking server that refuses costs a warning, not the run."""
    from avray import console
    from avray.models.mlflow_model import log_model

    try:
        model_uri = log_model(tracker.uri, tracker.run_id, checkpoint, cfg, cfg.tracking.register_model)
    except Exception as err:  # noqa: BLE001 - the checkpoint is safe on disk whatever MLflow says
        console.say(f"[avray] warning: the MLflow Model was not logged: {redact(str(err)).splitlines()[0]}")
        return
    tracker.set_tag("avray.model_uri", model_uri)
    name = cfg.tracking.register_model
    if name:
        console.say(f"[avray] registered the model as {name} (models:/{name}/latest)")
