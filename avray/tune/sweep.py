"""A loss-mixture sweep: Ray Tune trials of the pretraining loop, scored by ELo's fitness.

    training_data ─► Tuner(train_trial × genome, PBT|PB2|ASHA|FIFO, random|Optuna|HyperOpt)
                       └─► per trial: epochs of run_loop, report fitness + λ + checkpoint
                     ─► trials table, best mixture (YAML), plots ─► MLflow parent + child runs

Re-running the same command after the driver died resumes the sweep (``Tuner.restore``).
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import ray
import yaml
from ray import tune

from avray import console
from avray.checkpoint import checkpoint_uri
from avray.cluster import materialize_on_driver_node, on_driver_node
from avray.config import Config, ConfigError, config_from_dict, with_overrides
from avray.data.pipeline import training_data
from avray.data.shards import DataSource, for_inputs, resolve_source
from avray.objectives.mixture import check_labels_for
from avray.storage import is_remote, join_uri, read_file, write_file
from avray.tracking import redact, redact_params, start_job_run
from avray.train.faults import TrainingError
from avray.train.trainer import ray_storage
from avray.tune.callback import TrialRuns, recorded_results
from avray.tune.plots import plot_fitness, plot_lambda_trajectories
from avray.tune.schedulers import build_scheduler, build_search_alg, fitness_metric
from avray.tune.space import search_space, trial_config
from avray.tune.trainable import EXPLOITED_FROM, TrialFailures, train_trial

EXPERIMENT = "tune_losses"
# The config a sweep began with, beside its experiment: a resumed sweep must have the same.
SWEEP_CONFIG = "sweep_config.yaml"


@dataclass
class SweepResult:
    metric: str
    trials: list[dict]  # one row per trial (see ``_trial_row``)
    best: dict  # the best trial's row
    best_config: Config  # the base config with the best trial's λ (and lr, temperature)
    best_config_path: str  # where it was written: OUTPUT/best_mixture.yaml (beside OUTPUT/trials.csv)
    experiment_path: str
    parent_run_id: str
    tracking_uri: str


def _trial_folder(trial) -> str:
    return trial.trial_id


def changed_keys(before: Config, after: Config) -> list[str]:
    """``key: old -> new`` for each config key whose value differs (URI passwords masked)."""
    old, new = redact_params(before.flat()), redact_params(after.flat())
    return [f"{k}: {old.get(k)} -> {new.get(k)}" for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]


def check_resumable(cfg: Config, output: str) -> None:
    """Refuse to resume the sweep in ``output`` with another config than it began with.

    ``Tuner.restore`` brings back the experiment's own search space, scheduler, trial count and
    stopping rule, while its trials would train with the new config: a mix of the two that
    nobody asked for, and no key is safe to change (a larger ``tune.num_samples`` adds no
    trial, other resources move no trial). A sweep begun before its config was kept is not checked.
    """
    root, filesystem = ray_storage(output)
    saved = read_file(join_uri(output, SWEEP_CONFIG))
    if saved is None or not tune.Tuner.can_restore(f"{root}/{EXPERIMENT}", storage_filesystem=filesystem):
        return
    changed = changed_keys(config_from_dict(yaml.safe_load(saved)), cfg)
    if changed:
        raise ConfigError(
            f"{output} holds a sweep begun with another config ({'; '.join(changed)}): re-run it with the "
            f"config it began with ({join_uri(output, SWEEP_CONFIG)}), or sweep into a new --output"
        )


def tune_losses(cfg: Config, data: str | DataSource, output: str) -> SweepResult:
    check_resumable(cfg, output)
    begun_with = cfg
    source = resolve_source(data, cfg.data.endpoint_override)
    cfg = for_inputs(cfg, source)
    metric = fitness_metric(cfg)
    scheduler, search_alg = build_scheduler(cfg), build_search_alg(cfg)
    data = training_data(source, cfg.data)
    check_labels_for(cfg.objectives, data.train_labelled, source.uri)
    if data.val is None:
        raise ConfigError("a sweep scores each mixture on held-out clips: set data.val_fraction > 0")
    if cfg.tune.fitness == "knn" and data.val_knn_labels < 2:
        raise ConfigError(
            "tune.fitness=knn needs two or more held-out videos of each of two or more labels: raise "
            "data.val_fraction, or use tune.fitness=zipf"
        )
    steps_per_epoch = data.num_train_clips // cfg.train.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(
            f"{data.num_train_clips} training clips cannot fill one batch of {cfg.train.batch_size}: "
            "lower train.batch_size or add data"
        )
    console.say(
        f"[avray] sweep: {cfg.tune.num_samples} trials, {cfg.tune.scheduler} + {cfg.tune.search_alg}, "
        f"fitness {metric}; {data.num_train_clips} training clips, {data.num_val_clips} held-out",
    )
    # Every trial reads every clip every epoch: read (or decode) them once, into Ray's object
    # store (which spills to disk beyond memory), rather than once per trial and epoch. It also
    # keeps Ray Data tasks out of the trials, whose placement groups would hold every CPU
    # they could run on; for the same reason the clips stay on the driver's node, where losing
    # another node cannot take them. Search on a subset of a corpus far larger than that node's disk.
    start = time.perf_counter()
    # Shuffled across the whole set once, as pretraining's cached clips are (avray.train.trainer.cached).
    train = materialize_on_driver_node(data.train.random_shuffle(seed=cfg.train.seed))
    val = materialize_on_driver_node(data.val)
    console.say(
        f"[avray] {train.count() + val.count()} clips ({(train.size_bytes() + val.size_bytes()) / 2**20:.0f} MiB) "
        f"in the object store in {time.perf_counter() - start:.1f} s",
    )
    failures = on_driver_node(TrialFailures).remote()
    trainable = tune.with_resources(
        tune.with_parameters(
            train_trial, base=cfg, train=train, val=val, steps_per_epoch=steps_per_epoch, failures=failures
        ),
        {"CPU": cfg.tune.cpus_per_trial, "GPU": cfg.tune.gpus_per_trial},
    )
    parent = start_job_run(cfg, output, job="tune")
    root, filesystem = ray_storage(output)
    experiment_path = f"{root}/{EXPERIMENT}"
    # Absolute: Tune pickles the callback with the experiment, and a resumed sweep may start elsewhere.
    record = output if is_remote(output) else str(Path(output).resolve())
    if tune.Tuner.can_restore(experiment_path, storage_filesystem=filesystem):
        console.say(f"[avray] resuming the sweep in {output.rstrip('/')}/{EXPERIMENT}")
        tuner = tune.Tuner.restore(
            experiment_path, trainable=trainable, resume_errored=True, storage_filesystem=filesystem
        )
    else:
        write_file(join_uri(output, SWEEP_CONFIG), redact(begun_with.to_yaml()).encode())
        tuner = tune.Tuner(
            trainable,
            param_space=search_space(cfg),
            tune_config=tune.TuneConfig(
                metric=metric,
                mode="max",
                scheduler=scheduler,
                search_alg=search_alg,
                num_samples=cfg.tune.num_samples,
                reuse_actors=True,
                trial_dirname_creator=_trial_folder,
            ),
            run_config=tune.RunConfig(
                name=EXPERIMENT,
                storage_path=root,
                storage_filesystem=filesystem,
                # Each trial stops after train.epochs, also after PBT handed it another's checkpoint.
                stop={"epoch": cfg.train.epochs},
                failure_config=tune.FailureConfig(max_failures=cfg.train.max_failures),
                # PBT copies checkpoints between trials: keeping only two can delete one it is about to copy.
                checkpoint_config=tune.CheckpointConfig(num_to_keep=4),
                callbacks=[TrialRuns(parent.uri, cfg.tracking.experiment, parent.run_id, record)],
                # avray's console prints each result (TrialRuns); Tune's tables only with --verbose.
                verbose=0 if console.captured() else 1,
            ),
        )
    with console.bar("sweep", "sweep", total=cfg.tune.num_samples * cfg.train.epochs, unit="epoch"):
        with _stop_signals_end_the_sweep_gracefully() as stopped:
            grid = tuner.fit()
    if stopped:
        parent.finish("KILLED")
        raise KeyboardInterrupt(stopped[0].name)
    return _summarise(
        cfg,
        grid,
        metric,
        f"{output.rstrip('/')}/{EXPERIMENT}" if is_remote(output) else experiment_path,
        parent,
        output,
        recorded_results(record),
        ray.get(failures.get.remote()),
    )


@contextlib.contextmanager
def _stop_signals_end_the_sweep_gracefully() -> Iterator[list[signal.Signals]]:
    """SIGINT or SIGTERM during ``tuner.fit()`` stops the sweep as Tune's own Ctrl-C does: the
    trials end, the experiment's state is saved (re-running the command resumes it) and
    ``fit`` returns. The signal is then in the yielded list, for the caller to end as any
    stopped workflow (a KeyboardInterrupt). Tune's handler takes SIGINT only and hides that it
    fired; SIGUSR1, which Tune also installs, is the same graceful stop."""
    stopped: list[signal.Signals] = []
    if threading.current_thread() is not threading.main_thread():
        yield stopped
        return

    def stop(signum, frame):
        stopped.append(signal.Signals(signum))
        graceful = signal.getsignal(signal.SIGUSR1)
        if callable(graceful):
            graceful(signum, frame)

    before = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    disabled = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # else fit() puts its own in place of stop()
    try:
        yield stopped
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
        if disabled is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER")
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = disabled


def _trial_row(result, metric: str, objectives: list[str], recorded: list[dict] | None, cause: str | None) -> dict:
    # Tune's own record of a retried trial may lack results (see recorded_results); it is
    # the fallback for a trial the driver's record lacks (a sweep an older avray began).
    rows = recorded or (result.metrics_dataframe.to_dict("records") if result.metrics_dataframe is not None else [])
    first, last = (rows[0], rows[-1]) if rows else ({}, {})
    fitness = [r[metric] for r in rows if isinstance(r.get(metric), float) and math.isfinite(r[metric])]
    return {
        "trial": Path(result.path).name,
        "status": "error" if result.error or cause else "ok",
        "error": cause or (" ".join(str(result.error).split())[:500] if result.error else None),
        "epochs": int(last.get("epoch", 0)),
        **{f"initial_lambda/{n}": first.get(f"lambda/{n}") for n in objectives},
        **{f"final_lambda/{n}": last.get(f"lambda/{n}") for n in objectives},
        "exploits": sum(1 for r in rows if isinstance(r.get(EXPLOITED_FROM), str)),
        "first_fitness": fitness[0] if fitness else None,
        "final_fitness": last.get(metric),
        "best_fitness": max(fitness) if fitness else None,
        "final_knn_accuracy": last.get("val/knn_accuracy"),
        "checkpoint": checkpoint_uri(result.checkpoint) if result.checkpoint else None,
        "history": rows,
    }


def _summarise(
    cfg: Config,
    grid,
    metric: str,
    experiment_path: str,
    parent,
    output: str,
    recorded: dict[str, list[dict]],
    causes: dict[str, str],
) -> SweepResult:
    objectives = sorted(cfg.objectives.enabled())
    trials = [
        _trial_row(result, metric, objectives, recorded.get(Path(result.path).name), causes.get(Path(result.path).name))
        for result in grid
    ]
    for cause in causes.values():
        console.say(f"[avray] {cause}")
    finished = [t for t in trials if isinstance(t["final_fitness"], float) and math.isfinite(t["final_fitness"])]
    if not finished:
        parent.finish("FAILED")
        if causes:
            raise TrainingError(f"every trial of the sweep failed; the first: {next(iter(causes.values()))}")
        raise RuntimeError(f"no trial of the sweep in {experiment_path} reported {metric}; see the trial errors above")
    best = max(finished, key=lambda t: t["final_fitness"])
    best_result = next(r for r in grid if Path(r.path).name == best["trial"])
    best_cfg, weights = trial_config(cfg, best_result.config)
    best_cfg = with_overrides(best_cfg, {f"objectives.{n}.weight": w for n, w in weights.items()})

    folder = Path(tempfile.mkdtemp(prefix="avray-sweep-"))
    columns = [k for k in trials[0] if k != "history"]
    with open(folder / "trials.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(trials)
    (folder / "best_mixture.yaml").write_text(redact(best_cfg.to_yaml()))
    histories = {t["trial"]: t["history"] for t in trials}
    parent.log_artifact(folder / "trials.csv")
    parent.log_artifact(folder / "best_mixture.yaml")
    parent.log_artifact(plot_lambda_trajectories(histories, objectives, folder / "lambda_trajectories.png"), "plots")
    parent.log_artifact(plot_fitness(histories, metric, folder / "fitness.png"), "plots")
    parent.log_metrics(
        {
            f"best/{metric}": best["final_fitness"],
            **{f"best/lambda/{n}": best[f"final_lambda/{n}"] for n in objectives},
            "trials": len(trials),
            "failed_trials": sum(t["status"] == "error" for t in trials),
        },
        step=0,
    )
    for name in ("trials.csv", "best_mixture.yaml"):
        write_file(join_uri(output, name), (folder / name).read_bytes())
    parent.set_tag("avray.best_trial", best["trial"])
    if best["checkpoint"]:
        parent.set_tag("avray.best_checkpoint", best["checkpoint"])
    parent.finish()
    parent.flush()
    return SweepResult(
        metric,
        trials,
        best,
        best_cfg,
        f"{output.rstrip('/')}/best_mixture.yaml",
        experiment_path,
        parent.run_id,
        parent.uri,
    )


def format_table(result: SweepResult) -> str:
    """The trials, best first: λ at the start and the end, fitness at the first and last epoch."""
    objectives = sorted(k.split("/", 1)[1] for k in result.best if k.startswith("final_lambda/"))
    head = (
        ["trial", "exploits"]
        + [f"λ {n} (start→end)" for n in objectives]
        + ["fitness first", "fitness final", "knn final"]
    )
    lines = ["  ".join(head)]
    fmt = lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"  # noqa: E731
    ranked = sorted(
        result.trials, key=lambda t: -(t["final_fitness"] if isinstance(t["final_fitness"], float) else -math.inf)
    )
    for t in ranked:
        lambdas = [f"{fmt(t[f'initial_lambda/{n}'])}→{fmt(t[f'final_lambda/{n}'])}" for n in objectives]
        lines.append(
            "  ".join(
                [
                    t["trial"],
                    str(t["exploits"]),
                    *lambdas,
                    fmt(t["first_fitness"]),
                    fmt(t["final_fitness"]),
                    fmt(t["final_knn_accuracy"]),
                ]
            )
        )
    return "\n".join(lines)
