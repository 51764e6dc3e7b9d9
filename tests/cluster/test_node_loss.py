"""Ingest, pretraining and a sweep spanning Ray nodes, each losing a node while it runs, and
the clips a sweep reads outliving the node that made them.

The nodes are ``ray.cluster_utils.Cluster`` nodes on this machine: each has its own raylet
and object store, and removing one kills its raylet and every worker on it at once, with
the objects it held, as when a cloud instance disappears. The fault is injected only once
work is running on the node, so the test fails if it never lands.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import psutil
import pyarrow.dataset as pads
import pytest
import ray
from ray.util.placement_group import placement_group
from ray.util.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)

from avray.cluster import materialize_on_driver_node
from avray.data.pipeline import prepare
from avray.train.trainer import pretrain
from avray.tune import tune_losses
from tests.conftest import own_cluster
from tests.tiny import FAULT_RUN, make_tiny_corpus, tiny_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

# A lost node is declared dead after health_check_failure_threshold missed checks; Ray's
# default (5 x 3 s) would leave the tests waiting on a node that is long gone.
FAST_NODE_DEATH = {"_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 5}}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_tiny_corpus(tmp_path_factory.mktemp("node-loss-corpus"), videos=12)


def _work_on(node, task_name: str) -> list[psutil.Process]:
    """Processes of ``node`` running ``task_name``: Ray names a busy worker process
    ``ray::<task or actor>``, and every worker is a child of its node's raylet."""
    raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
    found = []
    for proc in raylet.children(recursive=True):
        try:
            if task_name in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            pass
    return found


def _remove_when(cluster, node, ready: Callable[[], bool], task_name: str) -> tuple[threading.Thread, list]:
    """In the background: once ``ready()`` and ``task_name`` runs on ``node``, remove ``node``
    (no graceful shutdown). The returned list holds the removal time once it happened."""
    removed: list[float] = []

    def watch():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if ready() and _work_on(node, task_name):
                cluster.remove_node(node, allow_graceful=False)
                removed.append(time.monotonic())
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread, removed


def test_ingest_spans_nodes_and_a_lost_node_loses_no_clip(corpus, tmp_path):
    cfg = tiny_config(
        tmp_path,
        "data.clips_per_video=4",
        "data.decode_batch_size=1",
        "data.val_fraction=0",
        "data.cpus_per_decode_task=1",
        "data.decode_concurrency=3",
    ).data
    with own_cluster(1, 2, **FAST_NODE_DEATH) as cluster:
        victim = cluster.list_all_nodes()[1]
        watcher, removed = _remove_when(cluster, victim, lambda: True, "decode_clip_stream")
        report = prepare(corpus, str(tmp_path / "clips"), cfg, progress=print)
        watcher.join(timeout=5)
    assert removed, "no decode task ever ran on the second node: the fault was never injected"
    table = pads.dataset(tmp_path / "clips", format="parquet").to_table(columns=["clip_id", "source"])
    # Every clip once: the decode tasks lost with the node ran again elsewhere, none twice.
    assert table.num_rows == 12 * 4
    assert len(set(table.column("clip_id").to_pylist())) == 12 * 4
    assert not report.skipped


@ray.remote(num_cpus=1)
class _Reader:
    def total(self, dataset) -> float:
        return float(sum(batch["x"].sum() for batch in dataset.iter_batches(batch_size=4)))


def test_clips_materialized_on_the_driver_node_outlive_the_node_that_made_them():
    """A sweep's trial, holding the only CPU left in its placement group, reads every block
    after the node whose tasks made them is lost. Left there, a lost block would be rebuilt
    by rerunning its task, which waits for that CPU: the trial would wait forever."""
    with own_cluster(1, 1, **FAST_NODE_DEATH) as cluster:
        victim = cluster.list_all_nodes()[1]
        rows = lambda batch: {"x": np.repeat(batch["id"][:, None].astype(np.float64), 20_000, axis=1)}  # noqa: E731
        # Blocks of 4 x 160 KB: in the object store, not inlined in the driver's memory.
        made_there = ray.data.range(32, override_num_blocks=8).map_batches(
            rows, scheduling_strategy=NodeAffinitySchedulingStrategy(victim.node_id, soft=True)
        )
        dataset = materialize_on_driver_node(made_there)
        here = ray.get_runtime_context().get_node_id()
        locations = ray.experimental.get_object_locations(dataset.to_arrow_refs())
        assert len(locations) == 8 and all(here in where["node_ids"] for where in locations.values()), locations
        cluster.remove_node(victim, allow_graceful=False)
        trial_cpus = placement_group([{"CPU": 1}])
        ray.get(trial_cpus.ready(), timeout=60)
        reader = _Reader.options(scheduling_strategy=PlacementGroupSchedulingStrategy(trial_cpus)).remote()
        assert ray.get(reader.total.remote(dataset), timeout=60) == 20_000 * sum(range(32))


def test_pretraining_loses_a_node_and_ends_on_the_uninterrupted_step_count(uninterrupted_run, fault_corpus, tmp_path):
    # The reference itself spanned two nodes, one worker on each.
    assert uninterrupted_run.metrics["num_nodes"] == 2 and uninterrupted_run.metrics["world_size"] == 2
    settings = (*FAULT_RUN, "train.cpus_per_worker=1", "train.placement_strategy=SPREAD")
    with own_cluster(3, 1, **FAST_NODE_DEATH) as cluster:
        output = tmp_path / "faulty"
        victim = cluster.list_all_nodes()[1]
        # Removed after the second checkpoint: a resumed run then differs from a restarted one.
        checkpointed = lambda: len(list(output.glob("pretrain/checkpoint_*/state.pt"))) >= 2  # noqa: E731
        watcher, removed = _remove_when(cluster, victim, checkpointed, "RayTrainWorker")
        result = pretrain(tiny_config(tmp_path, *settings), fault_corpus, str(output), track=False)
        watcher.join(timeout=5)
    assert removed, "no training worker ran on the second node after a checkpoint: the fault was never injected"
    # The restarted group could only use the head node.
    assert result.metrics["num_nodes"] == 1 and result.metrics["world_size"] == 2
    # The last attempt's history opens with the checkpoint it restored (epoch 2 or later);
    # started over, it would open with epoch 1.
    assert result.history[0]["epoch"] >= 2, result.history
    assert result.history[-1]["epoch"] == 6
    assert result.history[-1]["global_step"] == uninterrupted_run.history[-1]["global_step"]


def test_a_sweep_spans_nodes_and_a_trial_on_a_lost_node_resumes_on_another(corpus, tmp_path):
    """One trial per node; the lost node's trial resumes from its checkpoint on the head node
    once the other trial has freed the CPU."""
    epochs = 4
    cfg = tiny_config(
        tmp_path,
        f"train.epochs={epochs}",
        "tune.scheduler=fifo",
        "tune.num_samples=2",
        "tune.cpus_per_trial=1",
        "train.max_failures=2",
    )
    output = tmp_path / "sweep"
    with own_cluster(1, 1, **FAST_NODE_DEATH) as cluster:
        victim = cluster.list_all_nodes()[1]
        # A trial's second checkpoint folder exists only after Tune registered its first.
        checkpointed = lambda: bool(list(output.glob("tune_losses/*/checkpoint_000001")))  # noqa: E731
        watcher, removed = _remove_when(cluster, victim, checkpointed, "ImplicitFunc")
        result = tune_losses(cfg, corpus, str(output))
        watcher.join(timeout=5)
    assert removed, "no trial ran on the second node after a checkpoint: the fault was never injected"
    assert len(result.trials) == 2
    for trial in result.trials:
        history = trial["history"]
        epochs_seen = [row["epoch"] for row in history]
        assert trial["status"] == "ok" and epochs_seen[-1] == epochs, (trial["trial"], epochs_seen)
        # Each trial resumed from a checkpoint rather than starting over: epoch 1 ran once.
        assert epochs_seen.count(1) == 1, (trial["trial"], epochs_seen)
        assert history[-1]["global_step"] == epochs * history[0]["global_step"]
