"""The per-worker pretraining loop; runs inside every Ray Train worker (and Tune trial).

restore -> per epoch: train_epoch (the objectives' epoch-start hooks, then this worker's
shard, step by step) -> validate on held-out videos (rank 0) -> save a checkpoint and report.
The loop names no objective: each owns its state and is driven through the hooks of
:mod:`avray.objectives.base`. Everything (model, objectives' state, optimizer, schedule,
step, RNG) comes back from ``ray.train.get_checkpoint()``, so a lost worker or a re-run
resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import functools
import math
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn

from avray import console
from avray.checkpoint import epoch_folder_name, load_state, save_state
from avray.config import AugmentConfig, Config, config_from_dict, with_overrides
from avray.data.index import knn_labels
from avray.data.labels import batch_labels
from avray.metrics import alignment, effective_rank, knn_accuracy, uniformity, zipf_fitness
from avray.models import build_model
from avray.models.augment import Augmenter
from avray.objectives import LossMixture
from avray.objectives.base import EpochContext, VideoEmbeddings
from avray.objectives.distributed import rank as rank_of_this_process
from avray.objectives.distributed import share, world_size
from avray.tracking import MetricsFile, Tracker, system_metrics
from avray.train.schedule import warmup_cosine


class Pretrainer(nn.Module):
    """Model and loss mixture in one module, so DDP sees every trainable parameter
    (classifier and cluster heads of the objectives included)."""

    def __init__(self, model: nn.Module, mixture: LossMixture):
        super().__init__()
        self.model = model
        self.mixture = mixture

    def forward(self, views: list[tuple[torch.Tensor, torch.Tensor]], targets: dict | None = None):
        """``views``: the batch's augmented (video, audio) views, one forward pass for all.
        -> (loss, unweighted terms, skipped). DDP finds the parameters a step trains by walking
        back from the tensors ``forward`` returns, so only the loss is returned attached."""
        video, audio = (torch.cat(stream) for stream in zip(*views))
        outputs = self.model(video, audio).split_views(len(views))
        result = self.mixture(outputs, targets)
        if result.total is not None:
            return result.total, result.terms, False
        # A skipped step still runs a (zero) backward on every rank so DDP's buckets stay in step.
        return sum(v.sum() for v in outputs.values()) * 0.0, result.terms, True


def _unwrap(module: nn.Module) -> Pretrainer:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def _all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    if not dist.is_initialized() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: float(v) / dist.get_world_size() for k, v in zip(keys, t.tolist())}


def _count_nodes() -> int:
    node = ray.get_runtime_context().get_node_id()
    if not dist.is_initialized():
        return 1
    nodes = [None] * dist.get_world_size()
    dist.all_gather_object(nodes, node)
    return len(set(nodes))


def _to_device(batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    video = torch.as_tensor(batch["video"]).to(device, non_blocking=True)
    audio = torch.as_tensor(batch["audio"]).to(device, non_blocking=True)
    return video, audio


def _autocast(cfg: Config, device: torch.device):
    # bf16 autocast on GPU; on CPU it is slower than float32, so it stays off there.
    enabled = cfg.train.mixed_precision and device.type == "cuda"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


@torch.no_grad()
def embed_videos(core: Pretrainer, shard, cfg: Config, device: torch.device) -> VideoEmbeddings:
    """The training set's per-video mean encoder features, this rank's share of the videos
    (sorted, dealt round-robin: every video on exactly one rank). Collective."""
    core.eval()
    keys = ("video_features", "audio_features")
    sums: dict[str, dict[str, np.ndarray]] = {}
    counts: dict[str, int] = {}
    for batch in shard.iter_batches(batch_size=max(1, cfg.train.batch_size), batch_format="numpy"):
        video, audio = _to_device(batch, device)
        with _autocast(cfg, device):
            out = core.model(video, audio)
        feats = {k: out[k].float().cpu().numpy() for k in keys}
        for i, source in enumerate(batch["source"]):
            entry = sums.setdefault(str(source), {k: 0.0 for k in keys})
            for k in keys:
                entry[k] = entry[k] + feats[k][i]
            counts[str(source)] = counts.get(str(source), 0) + 1
    core.train()
    merged_sums: dict[str, dict[str, np.ndarray]] = {}
    merged_counts: dict[str, int] = {}
    for part_sums, part_counts in share({rank_of_this_process(): (sums, counts)}).values():
        for source, entry in part_sums.items():
            target = merged_sums.setdefault(source, {k: 0.0 for k in keys})
            for k, v in entry.items():
                target[k] = target[k] + v
            merged_counts[source] = merged_counts.get(source, 0) + part_counts[source]
    mine = sorted(merged_sums)[rank_of_this_process() :: world_size()]
    dims = core.model.output_dims
    features = {
        key: torch.tensor(
            np.array([merged_sums[v][key] / merged_counts[v] for v in mine]).reshape(len(mine), dims[key]),
            dtype=torch.float32,
            device=device,
        )
        for key in keys
    }
    return VideoEmbeddings(mine, features, share)


@torch.no_grad()
def validate(core: Pretrainer, dataset, cfg: Config, device: torch.device) -> dict[str, float]:
    """Loss terms on held-out videos, ELo's Zipf fitness on their fused embeddings, the
    diagnostics that show collapse before the loss does (audio-video alignment, each
    projection's uniformity, the effective rank of each modality's projections and of the fused
    embedding), and kNN accuracy on the clips that carry labels, when they are of two classes
    or more (labels are never used for training)."""
    core.eval()
    terms: dict[str, float] = {}
    batches = 0
    embedded: dict[str, list[np.ndarray]] = {"fused": [], "audio": [], "video": []}
    labels, sources = [], []
    for batch in dataset.iter_batches(batch_size=cfg.train.batch_size, batch_format="numpy"):
        video, audio = _to_device(batch, device)
        with _autocast(cfg, device):
            outputs = core.model(video, audio)
        if len(video) >= 2:
            result = core.mixture(outputs, None)
            for name, value in result.terms.items():
                terms[name] = terms.get(name, 0.0) + float(value)
            batches += 1
        for key, parts in embedded.items():
            parts.append(outputs[key].float().cpu().numpy())
        labels += list(batch_labels(batch))
        sources += list(batch["source"])
    core.train()
    metrics = {f"val/{name}": value / batches for name, value in terms.items()} if batches else {}
    if embedded["fused"]:
        arrays = {key: np.concatenate(parts) for key, parts in embedded.items()}
        embeddings = arrays["fused"]
        if len(embeddings) >= 4:
            metrics["val/elo_fitness"] = zipf_fitness(
                embeddings, cfg.tune.zipf_clusters, cfg.tune.zipf_exponent, cfg.train.seed
            )
        if len(embeddings) >= 2:
            metrics["val/alignment"] = alignment(arrays["audio"], arrays["video"])
            for key, values in arrays.items():
                metrics[f"val/effective_rank/{key}"] = effective_rank(values)
                if key != "fused":
                    metrics[f"val/uniformity/{key}"] = uniformity(values)
        scorable = knn_labels(sources, labels)
        if len(scorable) >= 2:
            scored = np.array([label in scorable for label in labels], dtype=bool)
            metrics["val/knn_accuracy"] = knn_accuracy(
                embeddings[scored], np.asarray(labels)[scored], np.asarray(sources)[scored]
            )
    return metrics


@dataclass
class Session:
    """Where :func:`run_loop` runs: one of a ``TorchTrainer``'s DDP workers
    (:func:`train_loop_per_worker`) or a Ray Tune trial training in its own process (avray.tune).

    ``train``/``val``: anything with Ray Data's ``iter_batches`` (a worker's dataset shard, or a
    whole ``Dataset``). ``checkpoint``: the Ray Train or Tune checkpoint to resume from.
    ``report(metrics, folder)`` hands an epoch's results, and the checkpoint folder written on
    rank 0 (else None), to Ray. ``prepare_model`` places the module (DDP on Ray Train).
    ``weights``: loss λ that replace the config's, as a Tune trial's genome does; the objectives
    themselves come from the config.
    ``threads``: PyTorch's intra-op threads (Ray sets OpenMP's to the reserved CPUs; say so).
    ``quiet``: print no epoch lines.
    """

    rank: int
    world: int
    device: torch.device
    train: Any
    val: Any | None
    checkpoint: Any
    report: Callable[[dict, str | None], None]
    prepare_model: Callable[[nn.Module], nn.Module]
    threads: int = 1
    weights: dict[str, float] | None = None
    # A Tune trial: the sweep's driver prints each result with the trial's name instead.
    quiet: bool = False


def newest_checkpoint(registered: ray.train.Checkpoint | None, saved: ray.train.Checkpoint | None):
    """Of the checkpoint Ray's controller registered last and the newest one found saved in the
    run's storage when the run started, the later: a stop signal can land between a worker's
    save and the controller's record of it."""
    if registered is None or saved is None:
        return registered or saved
    # Folders named by epoch (avray.checkpoint.epoch_folder_name) sort by it; Ray's older,
    # time-named ones come before them.
    return max(registered, saved, key=lambda checkpoint: Path(checkpoint.path).name)


def train_loop_per_worker(loop_config: dict) -> None:
    """The Ray Train entry point: one DDP worker of a ``TorchTrainer``."""
    cfg = config_from_dict(loop_config["config"])
    ctx = ray.train.get_context()
    session = Session(
        rank=ctx.get_world_rank(),
        world=ctx.get_world_size(),
        device=ray.train.torch.get_device(),
        train=ray.train.get_dataset_shard("train"),
        val=ray.train.get_dataset_shard("val") if loop_config.get("has_val") else None,
        checkpoint=newest_checkpoint(ray.train.get_checkpoint(), loop_config.get("saved_checkpoint")),
        report=lambda metrics, folder: ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(folder) if folder else None,
            checkpoint_dir_name=epoch_folder_name(metrics["epoch"]) if folder else None,
        ),
        # Some objectives leave heads idle on some steps (a clustering head before its first round).
        prepare_model=lambda module: ray.train.torch.prepare_model(
            module, parallel_strategy_kwargs={"find_unused_parameters": True}
        ),
        threads=loop_config["threads"],
    )
    tracker, run_id = None, loop_config.get("mlflow_run_id")
    if session.rank == 0 and run_id:
        tracker = Tracker(loop_config["mlflow_uri"], cfg.tracking.experiment, run_id=run_id)
    machine = (
        system_metrics(
            loop_config["mlflow_uri"], run_id, cfg.tracking.system_metrics_interval_s, node=f"rank{session.rank}"
        )
        if run_id
        else contextlib.nullcontext()
    )
    with machine:
        run_loop(
            cfg,
            session,
            loop_config["steps_per_epoch"],
            tracker=tracker,
            epoch_clock=loop_config.get("epoch_clock"),
            metrics_file=loop_config.get("metrics_file") if session.rank == 0 else None,
        )


@dataclass
class Progress:
    """Where a run stands: the next epoch to train (0-based), optimizer steps taken, steps
    skipped as non-finite. Saved in every checkpoint."""

    epoch: int = 0
    global_step: int = 0
    skipped_steps: int = 0


def _optimizer(module: nn.Module, core: Pretrainer, cfg: Config) -> torch.optim.Optimizer:
    """AdamW; the parameters the objectives exempt from weight decay (learnable temperatures)
    in a group of their own."""
    exempt = {id(p) for p in core.mixture.no_weight_decay()}
    params = list(module.parameters())
    groups = [{"params": [p for p in params if id(p) not in exempt]}]
    if exempt:
        groups.append({"params": [p for p in params if id(p) in exempt], "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)


def restore(checkpoint, core: Pretrainer, optimizer, scheduler, cfg: Config) -> Progress:
    """Model, objectives' state, optimizer, schedule and RNG from ``checkpoint``. The learning
    rate and the objectives' config buffers (fixed temperatures) are hyperparameters: the
    config's values win over the checkpoint's, since a tuner (PBT) may have changed them."""
    with checkpoint.as_directory() as folder:
        state = load_state(Path(folder))
    kept = core.mixture.config_buffers()
    values = [buffer.clone() for buffer in kept]
    core.load_state_dict(state["module"])
    for buffer, value in zip(kept, values):
        buffer.copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scheduler.base_lrs = [cfg.train.lr] * len(scheduler.base_lrs)
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group["lr"] = cfg.train.lr * factor(scheduler.last_epoch)
    torch.set_rng_state(state["torch_rng"])
    return Progress(state["epoch"] + 1, state["global_step"], state["skipped_steps"])


def train_epoch(
    module: nn.Module,
    core: Pretrainer,
    optimizer,
    scheduler,
    session: Session,
    cfg: Config,
    epoch: int,
    progress: Progress,
) -> dict[str, float]:
    """One pass over this worker's shard; the mean loss terms (over ranks) and clips/s."""
    device = session.device
    # Parameters an objective re-initialised (a classifier head after re-clustering): Adam's
    # moments for the old ones would push the new ones the wrong way.
    context = EpochContext(epoch, functools.cache(lambda: embed_videos(core, session.train, cfg, device)))
    for param in core.mixture.on_epoch_start(context):
        optimizer.state.pop(param, None)
    epoch_start = time.perf_counter()
    totals: dict[str, float] = {}
    steps = clips = 0
    shuffle = {}
    if cfg.train.shuffle_buffer_clips:
        # A new, reproducible mix every epoch and on every worker.
        shuffle = {
            "local_shuffle_buffer_size": cfg.train.shuffle_buffer_clips,
            "local_shuffle_seed": (cfg.train.seed * 1_000 + epoch) * 1_000 + session.rank,
        }
    per_worker = max(1, cfg.train.batch_size // session.world)
    augmenter = Augmenter(cfg.augment if cfg.model.inputs == "clips" else AugmentConfig(enabled=False), cfg.data)
    for batch in session.train.iter_batches(batch_size=per_worker, batch_format="numpy", drop_last=True, **shuffle):
        video, audio = _to_device(batch, device)
        targets = core.mixture.batch_targets(batch, device)
        views = augmenter.views(video, audio, core.mixture.views, progress.global_step, session.rank)
        with _autocast(cfg, device):
            loss, terms, skipped = module(views, targets)
        # Every rank must agree to skip a non-finite step, or DDP's all-reduce would hang.
        bad = torch.tensor([1.0 if skipped or not torch.isfinite(loss) else 0.0], device=device)
        if dist.is_initialized():
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        optimizer.zero_grad(set_to_none=True)
        (torch.nan_to_num(loss) * (0.0 if bad.item() else 1.0)).backward()
        if bad.item():
            progress.skipped_steps += 1
            continue
        if cfg.train.grad_clip > 0:
            nn.utils.clip_grad_norm_(module.parameters(), cfg.train.grad_clip)
        optimizer.step()
        scheduler.step()
        progress.global_step += 1
        core.mixture.on_step_end(progress.global_step)
        if session.rank == 0:
            console.tick("train", done=progress.global_step)
        steps += 1
        clips += len(video)  # clips, not views: what the data plane delivered
        totals["loss"] = totals.get("loss", 0.0) + float(loss.detach())
        for name, value in terms.items():
            totals[f"loss/{name}"] = totals.get(f"loss/{name}", 0.0) + float(value)
    elapsed = time.perf_counter() - epoch_start
    metrics = _all_reduce_mean({k: v / max(1, steps) for k, v in totals.items()}, device)
    throughput = _all_reduce_mean({"clips_per_s": clips / max(elapsed, 1e-9)}, device)["clips_per_s"] * session.world
    return {**metrics, "clips_per_s": throughput, "epoch_seconds": elapsed}


def save(
    folder: Path, saved_cfg: Config, core: Pretrainer, optimizer, scheduler, epoch: int, progress: Progress
) -> None:
    """A checkpoint of ``epoch`` (0-based) in ``folder``: everything :func:`restore` reads."""
    save_state(
        folder,
        saved_cfg,
        {
            "module": core.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "global_step": progress.global_step,
            "skipped_steps": progress.skipped_steps,
            "torch_rng": torch.get_rng_state(),
        },
    )


def run_loop(
    cfg: Config, session: Session, steps_per_epoch: int, tracker=None, epoch_clock=None, metrics_file: str | None = None
) -> None:
    """Train ``cfg.train.epochs`` epochs (resuming from ``session.checkpoint``), validating,
    checkpointing and reporting after each; each epoch's metrics also go to ``metrics_file``
    (:class:`avray.tracking.MetricsFile`) when given."""
    rank, device = session.rank, session.device
    torch.set_num_threads(session.threads)
    torch.manual_seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)

    model = build_model(cfg.model, cfg.data, cfg.augment)
    mixture = LossMixture.from_config(cfg.objectives, model.output_dims)
    if session.weights:
        mixture.set_weights(session.weights)
    # What checkpoints record: the config with the λ this run actually trains with.
    saved_cfg = with_overrides(cfg, {f"objectives.{name}.weight": w for name, w in mixture.weights.items()})
    module = session.prepare_model(Pretrainer(model, mixture))
    core = _unwrap(module)
    optimizer = _optimizer(module, core, cfg)
    steps_per_epoch = max(1, steps_per_epoch)
    scheduler = warmup_cosine(
        optimizer, round(cfg.train.warmup_epochs * steps_per_epoch), cfg.train.epochs * steps_per_epoch
    )

    progress = Progress()
    if session.checkpoint is not None:
        progress = restore(session.checkpoint, core, optimizer, scheduler, cfg)
        if rank == 0 and not session.quiet:
            print(f"[avray] resumed from epoch {progress.epoch} (step {progress.global_step})", flush=True)

    start_epoch = progress.epoch
    records = MetricsFile(metrics_file, start_epoch) if metrics_file else None
    run_start = time.perf_counter()
    num_nodes = _count_nodes()
    for epoch in range(start_epoch, cfg.train.epochs):
        if epoch_clock is not None:
            ray.get(epoch_clock.set.remote(epoch))
        metrics = train_epoch(module, core, optimizer, scheduler, session, cfg, epoch, progress)
        progress.epoch = epoch + 1
        metrics.update(
            epoch=epoch + 1,
            global_step=progress.global_step,
            world_size=session.world,
            num_nodes=num_nodes,
            lr=scheduler.get_last_lr()[0],
            skipped_steps=progress.skipped_steps,
            **{f"lambda/{name}": weight for name, weight in core.mixture.weights.items()},
        )
        if rank == 0 and session.val is not None:
            metrics.update(validate(core, session.val, cfg, device))
        with tempfile.TemporaryDirectory() as folder:
            if rank == 0:
                save(Path(folder), saved_cfg, core, optimizer, scheduler, epoch, progress)
                if not session.quiet:
                    _progress(metrics, cfg, epoch, start_epoch, run_start)
                if records is not None:
                    records.append(metrics)
                if tracker is not None:
                    tracker.log_metrics(
                        {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)},
                        step=epoch + 1,
                    )
            session.report(metrics, folder if rank == 0 else None)
    if tracker is not None:
        tracker.flush()


def _progress(metrics: dict, cfg: Config, epoch: int, start_epoch: int, run_start: float) -> None:
    done = epoch + 1 - start_epoch
    eta = (time.perf_counter() - run_start) / done * (cfg.train.epochs - epoch - 1)
    terms = "  ".join(f"{k.split('/', 1)[1]} {v:.4f}" for k, v in metrics.items() if k.startswith("loss/"))
    val = "  ".join(f"{k.removeprefix('val/')} {v:.3g}" for k, v in metrics.items() if k.startswith("val/"))
    print(
        f"[avray] epoch {epoch + 1}/{cfg.train.epochs}  loss {metrics.get('loss', float('nan')):.4f}  ({terms})  "
        f"{metrics['clips_per_s']:.1f} clips/s  ETA {eta:.0f} s" + (f"\n[avray]   held out: {val}" if val else ""),
        flush=True,
    )
