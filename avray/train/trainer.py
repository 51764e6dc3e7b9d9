"""Building and running the Ray Train ``TorchTrainer`` for pretraining."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
import ray
import ray.data
import ray.train

from avray import console
from avray.checkpoint import checkpoint_uri, newest_complete_epoch_folder
from avray.config import Config, ConfigError
from avray.data.pipeline import TrainingData, training_data
from avray.data.report import SkipReport
from avray.data.shards import DataSource, for_inputs, resolve_source
from avray.objectives.mixture import check_labels_for
from avray.storage import filesystem_for, is_remote, join_uri
from avray.tracking import Tracker, start_job_run
from avray.train.faults import FailFastTorchTrainer, deterministic_failure
from avray.train.loop import train_loop_per_worker

RUN_NAME = "pretrain"
METRICS_FILE = "metrics.jsonl"  # each epoch's metrics, one JSON line each (avray.tracking.MetricsFile)


@dataclass
class PretrainResult:
    checkpoint: str | None
    metrics: dict
    history: list[dict]
    skipped: SkipReport
    tracker: Tracker | None


def scaling(cfg: Config) -> ray.train.ScalingConfig:
    """Workers = GPUs when the cluster has them, else CPUs / 2 (the other half decodes video)."""
    resources = ray.cluster_resources()
    use_gpu = cfg.train.use_gpu if cfg.train.use_gpu is not None else resources.get("GPU", 0) > 0
    if cfg.train.num_workers is not None:
        workers = cfg.train.num_workers
    elif use_gpu:
        workers = int(resources.get("GPU", 1))
    else:
        workers = max(1, int(resources.get("CPU", 1) // (2 * cfg.train.cpus_per_worker)))
    return ray.train.ScalingConfig(
        num_workers=workers,
        use_gpu=use_gpu,
        resources_per_worker={"CPU": cfg.train.cpus_per_worker, **({"GPU": 1} if use_gpu else {})},
        placement_strategy=cfg.train.placement_strategy,
    )


def worker_threads(cfg: Config, scaling_config: ray.train.ScalingConfig, cache: bool) -> int:
    """PyTorch threads per training worker: ``train.threads_per_worker``, else the CPUs it
    reserves. With the clips read once into the object store no decoding runs beside training,
    so CPU workers then share all of the cluster's CPUs: a lone worker on a 2-core machine used
    one core while the other sat idle."""
    if cfg.train.threads_per_worker:
        return cfg.train.threads_per_worker
    reserved = max(1, round(cfg.train.cpus_per_worker))
    if not cache or scaling_config.use_gpu:
        return reserved
    return max(reserved, int(ray.cluster_resources().get("CPU", 1) // scaling_config.num_workers))


def cache_training_clips(cfg: Config, data: TrainingData) -> bool:
    """Whether to read the training and held-out clips once into Ray's object store
    (``train.cache_clips``).

    Streaming them from parquet costs Ray Data about 10 ms of CPU a clip, every epoch; on a
    2-core machine that halved training speed (workflows/bench_train.py: 0.43 of a plain
    loop streaming, 1.01 cached). The object store spills to disk rather than fail, but a
    corpus that does not fit should stream.
    """
    if cfg.train.cache_clips != "auto":
        return cfg.train.cache_clips == "always"
    if cfg.data.sampling == "random" and data.epoch_clock is not None:
        return False  # fresh clip windows every epoch: nothing to reuse
    if cfg.model.inputs == "features":
        clip_bytes = 4 * sum(math.prod(shape) for shape in cfg.model.feature_shapes().values())
    else:
        clip_bytes = cfg.data.clip_bytes
    budget = ray.cluster_resources().get("object_store_memory", 0) / 2
    return (data.num_train_clips + data.num_val_clips) * clip_bytes <= budget


def cached(stream: ray.data.Dataset, shuffle_seed: int | None) -> ray.data.Dataset:
    """``stream`` read once into the object store; with ``shuffle_seed``, its rows in a seeded
    global order first.

    Prepared shards and decode tasks give a video's clips side by side, and the training loop's
    shuffle buffer (512 clips) mixes them only locally: a batch of 64 then held about six pairs
    of clips of one video, four times a random order's share (1.5). Such a pair shares its
    scene, voice and room: a negative that no encoder can tell from a positive. The shuffle is
    paid once, when the clips are cached; streamed clips have the buffer only.
    """
    if shuffle_seed is not None:
        stream = stream.random_shuffle(seed=shuffle_seed)
    return stream.materialize()


def ray_storage(output: str) -> tuple[str, pafs.FileSystem | None]:
    """Ray's ``storage_path`` and ``storage_filesystem`` for ``output``. Ray resolves an
    s3:// path with pyarrow, which ignores ``AWS_ENDPOINT_URL``: S3-compatible stores
    (MinIO, SeaweedFS) need the filesystem avray builds (``avray.data.sources.filesystem_for``)."""
    if not is_remote(output):
        return str(Path(output).resolve()), None
    fs, path = filesystem_for(output)
    return path, fs


def saved_checkpoint(storage_path: str, storage_filesystem: pafs.FileSystem | None) -> ray.train.Checkpoint | None:
    """The newest whole checkpoint saved in the run's folder, listed by Ray or not
    (:func:`avray.checkpoint.newest_complete_epoch_folder`)."""
    fs = storage_filesystem or pafs.LocalFileSystem()
    folder = newest_complete_epoch_folder(fs, f"{storage_path}/{RUN_NAME}")
    return ray.train.Checkpoint(folder, filesystem=fs) if folder else None


def steps_per_epoch(cfg: Config, data: TrainingData, workers: int) -> int:
    """Optimizer steps in an epoch; a corpus that cannot fill one batch is the user's to fix."""
    per_worker = max(1, cfg.train.batch_size // workers)
    steps = (data.num_train_clips // workers) // per_worker
    if steps == 0:
        raise ConfigError(
            f"{data.num_train_clips} training clips cannot fill one batch of {per_worker} per worker "
            f"on {workers} workers: lower train.batch_size or add data"
        )
    return steps


def build_trainer(
    cfg: Config, data: TrainingData, output: str, tracker: Tracker | None, cache: bool
) -> FailFastTorchTrainer:
    """``cache``: read the clips into the object store first (:func:`cache_training_clips`)."""
    scaling_config = scaling(cfg)
    storage_path, storage_filesystem = ray_storage(output)
    streams = {"train": data.train, **({"val": data.val} if data.val is not None else {})}
    datasets = {
        name: cached(stream, cfg.train.seed if name == "train" else None) if cache else stream
        for name, stream in streams.items()
    }
    return FailFastTorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": cfg.to_dict(),
            "steps_per_epoch": steps_per_epoch(cfg, data, scaling_config.num_workers),
            "threads": worker_threads(cfg, scaling_config, cache),
            "saved_checkpoint": saved_checkpoint(storage_path, storage_filesystem),
            "has_val": data.val is not None,
            "epoch_clock": data.epoch_clock,
            "mlflow_uri": tracker.uri if tracker else None,
            "mlflow_run_id": tracker.run_id if tracker else None,
            "metrics_file": join_uri(output if is_remote(output) else str(Path(output).resolve()), METRICS_FILE),
        },
        scaling_config=scaling_config,
        datasets=datasets,
        # Options of its own: without them Ray Train copies the context's deprecated
        # exclude_resources into every worker's ingest, with a RayDeprecationWarning each run.
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"], execution_options=ray.data.ExecutionOptions()),
        run_config=ray.train.RunConfig(
            name=RUN_NAME,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            # Lost workers and nodes only: an error of the training code stops the run (FailFastPolicy).
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            # Train V2 patches print() in workers into a logger *and* the original stream, so
            # every progress line reached the driver twice; plain print() is forwarded once.
            worker_runtime_env={
                "env_vars": {
                    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
                    **{k: v for k, v in os.environ.items() if k.startswith("RAY_TRAIN_")},
                }
            },
        ),
    )


def pretrain(cfg: Config, data: str | DataSource, output: str, track: bool = True) -> PretrainResult:
    """Pretrain on ``data``; checkpoints and MLflow under ``output``. Re-running resumes.
    On feature shards (workflows/extract_features.py) only the heads and the fusion train."""
    source = resolve_source(data, cfg.data.endpoint_override)
    cfg = for_inputs(cfg, source)
    data = training_data(source, cfg.data)
    check_labels_for(cfg.objectives, data.train_labelled, source.uri)
    cache = cache_training_clips(cfg, data)
    labelled = f" ({data.val_labelled} labelled)" if 0 < data.val_labelled < data.num_val_clips else ""
    console.say(
        f"[avray] {data.num_train_clips} training clips, {data.num_val_clips} held-out clips{labelled}"
        f"{' (read once into the object store)' if cache else ''}"
    )
    if data.val_labelled and data.val_knn_labels < 2:
        console.say(
            "[avray] no val/knn_accuracy: it needs two or more held-out videos of each of two labels, and "
            f"data.val_fraction={cfg.data.val_fraction} holds out {data.num_val_clips} clips of "
            f"{data.val_knn_labels or 'no'} such label(s); raise it to score kNN"
        )
    # Before the MLflow run is created: a batch the clips cannot fill leaves nothing behind.
    total_steps = cfg.train.epochs * steps_per_epoch(cfg, data, scaling(cfg).num_workers)
    tracker = start_job_run(cfg, output) if track else None
    try:
        trainer = build_trainer(cfg, data, output, tracker, cache)
        with console.bar("train", "training", total=total_steps, unit="step"):
            result = trainer.fit()
    except ray.train.TrainingFailedError as err:
        fatal = deterministic_failure(err)
        if tracker is not None:
            tracker.finish("FAILED")
        if fatal is not None:
            raise fatal from None
        raise
    except KeyboardInterrupt:  # Ctrl-C, or a stop signal (avray.cli): re-running resumes
        if tracker is not None:
            tracker.finish("KILLED")
        raise
    history = result.metrics_dataframe.to_dict("records") if result.metrics_dataframe is not None else []
    checkpoint = checkpoint_uri(result.checkpoint) if result.checkpoint else None
    skipped = data.clips.report()
    if tracker is not None:
        from avray.train.report import log_run_summary

        log_run_summary(tracker, history, checkpoint, skipped, cfg)
    return PretrainResult(checkpoint, result.metrics or {}, history, skipped, tracker)
