"""The per-worker pretraining loop; runs inside every Ray Train worker.

Each epoch: (XDC only) re-cluster the whole training set; stream this worker's shard,
step the optimizer; validate on held-out videos (rank 0); checkpoint and report.
Restores everything (model, optimizer, schedule, step, cluster state, RNG) from
``ray.train.get_checkpoint()``, so a lost worker or a re-run resumes where it stopped.
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn

from avray.config import Config, config_from_dict, with_overrides
from avray.data.labels import batch_labels, labelled_count
from avray.eval.metrics import knn_accuracy, zipf_fitness
from avray.models import build_model
from avray.objectives import LossMixture
from avray.train.checkpoint import load_state, save_state
from avray.train.schedule import warmup_cosine


class Pretrainer(nn.Module):
    """Model and loss mixture in one module, so DDP sees every trainable parameter
    (classifier and cluster heads of the objectives included)."""

    def __init__(self, model: nn.Module, mixture: LossMixture):
        super().__init__()
        self.model = model
        self.mixture = mixture

    def forward(self, video: torch.Tensor, audio: torch.Tensor, targets: dict | None = None):
        """-> (loss, unweighted terms, skipped). DDP finds the parameters a step trains by walking
        back from the tensors ``forward`` returns, so only the loss is returned attached."""
        outputs = self.model(video, audio)
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


def _xdc_targets(pseudo_labels: dict[str, dict[str, int]], sources, device) -> dict[str, torch.Tensor]:
    keys = next(iter(pseudo_labels.values())).keys()
    return {
        key: torch.tensor([pseudo_labels[str(s)][key] for s in sources], dtype=torch.long, device=device)
        for key in keys
    }


@torch.no_grad()
def _recluster(core: Pretrainer, shard, cfg: Config, device: torch.device) -> dict[str, dict[str, int]]:
    """XDC's offline clustering round: embed this worker's shard, average per video, run the
    distributed k-means inside the XDC objective, and share every video's pseudo-labels."""
    core.eval()
    sums: dict[str, dict[str, np.ndarray]] = {}
    counts: dict[str, int] = {}
    for batch in shard.iter_batches(batch_size=max(1, cfg.train.batch_size), batch_format="numpy"):
        video, audio = _to_device(batch, device)
        with _autocast(cfg, device):
            out = core.model(video, audio)
        feats = {k: out[k].float().cpu().numpy() for k in ("video_features", "audio_features")}
        for i, source in enumerate(batch["source"]):
            entry = sums.setdefault(str(source), {k: 0.0 for k in feats})
            for k in feats:
                entry[k] = entry[k] + feats[k][i]
            counts[str(source)] = counts.get(str(source), 0) + 1
    core.train()
    shards = [None] * dist.get_world_size() if dist.is_initialized() else None
    if shards is not None:
        dist.all_gather_object(shards, (sums, counts))
    else:
        shards = [(sums, counts)]
    merged_sums: dict[str, dict[str, np.ndarray]] = {}
    merged_counts: dict[str, int] = {}
    for part_sums, part_counts in shards:
        for source, entry in part_sums.items():
            target = merged_sums.setdefault(source, {k: 0.0 for k in entry})
            for k, v in entry.items():
                target[k] = target[k] + v
            merged_counts[source] = merged_counts.get(source, 0) + part_counts[source]
    videos = sorted(merged_sums)
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    mine = videos[rank::world]
    dims = core.model.output_dims
    features = {
        key: torch.tensor(
            np.array([merged_sums[v][key] / merged_counts[v] for v in mine]).reshape(len(mine), dims[key]),
            dtype=torch.float32, device=device,
        )
        for key in ("video_features", "audio_features")
    }
    labels = core.mixture.objectives["xdc"].recluster(features)
    local = {v: {k: int(t[i]) for k, t in labels.items()} for i, v in enumerate(mine)}
    if not dist.is_initialized():
        return local
    gathered = [None] * world
    dist.all_gather_object(gathered, local)
    return {v: lab for part in gathered for v, lab in part.items()}


@torch.no_grad()
def validate(core: Pretrainer, dataset, cfg: Config, device: torch.device) -> dict[str, float]:
    """Loss terms on held-out videos, ELo's Zipf fitness on their fused embeddings, and
    kNN accuracy on those that carry labels, when they are of two classes or more (labels are
    never used for training)."""
    core.eval()
    terms: dict[str, float] = {}
    batches = 0
    fused, labels, sources = [], [], []
    for batch in dataset.iter_batches(batch_size=cfg.train.batch_size, batch_format="numpy"):
        video, audio = _to_device(batch, device)
        with _autocast(cfg, device):
            outputs = core.model(video, audio)
        if len(video) >= 2:
            result = core.mixture(outputs, None)
            for name, value in result.terms.items():
                terms[name] = terms.get(name, 0.0) + float(value)
            batches += 1
        fused.append(outputs["fused"].float().cpu().numpy())
        labels += list(batch_labels(batch))
        sources += list(batch["source"])
    core.train()
    metrics = {f"val/{name}": value / batches for name, value in terms.items()} if batches else {}
    if fused:
        embeddings = np.concatenate(fused)
        if len(embeddings) >= 4:
            metrics["val/elo_fitness"] = zipf_fitness(embeddings, cfg.tune.zipf_clusters, cfg.tune.zipf_exponent, cfg.train.seed)
        labelled = np.array([label is not None for label in labels], dtype=bool)
        if labelled_count(labels)[1] > 1:
            metrics["val/knn_accuracy"] = knn_accuracy(embeddings[labelled], np.asarray(labels)[labelled],
                                                       np.asarray(sources)[labelled])
    return metrics


@dataclass
class Session:
    """Where :func:`run_loop` runs: one of a ``TorchTrainer``'s DDP workers
    (:func:`train_loop_per_worker`) or a Ray Tune trial training in its own process (avray.tune).

    ``train``/``val``: anything with Ray Data's ``iter_batches`` (a worker's dataset shard, or a
    whole ``Dataset``). ``checkpoint``: the Ray Train or Tune checkpoint to resume from.
    ``report(metrics, folder)`` hands an epoch's results, and the checkpoint folder written on
    rank 0 (else None), to Ray. ``prepare_model`` places the module (DDP on Ray Train). ``weights``: loss λ that replace the
    config's, as a Tune trial's genome does; the objectives themselves come from the config.
    ``threads``: PyTorch's intra-op threads (Ray sets OpenMP's to the reserved CPUs; say so).
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


def train_loop_per_worker(loop_config: dict) -> None:
    """The Ray Train entry point: one DDP worker of a ``TorchTrainer``."""
    cfg = config_from_dict(loop_config["config"])
    ctx = ray.train.get_context()
    session = Session(
        rank=ctx.get_world_rank(), world=ctx.get_world_size(), device=ray.train.torch.get_device(),
        train=ray.train.get_dataset_shard("train"),
        val=ray.train.get_dataset_shard("val") if loop_config.get("has_val") else None,
        checkpoint=ray.train.get_checkpoint(),
        report=lambda metrics, folder: ray.train.report(
            metrics, checkpoint=ray.train.Checkpoint.from_directory(folder) if folder else None),
        # Some objectives leave heads idle on some steps (e.g. XDC before its first clustering).
        prepare_model=lambda module: ray.train.torch.prepare_model(
            module, parallel_strategy_kwargs={"find_unused_parameters": True}),
        threads=cfg.train.threads_per_worker or max(1, round(cfg.train.cpus_per_worker)),
    )
    tracker = None
    if session.rank == 0 and loop_config.get("mlflow_run_id"):
        from avray.tracking import Tracker

        tracker = Tracker(loop_config["mlflow_uri"], cfg.tracking.experiment, run_id=loop_config["mlflow_run_id"])
    run_loop(cfg, session, loop_config["steps_per_epoch"], tracker=tracker, epoch_clock=loop_config.get("epoch_clock"))


def run_loop(cfg: Config, session: Session, steps_per_epoch: int, tracker=None, epoch_clock=None) -> None:
    """Train ``cfg.train.epochs`` epochs (resuming from ``session.checkpoint``), validating,
    checkpointing and reporting after each."""
    rank, world, device = session.rank, session.world, session.device
    torch.set_num_threads(session.threads)
    torch.manual_seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)

    model = build_model(cfg.model, cfg.data)
    mixture = LossMixture.from_config(cfg.objectives, model.output_dims)
    if session.weights:
        mixture.set_weights(session.weights)
    # What checkpoints record: the config with the λ this run actually trains with.
    saved_cfg = with_overrides(cfg, {f"objectives.{name}.weight": w for name, w in mixture.weights.items()})
    module = session.prepare_model(Pretrainer(model, mixture))
    core = _unwrap(module)
    optimizer = torch.optim.AdamW(module.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    steps_per_epoch = max(1, steps_per_epoch)
    scheduler = warmup_cosine(optimizer, round(cfg.train.warmup_epochs * steps_per_epoch), cfg.train.epochs * steps_per_epoch)

    start_epoch, global_step, pseudo_labels, skipped_steps = 0, 0, {}, 0
    if session.checkpoint is not None:
        with session.checkpoint.as_directory() as folder:
            state = load_state(Path(folder))
        # Fixed temperatures and the learning rate are hyperparameters: the config's win over
        # the checkpoint's, since a tuner (PBT) may have changed them for this trial.
        fixed = {name: buffer.clone() for name, buffer in core.named_buffers() if name.endswith("temperature")}
        core.load_state_dict(state["module"])
        for name, buffer in core.named_buffers():
            if name in fixed:
                buffer.copy_(fixed[name])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scheduler.base_lrs = [cfg.train.lr] * len(scheduler.base_lrs)
        for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):
            group["lr"] = cfg.train.lr * factor(scheduler.last_epoch)
        start_epoch, global_step = state["epoch"] + 1, state["global_step"]
        pseudo_labels, skipped_steps = state["pseudo_labels"], state["skipped_steps"]
        torch.set_rng_state(state["torch_rng"])
        if rank == 0:
            print(f"[avray] resumed from epoch {state['epoch'] + 1} (step {global_step})", flush=True)

    train_shard, val_data = session.train, session.val
    per_worker = max(1, cfg.train.batch_size // world)
    xdc = "xdc" in core.mixture.objectives
    run_start = time.perf_counter()
    num_nodes = _count_nodes()

    for epoch in range(start_epoch, cfg.train.epochs):
        if epoch_clock is not None:
            ray.get(epoch_clock.set.remote(epoch))
        if xdc and (epoch % cfg.objectives.xdc.recluster_every_epochs == 0 or not pseudo_labels):
            pseudo_labels = _recluster(core, train_shard, cfg, device)
            # New clusters are numbered arbitrarily and the heads were re-initialised:
            # Adam's moments for the old heads would push the new ones the wrong way.
            for param in core.mixture.objectives["xdc"].parameters():
                optimizer.state.pop(param, None)
        epoch_start = time.perf_counter()
        totals: dict[str, float] = {}
        steps = clips = 0
        shuffle = {}
        if cfg.train.shuffle_buffer_clips:
            # A new, reproducible mix every epoch and on every worker.
            shuffle = {"local_shuffle_buffer_size": cfg.train.shuffle_buffer_clips,
                       "local_shuffle_seed": (cfg.train.seed * 1_000 + epoch) * 1_000 + rank}
        for batch in train_shard.iter_batches(batch_size=per_worker, batch_format="numpy", drop_last=True, **shuffle):
            video, audio = _to_device(batch, device)
            targets = {"xdc": _xdc_targets(pseudo_labels, batch["source"], device)} if xdc else None
            with _autocast(cfg, device):
                loss, terms, skipped = module(video, audio, targets)
            # Every rank must agree to skip a non-finite step, or DDP's all-reduce would hang.
            bad = torch.tensor([1.0 if skipped or not torch.isfinite(loss) else 0.0], device=device)
            if dist.is_initialized():
                dist.all_reduce(bad, op=dist.ReduceOp.MAX)
            optimizer.zero_grad(set_to_none=True)
            (torch.nan_to_num(loss) * (0.0 if bad.item() else 1.0)).backward()
            if bad.item():
                skipped_steps += 1
                continue
            if cfg.train.grad_clip > 0:
                nn.utils.clip_grad_norm_(module.parameters(), cfg.train.grad_clip)
            optimizer.step()
            scheduler.step()
            global_step += 1
            steps += 1
            clips += len(video)
            totals["loss"] = totals.get("loss", 0.0) + float(loss.detach())
            for name, value in terms.items():
                totals[f"loss/{name}"] = totals.get(f"loss/{name}", 0.0) + float(value)
        elapsed = time.perf_counter() - epoch_start
        metrics = _all_reduce_mean({k: v / max(1, steps) for k, v in totals.items()}, device)
        throughput = _all_reduce_mean({"clips_per_s": clips / max(elapsed, 1e-9)}, device)["clips_per_s"] * world
        metrics.update(
            epoch=epoch + 1, global_step=global_step, world_size=world, num_nodes=num_nodes, clips_per_s=throughput, epoch_seconds=elapsed,
            lr=scheduler.get_last_lr()[0], skipped_steps=skipped_steps,
            **{f"lambda/{name}": weight for name, weight in core.mixture.weights.items()},
        )
        if rank == 0 and val_data is not None:
            metrics.update(validate(core, val_data, cfg, device))
        with tempfile.TemporaryDirectory() as folder:
            if rank == 0:
                save_state(Path(folder), saved_cfg, {
                    "module": core.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "epoch": epoch, "global_step": global_step,
                    "pseudo_labels": pseudo_labels, "skipped_steps": skipped_steps,
                    "torch_rng": torch.get_rng_state(),
                })
                _progress(metrics, cfg, epoch, start_epoch, run_start)
                if tracker is not None:
                    tracker.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)},
                                        step=epoch + 1)
            session.report(metrics, folder if rank == 0 else None)
    if tracker is not None:
        tracker.flush()


def _progress(metrics: dict, cfg: Config, epoch: int, start_epoch: int, run_start: float) -> None:
    done = epoch + 1 - start_epoch
    eta = (time.perf_counter() - run_start) / done * (cfg.train.epochs - epoch - 1)
    terms = "  ".join(f"{k.split('/', 1)[1]} {v:.4f}" for k, v in metrics.items() if k.startswith("loss/"))
    val = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith("val/"))
    print(f"[avray] epoch {epoch + 1}/{cfg.train.epochs}  loss {metrics.get('loss', float('nan')):.4f}  ({terms})  "
          f"{metrics['clips_per_s']:.1f} clips/s  ETA {eta:.0f} s" + (f"\n[avray]   {val}" if val else ""), flush=True)
