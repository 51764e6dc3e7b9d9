"""A trial: the pretraining loop (avray.train.loop) run by a Ray Tune function trainable.

Why a function trainable training in its own process, and not a ``TorchTrainer`` nested in
each trial: PBT's exploit pauses a trial, hands it a copy of a better trial's *Tune*
checkpoint and restarts it with mutated λ in its config. A function trainable receives exactly
that (``tune.get_checkpoint()``, ``config``) and restarts in a reused actor in well under a
second. A nested Train V2 run forwards only metrics and checkpoint *paths* to Tune
(``TuneReportCallback``), so PBT would have nothing to clone, and every exploit would tear down
and rebuild a worker group. A trial therefore trains on one device (its own GPU when
``tune.gpus_per_trial`` > 0); the population is spread over the cluster instead.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import ray
import torch
from ray import tune

from avray.config import Config
from avray.train.faults import describe, is_lost_worker
from avray.train.loop import Session, run_loop
from avray.tune.schedulers import fitness_metric
from avray.tune.space import trial_config

# A trial's first report after it restored another trial's checkpoint names that trial.
EXPLOITED_FROM = "exploited_from"


def _trial_of(checkpoint_path: str) -> str:
    """The trial folder a checkpoint lives in (``.../<trial>/checkpoint_000003``)."""
    return Path(checkpoint_path).parent.name


@ray.remote(num_cpus=0)
class TrialFailures:
    """The trials that stopped on an error of the training code, each with its one-line cause.

    Tune retries a failed trial ``max_failures`` times whatever the error, and a trial that
    raised the same error each time would cost every retry. Such a trial records its cause
    here and ends instead, with no fitness; the sweep reports it as failed
    (:mod:`avray.train.faults`).
    """

    def __init__(self):
        self.causes: dict[str, str] = {}

    def record(self, trial: str, cause: str) -> None:
        self.causes.setdefault(trial, cause)

    def get(self) -> dict[str, str]:
        return self.causes


def train_trial(config: dict, *, base: Config, train, val, steps_per_epoch: int, failures) -> None:
    cfg, weights = trial_config(base, config)
    checkpoint = tune.get_checkpoint()
    use_gpu = cfg.tune.gpus_per_trial > 0 and torch.cuda.is_available()
    device = torch.device("cuda", torch.cuda.current_device()) if use_gpu else torch.device("cpu")
    own_trial = Path(tune.get_context().get_trial_dir()).name
    source = _trial_of(checkpoint.path) if checkpoint is not None else None
    first_report = {EXPLOITED_FROM: source} if source and source != own_trial else {}

    def report(metrics: dict, folder: str | None) -> None:
        extra = dict(first_report)
        first_report.clear()
        tune.report({**metrics, **extra}, checkpoint=tune.Checkpoint.from_directory(folder) if folder else None)

    session = Session(
        rank=0,
        world=1,
        device=device,
        train=train,
        val=val,
        checkpoint=checkpoint,
        report=report,
        prepare_model=lambda module: module.to(device),
        weights=weights,
        threads=cfg.train.threads_per_worker or max(1, round(cfg.tune.cpus_per_trial)),
        quiet=True,
    )
    try:
        run_loop(cfg, session, steps_per_epoch)
    except Exception as err:
        if is_lost_worker(err):
            raise  # Tune resumes the trial from its last checkpoint
        ray.get(failures.record.remote(own_trial, describe(err, traceback.format_exc(), f"trial {own_trial}")))
        # The last epoch's result, with no fitness: Tune stops the trial on it, before a
        # scheduler could hand it another trial's checkpoint to fail on again.
        tune.report({fitness_metric(cfg): float("nan"), "epoch": cfg.train.epochs})
