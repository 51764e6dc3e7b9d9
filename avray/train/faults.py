"""Which training failures are worth a retry.

A lost worker or node is: the run resumes from its last checkpoint and ends as if nothing had
happened. An exception raised by the training code itself is not: it happens again on every
try (an unlabelled corpus once crashed validation's kNN probe, and Ray Train restarted the run
``max_failures`` times from scratch before giving up). Ray Train and Tune retry both alike:
Ray Train's run here uses :class:`FailFastPolicy`; a Tune trial ends itself instead
(``avray.tune.trainable``).
"""

from __future__ import annotations

import re

import ray.exceptions
import torch.distributed
from ray.train.torch import TorchTrainer
from ray.train.v2._internal.execution.failure_handling import (
    DefaultFailurePolicy,
    FailurePolicy,
)
from ray.train.v2._internal.execution.failure_handling.failure_policy import (
    FailureDecision,
)

# A lost worker or node, or an object it held, as its surviving peers and Ray see it.
_LOST = (
    ray.exceptions.RayActorError,
    ray.exceptions.NodeDiedError,
    ray.exceptions.ObjectLostError,
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.RaySystemError,
    ray.exceptions.ObjectFetchTimedOutError,
    ray.exceptions.OutOfMemoryError,
    torch.distributed.DistError,
)
# A collective whose peer went away: gloo raises a plain RuntimeError ("Connection reset by peer").
_COLLECTIVE = re.compile(r"gloo|nccl|connection (reset|closed) by peer|broken pipe", re.IGNORECASE)
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


class TrainingError(RuntimeError):
    """Training stopped on an error of its own code, which a retry would only repeat."""


def is_lost_worker(err: BaseException) -> bool:
    """Whether ``err``, raised in or about a training worker, means a lost worker or node."""
    if isinstance(err, ray.exceptions.RayTaskError):
        return is_lost_worker(err.cause) if err.cause is not None else False
    if isinstance(err, _LOST):
        return True
    # Ray Train's own verdicts on its workers (a failed health check: the process is gone).
    if type(err).__module__.startswith("ray.train"):
        return True
    return isinstance(err, RuntimeError) and bool(_COLLECTIVE.search(str(err)))


def worker_failures(err: BaseException) -> dict[int, BaseException]:
    """Each failed worker's exception, by rank, from a Ray Train ``TrainingFailedError``."""
    failures = getattr(err, "worker_failures", None)
    if failures:
        return dict(failures)
    return {0: getattr(err, "controller_failure", err)}


def deterministic_failure(err: BaseException) -> TrainingError | None:
    """A :class:`TrainingError` naming the cause when no worker of the failed run was lost
    (retrying would fail the same way), else None (a retry from the last checkpoint helps)."""
    failures = worker_failures(err)
    if any(is_lost_worker(failure) for failure in failures.values()):
        return None
    rank = min(failures)
    return TrainingError(describe(failures[rank], str(err), f"worker rank {rank}"))


def describe(failure: BaseException, report: str, where: str) -> str:
    """One line: what failed, with what, and where: the innermost of avray's frames that
    ``report`` (a traceback) names, else its innermost frame."""
    message = " ".join(str(failure).split()) or "(no message)"
    frames = _FRAME.findall(report)
    ours = [frame for frame in frames if "/avray/" in frame[0]] or frames
    at = f" at {ours[-1][0]}:{ours[-1][1]} in {ours[-1][2]}" if ours else ""
    return (
        f"training failed on {where} with {type(failure).__name__}: {message}{at}; "
        "not retried, since it would fail the same way again"
    )


class FailFastPolicy(FailurePolicy):
    """Ray Train's default policy, except that a run whose failure no lost worker explains is
    not retried. Ray Train offers no public way to choose retries by error, hence this hook
    into its failure handling (Ray 2.60's ``FailurePolicy``); a retry keeps Ray Train's own
    restart path, which recovers the object-store blocks of a lost node."""

    def __init__(self, failure_config):
        super().__init__(failure_config)
        self._default = DefaultFailurePolicy(failure_config)

    def make_decision(self, training_failed_error) -> FailureDecision:
        if getattr(training_failed_error, "worker_failures", None) and deterministic_failure(training_failed_error):
            return FailureDecision.RAISE
        return self._default.make_decision(training_failed_error)


class FailFastTorchTrainer(TorchTrainer):
    """A ``TorchTrainer`` whose controller decides retries with :class:`FailFastPolicy`, and
    which leaves SIGINT to the workflow."""

    def _register_sigint_handler(self, controller) -> None:
        """Ray Train's own: it asked the controller to abort and carried on waiting, and a
        controller still starting ignored that and trained to the end. avray.cli turns
        Ctrl-C into an exception that ends the job instead, and re-running resumes."""

    def _initialize_and_run_controller(self, **controller_kwargs):
        controller_kwargs["failure_policy"] = FailFastPolicy(self.run_config.failure_config)
        return super()._initialize_and_run_controller(**controller_kwargs)
