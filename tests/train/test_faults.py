"""Which failures are retried: a lost worker or node is, an error of the training code is not."""

import pytest
import ray
import ray.exceptions
import torch.distributed
from ray.util.state import list_actors

from avray.train.faults import TrainingError, deterministic_failure, is_lost_worker
from avray.train.trainer import pretrain
from tests.tiny import make_tiny_corpus, tiny_config

# A spectrogram window longer than the clip: building the model in the worker raises, on every
# try, after everything before training (listing, decoding, starting Ray Train) has worked.
FAILS_IN_THE_WORKER = ("model.n_fft=131072", "train.epochs=2", "train.num_workers=1")
GLOO_PEER_LOST = RuntimeError("[gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:5242: Connection reset by peer.")


class FailedRun(Exception):
    """Stands in for Ray Train's ``WorkerGroupError``: the failures by rank."""

    def __init__(self, failures):
        super().__init__(
            "Training failed due to worker errors:\n[Rank 0 Error Snippet]:\nTraceback (most recent call "
            'last):\n  File "/src/avray/train/loop.py", line 328, in run_loop\n  File "/lib/sklearn.py", '
            "line 7, in check\nValueError: Input y contains NaN."
        )
        self.worker_failures = failures


def test_lost_workers_and_their_peers_errors_are_retryable():
    assert is_lost_worker(ray.exceptions.RayActorError())
    assert is_lost_worker(ray.exceptions.NodeDiedError("n"))
    assert is_lost_worker(torch.distributed.DistNetworkError("peer gone"))
    assert is_lost_worker(GLOO_PEER_LOST)
    assert not is_lost_worker(ValueError("Input y contains NaN."))
    assert not is_lost_worker(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


def test_a_run_is_retried_when_any_worker_was_lost():
    assert deterministic_failure(FailedRun({0: GLOO_PEER_LOST, 1: ray.exceptions.RayActorError()})) is None


def test_an_error_of_the_code_on_every_worker_is_one_line_naming_cause_and_place():
    failures = {1: ValueError("Input y\ncontains NaN."), 0: ValueError("Input y contains NaN.")}
    fatal = deterministic_failure(FailedRun(failures))
    assert isinstance(fatal, TrainingError)
    assert str(fatal) == (
        "training failed on worker rank 0 with ValueError: Input y contains NaN. at "
        "/src/avray/train/loop.py:328 in run_loop; "
        "not retried, since it would fail the same way again"
    )


def _train_workers_started() -> int:
    """Ray Train worker actors this cluster has started, dead ones included."""
    return len(
        list_actors(
            address=ray.get_runtime_context().gcs_address,
            limit=10_000,
            filters=[("class_name", "=", "RayTrainWorker")],
            raise_on_missing_output=False,
        )
    )


@pytest.mark.slow
def test_pretraining_stops_at_once_on_an_error_that_would_repeat(ray_local, tmp_path):
    corpus = make_tiny_corpus(tmp_path / "corpus", videos=4)
    before = _train_workers_started()
    cfg = tiny_config(tmp_path, *FAILS_IN_THE_WORKER, "train.max_failures=3", "data.val_fraction=0")
    with pytest.raises(TrainingError, match=r"^training failed on worker rank 0 with \w+: model.n_fft .*; not ret"):
        pretrain(cfg, corpus, str(tmp_path / "run"))
    assert _train_workers_started() - before == 1  # one try of its one worker, no retry
