"""Evaluate a pretrained checkpoint against its own random initialisation.

    checkpoint ─► config (uniform clip windows) ─► clips of --data ─► embed (Ray Data actor
    pool; trained and random-weight models in one pass) ─► metrics for both ─► metrics.json,
    embeddings.parquet, plots/ ─► MLflow (the pretraining run when it can be found)

Metric keys (flat; docs/design.md), each also under ``baseline/`` for the random-weight model:

- ``retrieval/{a2v,v2a}/recall@{1,5,10}``, ``.../median_rank``: cross-modal instance retrieval;
- ``elo/fitness``: ELo's Zipf fitness of the fused embeddings (label-free);
- on the clips that carry a label, when they are of two classes or more:
  ``probe/{video,audio,fused}/accuracy`` (logistic regression, folds by video) on the
  projections and the joint embedding, and ``probe/{video,audio}_features/accuracy`` on the
  pooled encoder outputs (the field's linear probe); ``knn/{...}/accuracy`` and
  ``cluster/{...}/{nmi,ari}`` on each of these five; ``retrieval/{a2v,v2a}/class_map``;
- counts: ``clips``, ``labelled_clips`` (those the label metrics score), ``videos``,
  ``skipped_videos`` (no baseline twin).

In MLflow every key carries an ``eval/`` prefix, and ``@`` becomes ``_at_`` (MLflow refuses it
in metric names).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from avray import console
from avray.checkpoint import load_state
from avray.config import Config, ConfigError
from avray.data.labels import labelled_count
from avray.data.pipeline import load_clips
from avray.data.shards import DataSource, check_inputs, resolve_source
from avray.eval.embed import (
    BASELINE_PREFIX,
    ID_COLUMNS,
    MODALITIES,
    EmbeddingTable,
    ModelSpec,
    collect,
    embed_dataset,
    evaluation_config,
)
from avray.eval.plots import plot_confusion, plot_projection, plot_recall_curves
from avray.metrics import (
    class_mean_average_precision,
    clustering,
    knn_accuracy,
    linear_probe,
    retrieval,
    retrieval_ranks,
    zipf_fitness,
)
from avray.models.outputs import ENCODER_FEATURES
from avray.storage import is_remote
from avray.tracking import RUN_ID_FILE, Tracker, tracking_uri

logger = logging.getLogger("avray.eval")

METRICS_FILE = "metrics.json"
EMBEDDINGS_FILE = "embeddings.parquet"
PLOTS_FOLDER = "plots"
MLFLOW_PREFIX = "eval/"
COUNT_KEYS = ("clips", "labelled_clips", "videos", "skipped_videos")
# Retrieval directions: (query modality, gallery modality).
DIRECTIONS = {"a2v": ("audio", "video"), "v2a": ("video", "audio")}


@dataclass
class EvalResult:
    """What :func:`evaluate` wrote and where it logged (``run_id`` None when not tracked)."""

    metrics: dict[str, float]
    output: Path
    checkpoint: Path
    plots: list[Path]
    run_id: str | None
    tracking_uri: str | None


def label_free_metrics(table: EmbeddingTable, cfg: Config) -> dict[str, float]:
    """Instance retrieval both ways and ELo fitness: what a corpus without labels can tell."""
    metrics = {}
    for direction, (query, gallery) in DIRECTIONS.items():
        for key, value in retrieval(getattr(table, query), getattr(table, gallery)).items():
            metrics[f"retrieval/{direction}/{key}"] = value
    metrics["elo/fitness"] = zipf_fitness(table.fused, cfg.tune.zipf_clusters, cfg.tune.zipf_exponent, cfg.train.seed)
    return metrics


def label_metrics(table: EmbeddingTable, seed: int, folds: int) -> tuple[dict[str, float], np.ndarray]:
    """Probe, kNN and clustering per modality and class-level retrieval mAP, on clips that all
    carry a label; also the fused probe's out-of-fold predictions (for the confusion matrix)."""
    labels, groups = table.labels.astype(str), table.sources
    metrics = {}
    fused_predictions = np.array([])
    for modality in (*MODALITIES, *ENCODER_FEATURES):
        x = getattr(table, modality)
        if x is None:
            continue
        probe = linear_probe(x, labels, groups, "logistic", folds, seed)
        metrics[f"probe/{modality}/accuracy"] = probe.accuracy
        metrics[f"knn/{modality}/accuracy"] = knn_accuracy(x, labels, groups, folds=folds)
        for key, value in clustering(x, labels, seed=seed).items():
            metrics[f"cluster/{modality}/{key}"] = value
        if modality == "fused":
            fused_predictions = probe.predictions
    for direction, (query, gallery) in DIRECTIONS.items():
        metrics[f"retrieval/{direction}/class_map"] = class_mean_average_precision(
            getattr(table, query), getattr(table, gallery), labels, labels
        )
    return metrics, fused_predictions


def labelled(table: EmbeddingTable) -> EmbeddingTable | None:
    """The clips that carry a label, or None when fewer than two classes are present."""
    mask = np.array([label is not None for label in table.labels], dtype=bool)
    if len(set(table.labels[mask].tolist())) < 2:
        return None
    kept = {f.name: getattr(table, f.name)[mask] for f in fields(table) if getattr(table, f.name) is not None}
    return replace(table, **kept)


def all_metrics(table: EmbeddingTable, cfg: Config, folds: int) -> tuple[dict[str, float], np.ndarray | None]:
    """Every metric of one model's embeddings (non-finite ones dropped) and the fused probe's
    predictions for the labelled clips (None without labels)."""
    metrics = label_free_metrics(table, cfg)
    predictions = None
    with_labels = labelled(table)
    if with_labels is not None:
        supervised, predictions = label_metrics(with_labels, cfg.train.seed, folds)
        metrics.update(supervised)
    return {k: v for k, v in metrics.items() if math.isfinite(v)}, predictions


def write_plots(
    trained: EmbeddingTable, baseline: EmbeddingTable, predictions: np.ndarray | None, folder: Path, seed: int
) -> list[Path]:
    """The fused PCA map, recall@k curves (trained vs baseline) and the fused probe's confusion matrix."""
    folder.mkdir(parents=True, exist_ok=True)
    ranks = {
        f"{direction} {name}": retrieval_ranks(getattr(table, query), getattr(table, gallery))
        for direction, (query, gallery) in DIRECTIONS.items()
        for name, table in (("trained", trained), ("baseline", baseline))
    }
    with_labels = labelled(trained)
    colour_by = None if with_labels is None else np.array(["(none)" if v is None else str(v) for v in trained.labels])
    plots = [
        plot_projection(trained.fused, colour_by, folder / "fused_pca.png", seed),
        plot_recall_curves(ranks, folder / "retrieval_recall.png"),
    ]
    if predictions is not None and len(predictions):
        plots.append(plot_confusion(with_labels.labels.astype(str), predictions, folder / "probe_confusion_fused.png"))
    return plots


def format_table(metrics: dict[str, float]) -> str:
    """One row per metric: name, trained value, random-baseline value (counts at the end)."""
    keys = sorted(k for k in metrics if not k.startswith(BASELINE_PREFIX) and k not in COUNT_KEYS)
    counts = [k for k in COUNT_KEYS if k in metrics]
    width = max(len(k) for k in (*keys, *counts, "metric"))

    def cell(value) -> str:
        return "-" if value is None else f"{value:.4f}"

    lines = [f"{'metric':<{width}}  {'trained':>9}  {'random baseline':>15}"]
    lines += [f"{k:<{width}}  {cell(metrics[k]):>9}  {cell(metrics.get(BASELINE_PREFIX + k)):>15}" for k in keys]
    lines += [f"{k:<{width}}  {int(metrics[k]):>9}" for k in counts]
    return "\n".join(lines)


def find_pretraining_run(checkpoint: Path) -> tuple[Path, str] | None:
    """(run folder, MLflow run id) from the ``mlflow_run_id`` file pretraining leaves in its
    output folder, looked for in the checkpoint folder and each of its parents."""
    for folder in (checkpoint, *checkpoint.parents):
        id_file = folder / RUN_ID_FILE
        if id_file.is_file():
            return folder, id_file.read_text().strip()
    return None


def open_tracker(
    cfg: Config, pretraining_run: tuple[Path, str] | None, checkpoint: Path, output: Path
) -> Tracker | None:
    """The pretraining run's tracker when known, else a new run named "evaluate"; None (and a
    warning) when no MLflow server answers to create one: the results are on disk anyway."""
    if pretraining_run is not None:
        run_folder, run_id = pretraining_run
        # The run folder's tracking URI: by default the sqlite file pretraining wrote there.
        return Tracker(tracking_uri(cfg.tracking, str(run_folder)), cfg.tracking.experiment, run_id=run_id)
    try:
        return Tracker(
            tracking_uri(cfg.tracking, str(output)),
            cfg.tracking.experiment,
            run_name="evaluate",
            tags={"avray.job": "evaluate", "avray.checkpoint": str(checkpoint)},
        )
    except Exception as err:  # noqa: BLE001 - tracking must not lose a finished evaluation
        logger.warning("MLflow unavailable (%s): evaluation results are only in %s", err, output)
        return None


def log_to_mlflow(tracker: Tracker, metrics: dict[str, float], files: Sequence[Path], step: int, finish: bool) -> None:
    """Metrics under ``eval/`` at the checkpoint's epoch, files under the ``eval`` artifact folder."""
    tracker.log_metrics({MLFLOW_PREFIX + k: v for k, v in metrics.items()}, step=step)
    for path in files:
        tracker.log_artifact(path, MLFLOW_PREFIX.rstrip("/") + ("/plots" if path.suffix == ".png" else ""))
    if finish:
        tracker.finish()
    else:
        tracker.flush()


def evaluate(
    checkpoint: str | Path,
    data: str | DataSource,
    output: str | Path,
    *,
    cfg_overrides: Sequence[str] = (),
    track: bool = True,
    batch_size: int = 64,
    folds: int = 5,
    progress: Callable[[str], None] = console.say,
) -> EvalResult:
    """Embed ``data`` with the checkpoint and with its random initialisation, score both, and
    write ``output/metrics.json``, ``output/embeddings.parquet`` (trained model) and
    ``output/plots/*.png``; log them to MLflow unless ``track`` is False.

    ``checkpoint``: a checkpoint folder or a pretraining output folder (its newest checkpoint).
    ``cfg_overrides``: ``key=value`` changes to the checkpoint's config (e.g. data settings).
    ``output`` must be a local folder. Ray is started on first use if not running.
    """
    if is_remote(str(output)):
        raise ConfigError(f"evaluate writes to a local folder, got {output!r}; copy it to object storage afterwards")
    folder, cfg = evaluation_config(checkpoint, cfg_overrides)
    source = resolve_source(data, cfg.data.endpoint_override)
    check_inputs(cfg, source)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    progress(f"[avray] evaluating {folder} on {source.uri}")
    clips = load_clips(source, cfg.data)
    models = {"": ModelSpec.trained(folder), BASELINE_PREFIX: ModelSpec.random_init(cfg)}
    with console.bar("embed", "embedding", total=clips.expected):
        table = collect(
            embed_dataset(clips.dataset, models, batch_size=batch_size, outputs=(*MODALITIES, *ENCODER_FEATURES))
        )
    trained, baseline = EmbeddingTable.from_arrow(table), EmbeddingTable.from_arrow(table, BASELINE_PREFIX)
    pq.write_table(table.select([*ID_COLUMNS, *MODALITIES]).sort_by("clip_id"), output / EMBEDDINGS_FILE)
    progress(f"[avray] embedded {len(trained)} clips; scoring")

    metrics, predictions = all_metrics(trained, cfg, folds)
    baseline_metrics, _ = all_metrics(baseline, cfg, folds)
    metrics.update({BASELINE_PREFIX + k: v for k, v in baseline_metrics.items()})
    metrics.update(
        clips=len(trained),
        labelled_clips=labelled_count(trained.labels)[0],
        videos=len(set(trained.sources.tolist())),
        skipped_videos=len(clips.report().skipped),
    )
    (output / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True))
    plots = write_plots(trained, baseline, predictions, output / PLOTS_FOLDER, cfg.train.seed)

    pretraining_run = find_pretraining_run(folder)
    tracker = open_tracker(cfg, pretraining_run, folder, output) if track else None
    if tracker is not None:
        epoch = load_state(folder)["epoch"] + 1
        # A run of its own is closed here; the pretraining run was closed by pretraining.
        log_to_mlflow(tracker, metrics, [output / METRICS_FILE, *plots], epoch, finish=pretraining_run is None)
    return EvalResult(
        metrics, output, folder, plots, tracker.run_id if tracker else None, tracker.uri if tracker else None
    )
