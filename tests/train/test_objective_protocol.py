"""Objectives defined here, not in avray, each registered with one decorator. One keeps a
FIFO queue and a per-epoch record through the loop's hooks; the loop is killed (SIGKILL, in a
process of its own) after its second checkpoint and resumed, and the objective's state ends
exactly as in a run that was never interrupted. Another is supervised, and refused on a
corpus without labels before training starts."""

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor

from avray.config import ConfigError, load_config
from avray.objectives import Objective, register_objective
from avray.objectives.base import Needs
from avray.train.loop import Session, run_loop
from avray.train.trainer import pretrain
from tests.media import make_good_video
from tests.tiny import TINY

ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 4
SETTINGS = [*TINY, f"train.epochs={EPOCHS}", "objectives.queue_probe.weight=0.1", "objectives.queue_probe.size=5"]


@dataclass(frozen=True)
class QueueProbeConfig:
    weight: float = 0.0
    size: int = 4


@register_objective("queue_probe", QueueProbeConfig)
class QueueProbe(Objective):
    """Pulls each fused embedding towards the mean of the last ``size`` batches' (a FIFO queue
    in buffers, as MoCo keeps its queue), and records the epochs it saw and its step count."""

    def __init__(self, fused_dim: int, size: int):
        super().__init__(gather_distributed=False)
        self.register_buffer("queue", torch.zeros(size, fused_dim))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self.epochs: list[int] = []
        self.steps = 0

    @classmethod
    def from_config(cls, cfg: QueueProbeConfig, dims: dict[str, int], gather_distributed: bool) -> "QueueProbe":
        return cls(dims["fused"], cfg.size)

    def on_epoch_start(self, context) -> list:
        self.epochs.append(context.epoch)
        return []

    def on_step_end(self, step: int) -> None:
        self.steps = step

    def get_extra_state(self) -> dict:
        return {"epochs": list(self.epochs), "steps": self.steps}

    def set_extra_state(self, state: dict) -> None:
        self.epochs, self.steps = list(state["epochs"]), state["steps"]

    def forward(self, outputs: dict[str, Tensor], targets=None) -> Tensor:
        fused = outputs["fused"]
        if self.training:
            slot = int(self.filled) % len(self.queue)
            self.queue[slot] = fused.detach().mean(0)
            self.filled += 1
        used = self.queue[: min(int(self.filled), len(self.queue))]
        return (fused - used.mean(0)).pow(2).mean() if len(used) else fused.sum() * 0


def train(folder: Path, resume_from: Path | None = None, stall_after: int | None = None) -> QueueProbe:
    """Run the loop, keeping each epoch's checkpoint as ``folder/epoch-N``; with
    ``stall_after``, wait after that epoch's checkpoint (to be killed there)."""
    from tests.train.test_loop import FolderCheckpoint, InMemoryClips

    cfg = load_config(None, SETTINGS)
    held = {}

    def report(metrics, checkpoint):
        kept = folder / f"epoch-{metrics['epoch']}"
        shutil.copytree(checkpoint, f"{kept}.tmp")
        os.rename(f"{kept}.tmp", kept)
        if metrics["epoch"] == stall_after:
            time.sleep(300)

    def prepare(module):
        held["core"] = module
        return module

    session = Session(
        rank=0,
        world=1,
        device=torch.device("cpu"),
        train=InMemoryClips(cfg),
        val=None,
        checkpoint=FolderCheckpoint(resume_from) if resume_from else None,
        report=report,
        prepare_model=prepare,
    )
    run_loop(cfg, session, steps_per_epoch=2)
    return held["core"].mixture.objectives["queue_probe"]


def test_a_registered_objectives_state_survives_a_kill_and_resume_exactly(tmp_path):
    killed = tmp_path / "killed"
    killed.mkdir()
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from tests.train.test_objective_protocol "
            "import train; train(Path(sys.argv[1]), stall_after=2)",
            str(killed),
        ],
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 120
        while not (killed / "epoch-2").exists():
            assert child.poll() is None and time.monotonic() < deadline, "the run ended before its second checkpoint"
            time.sleep(0.2)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert sorted(p.name for p in killed.iterdir()) == ["epoch-1", "epoch-2"]

    for run in ("resumed", "whole"):
        (tmp_path / run).mkdir()
    resumed = train(tmp_path / "resumed", resume_from=killed / "epoch-2")
    whole = train(tmp_path / "whole")
    assert resumed.epochs == whole.epochs == list(range(EPOCHS))
    assert resumed.steps == whole.steps == 2 * EPOCHS
    assert int(resumed.filled) == int(whole.filled) == 2 * EPOCHS
    assert torch.equal(resumed.queue, whole.queue)


@dataclass(frozen=True)
class LabelProbeConfig:
    weight: float = 0.0


@register_objective("label_probe", LabelProbeConfig)
class LabelProbe(Objective):
    """A supervised objective: it declares that it needs labels."""

    needs = Needs(labels=True)

    @classmethod
    def from_config(cls, cfg: LabelProbeConfig, dims: dict[str, int], gather_distributed: bool) -> "LabelProbe":
        return cls(gather_distributed)

    def forward(self, outputs: dict[str, Tensor], targets=None) -> Tensor:
        return outputs["fused"].sum() * 0


def test_a_supervised_objective_on_a_corpus_without_labels_is_refused_before_training(ray_local, tmp_path):
    for i in range(4):
        make_good_video(tmp_path / "flat" / f"v{i}.mp4", seconds=2.5, fps=12, size=48, sample_rate=16000, seed=i)
    cfg = load_config(
        None, [*TINY, f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db", "objectives.label_probe.weight=1.0"]
    )
    with pytest.raises(ConfigError, match="objectives.label_probe is supervised and .* has no labels"):
        pretrain(cfg, str(tmp_path / "flat"), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # refused before Ray Train or MLflow made anything
