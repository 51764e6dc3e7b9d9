"""The training loop outside Ray Train, as a Tune trial runs it: what a restored checkpoint
brings back, and what the trial's config overrides (PBT's mutated hyperparameters)."""

import contextlib
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from avray.checkpoint import load_state
from avray.objectives import Objective, register_objective
from avray.objectives.base import Needs
from avray.train.loop import Session, run_loop
from tests.tiny import tiny_config


class InMemoryClips:
    """Stands in for a Ray Data shard: ``iter_batches`` over random clips held in memory."""

    def __init__(self, cfg, n: int = 8, seed: int = 0):
        rng = np.random.default_rng(seed)
        d = cfg.data
        self.rows = {
            "video": rng.integers(0, 256, (n, d.num_frames, d.frame_size, d.frame_size, 3), dtype=np.uint8),
            "audio": rng.standard_normal((n, d.num_samples)).astype(np.float32),
            "source": np.array([f"v{i // 2}" for i in range(n)], dtype=object),
            "label": np.array(["ab"[i % 2] for i in range(n)], dtype=object),
        }

    def iter_batches(self, batch_size, batch_format="numpy", drop_last=False, **_):
        n = len(self.rows["video"])
        for start in range(0, n - (batch_size - 1 if drop_last else 0), batch_size):
            yield {k: v[start : start + batch_size] for k, v in self.rows.items()}


class FolderCheckpoint:
    def __init__(self, path: Path):
        self.path = str(path)

    @contextlib.contextmanager
    def as_directory(self):
        yield self.path


def _train(
    cfg, tmp_path: Path, name: str, checkpoint=None, weights=None, validate: bool = False
) -> list[tuple[dict, Path]]:
    reports = []

    def report(metrics, folder):
        kept = tmp_path / f"{name}-{metrics['epoch']}"
        shutil.copytree(folder, kept)
        reports.append((metrics, kept))

    session = Session(
        rank=0,
        world=1,
        device=torch.device("cpu"),
        train=InMemoryClips(cfg),
        val=InMemoryClips(cfg, seed=1) if validate else None,
        checkpoint=checkpoint,
        report=report,
        prepare_model=lambda m: m,
        weights=weights,
    )
    run_loop(cfg, session, steps_per_epoch=2)
    return reports


def test_a_restored_trial_trains_with_its_own_config_not_the_checkpoints(ray_local, tmp_path):
    source = tiny_config(tmp_path, "train.epochs=1", "objectives.infonce.temperature=0.9", "train.lr=0.001")
    ((metrics, folder),) = _train(source, tmp_path, "source", weights={"infonce": 1.0, "fused": 0.5})
    assert metrics["lambda/infonce"] == 1.0

    # PBT hands the checkpoint to a trial whose config says temperature 0.05, lr 0.01, other λ.
    trial = tiny_config(tmp_path, "train.epochs=2", "objectives.infonce.temperature=0.05", "train.lr=0.01")
    reports = _train(
        trial, tmp_path, "trial", checkpoint=FolderCheckpoint(folder), weights={"infonce": 0.2, "fused": 0.7}
    )
    assert [m["epoch"] for m, _ in reports] == [2]  # resumed: only the second epoch ran
    metrics, folder = reports[0]
    assert metrics["lambda/infonce"] == 0.2 and metrics["lambda/fused"] == 0.7
    assert metrics["global_step"] == 4
    state = load_state(folder)
    assert state["module"]["mixture.objectives.infonce.log_temperature"].item() == pytest.approx(math.log(0.05))
    assert state["scheduler"]["base_lrs"] == [pytest.approx(0.01)]  # the source trained at 0.001
    # The checkpoint's config records the λ trained with.
    assert "weight: 0.2" in (folder / "config.yaml").read_text()


@pytest.mark.parametrize(
    "labels, knn",
    [
        (np.full(8, np.nan, np.float32), False),  # an all-null column, as Ray Data hands it over
        (np.array(["a", None, "b", None, "a", None, "b", None], dtype=object), True),  # half labelled, two classes
    ],
)
def test_validation_scores_only_the_labelled_held_out_clips(tmp_path, labels, knn):
    cfg = tiny_config(tmp_path, "train.epochs=1")
    val = InMemoryClips(cfg, seed=1)
    val.rows["source"] = np.array([f"v{i}" for i in range(8)], dtype=object)
    val.rows["label"] = labels
    reports = []
    session = Session(
        rank=0,
        world=1,
        device=torch.device("cpu"),
        train=InMemoryClips(cfg),
        val=val,
        checkpoint=None,
        report=lambda metrics, folder: reports.append(metrics),
        prepare_model=lambda m: m,
    )
    run_loop(cfg, session, steps_per_epoch=2)
    (metrics,) = reports
    assert math.isfinite(metrics["val/elo_fitness"])
    assert ("val/knn_accuracy" in metrics) == knn


@dataclass(frozen=True)
class TwoViewsConfig:
    weight: float = 0.0


@register_objective("two_views", TwoViewsConfig)
class TwoViews(Objective):
    """Asks for two augmented views and pulls their fused embeddings together (a SimSiam-like
    term); records what it saw."""

    needs = Needs(outputs=("fused",), views=2)
    seen: list = []

    @classmethod
    def from_config(cls, cfg, dims, gather_distributed):
        return cls(gather_distributed=False)

    def forward(self, outputs, targets=None):
        if not self.training:  # validation hands one view
            return outputs["fused"].sum() * 0
        first, second = outputs.views
        differ = bool((first["video_features"] != second["video_features"]).any())
        TwoViews.seen.append((len(outputs.views), first["fused"].shape, differ))
        return (first["fused"] - second["fused"]).pow(2).mean()


def test_an_objective_that_needs_two_views_gets_two_different_ones(tmp_path):
    cfg = tiny_config(tmp_path, "train.epochs=1", "objectives.two_views.weight=1.0")
    TwoViews.seen.clear()
    _train(cfg, tmp_path, "views")
    assert TwoViews.seen and all(
        count == 2 and shape[0] == cfg.train.batch_size and differ for count, shape, differ in TwoViews.seen
    )


def test_simclr_trains_on_two_views_and_validation_with_one_goes_without_it(tmp_path):
    cfg = tiny_config(tmp_path, "train.epochs=1", "objectives.simclr.weight=0.5")
    ((metrics, _),) = _train(cfg, tmp_path, "simclr", validate=True)
    assert math.isfinite(metrics["loss/simclr"]) and metrics["loss/simclr"] > 0
    assert "val/infonce" in metrics and "val/simclr" not in metrics
