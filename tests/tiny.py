"""A tiny model and corpus for the end-to-end tests: a few seconds of CPU per epoch."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

from avray.config import load_config
from tests.media import make_good_video

TINY = [
    "model.video_width=8",
    "model.video_depth=2",
    "model.audio_width=8",
    "model.audio_depth=2",
    "model.embed_dim=16",
    "model.fused_dim=16",
    "model.n_mels=32",
    "model.n_fft=256",
    "data.clips_per_video=2",
    "data.val_fraction=0.25",
    "data.decode_batch_size=4",
    "data.cpus_per_decode_task=0.5",
    "train.cpus_per_worker=0.5",
    "train.batch_size=4",
    # Two test clusters (pytest-xdist workers) share the machine's two cores: with cached clips
    # each worker would otherwise take both (avray.train.trainer.worker_threads).
    "train.threads_per_worker=1",
    "train.warmup_epochs=0",
    "tune.zipf_clusters=2",
    # Two terms, so that the mixture, the sweeps and resume carry more than one λ.
    "objectives.fused.weight=0.5",
]


def tiny_config(tmp: Path, *extra: str):
    """TINY, logging to MLflow in ``tmp``, plus ``extra`` overrides."""
    return load_config(None, [*TINY, f"tracking.tracking_uri=sqlite:///{tmp}/mlflow.db", *extra])


def make_tiny_corpus(root: Path, videos: int = 8) -> str:
    """``videos`` 2.5 s clips in two class folders (a/, b/)."""
    for i in range(videos):
        make_good_video(root / "ab"[i % 2] / f"v{i}.mp4", seconds=2.5, fps=12, size=48, sample_rate=16000, seed=i)
    return str(root)


# The run the fault tests break and must finish exactly as without the fault: every objective
# at once, so a restart also exercises XDC's re-clustering and its cluster state, 2 workers.
# Placement and CPUs per worker are the tests' own: they leave the step count alone.
FAULT_RUN = (
    "train.epochs=6",
    "train.num_workers=2",
    "train.max_failures=2",
    "objectives.xdc.weight=0.5",
    "objectives.xdc.num_clusters=2",
    "objectives.cluster_contrastive.weight=0.3",
    "objectives.cluster_contrastive.num_clusters=2",
    "objectives.dcca.weight=0.1",
    "objectives.sdl.weight=0.1",
)


ROOT = Path(__file__).resolve().parents[1]


def run_workflow_process(
    script: str,
    args: Sequence[str],
    settings: Sequence[str] = (),
    stop: signal.Signals | None = None,
    when: Callable[[], bool] = lambda: True,
) -> subprocess.CompletedProcess:
    """``python workflows/<script> ARGS --set SETTING...`` as a user runs it (MLflow in its
    output's sqlite file), sent ``stop`` once ``when()`` holds; its exit code and output."""
    overrides = [arg for setting in settings for arg in ("--set", setting)]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    process = subprocess.Popen(
        [sys.executable, f"workflows/{script}", *args, *overrides],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while stop is not None and process.poll() is None and not when():
            time.sleep(0.05)
        if stop is not None and process.poll() is None:
            process.send_signal(stop)
        stdout, stderr = process.communicate(timeout=300)
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    finally:
        process.kill()


def own_ray_processes(name: str) -> list[psutil.Process]:
    """Processes of this test process's Ray cluster whose command line holds ``name`` (an actor
    class: ``RayTrainWorker``). Only descendants: the other pytest-xdist worker runs a cluster of
    its own on the same machine, and a test that killed one of its workers failed that test."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            command = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if name in command and "ray::" in command:
            found.append(proc)
    return found
