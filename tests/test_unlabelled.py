"""The main use case end to end: a corpus without labels (a flat folder, a manifest with only
``path``, an ``s3://`` prefix), every workflow as a user runs it, validation on.

Each source goes prepare -> pretrain (two epochs) -> tune_losses (Zipf fitness) -> evaluate
-> embed, every workflow exiting 0. Which step reads the source and which the prepared clips
varies, so that every way clips travel (decoded from videos, read back from shards, a sweep's
clips held in the object store) meets a corpus whose label column is all null. Evaluation
must report label-free metrics only, and every exported label must be None.
"""

import json
import runpy
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from avray.eval.embed import read_embeddings
from tests.conftest import own_cluster
from tests.media import make_good_video
from tests.tiny import TINY

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
VIDEOS = 8
SETTINGS = [f"--set={s}" for s in (*TINY, "train.num_workers=1", "train.epochs=2")]
# One trial, one epoch: the sweep's scheduling is tests/tune's; this is its unlabelled path.
SWEEP = [
    f"--set={s}"
    for s in (
        "tune.num_samples=1",
        "tune.scheduler=fifo",
        "train.epochs=1",
        "tune.cpus_per_trial=0.5",
        "tune.fitness=zipf",
    )
]
LABEL_FREE = {"retrieval/a2v/recall@1", "retrieval/v2a/median_rank", "elo/fitness"}


def in_this_process(monkeypatch):
    """Runs ``python workflows/<script> ARGS`` in this process, joining the running Ray cluster."""

    def run(script: str, *args: str) -> int:
        monkeypatch.setattr(sys, "argv", [script, *args])
        with pytest.raises(SystemExit) as exited:
            runpy.run_path(str(ROOT / "workflows" / script), run_name="__main__")
        return exited.value.code

    return run


@pytest.fixture(scope="module")
def flat_folder(tmp_path_factory) -> Path:
    """``VIDEOS`` videos side by side: no class subfolders, so no labels."""
    root = tmp_path_factory.mktemp("flat")
    for i in range(VIDEOS):
        make_good_video(root / f"v{i}.mp4", seconds=2.5, fps=12, size=48, sample_rate=16000, seed=i)
    return root


def _chain(run_workflow, tmp: Path, source: str, *, pretrain_on: str, sweep_on: str, score_on: str) -> None:
    """prepare -> pretrain -> tune_losses -> evaluate -> embed; each of ``*_on`` is "source" or
    "prepared" (which input that step reads). Asserts each exits 0 and nothing invents a label."""
    prepared = f"{source.rstrip('/')}-prepared" if source.startswith("s3://") else str(tmp / "prepared")
    inputs = {"source": source, "prepared": prepared}
    assert run_workflow("prepare.py", "--data", source, "--output", prepared, *SETTINGS) == 0
    run = tmp / "run"
    assert run_workflow("pretrain.py", "--data", inputs[pretrain_on], "--output", str(run), *SETTINGS) == 0
    assert (
        run_workflow("tune_losses.py", "--data", inputs[sweep_on], "--output", str(tmp / "sweep"), *SETTINGS, *SWEEP)
        == 0
    )
    assert (tmp / "sweep" / "best_mixture.yaml").is_file()
    assert (
        run_workflow("evaluate.py", "--checkpoint", str(run), "--data", inputs[score_on], "--output", str(tmp / "eval"))
        == 0
    )
    metrics = json.loads((tmp / "eval" / "metrics.json").read_text())
    assert LABEL_FREE <= set(metrics)
    assert not [k for k in metrics if k.split("/")[-1] in ("accuracy", "class_map", "nmi", "ari")], metrics
    assert metrics["clips"] == 2 * VIDEOS and metrics["labelled_clips"] == 0
    assert set(pq.read_table(tmp / "eval" / "embeddings.parquet").column("label").to_pylist()) == {None}
    exported = str(tmp / "embeddings")
    assert run_workflow("embed.py", "--checkpoint", str(run), "--data", inputs[score_on], "--output", exported) == 0
    table = read_embeddings(exported)
    assert len(table) == 2 * VIDEOS and set(table.labels.tolist()) == {None}


def test_a_flat_folder_goes_through_every_workflow(ray_local, flat_folder, tmp_path, monkeypatch):
    _chain(
        in_this_process(monkeypatch),
        tmp_path,
        str(flat_folder),
        pretrain_on="prepared",
        sweep_on="prepared",
        score_on="source",
    )


def test_a_manifest_without_labels_goes_through_every_workflow(ray_local, flat_folder, tmp_path, monkeypatch):
    manifest = tmp_path / "videos.csv"
    manifest.write_text("path\n" + "".join(f"{flat_folder / f'v{i}.mp4'}\n" for i in range(VIDEOS)))
    _chain(
        in_this_process(monkeypatch),
        tmp_path,
        str(manifest),
        pretrain_on="source",
        sweep_on="source",
        score_on="prepared",
    )


def test_an_s3_prefix_without_labels_goes_through_every_workflow(ray_local, flat_folder, s3_env, tmp_path, monkeypatch):
    client = s3_env.client()
    client.create_bucket(Bucket="unlabelled")
    for i in range(VIDEOS):
        client.upload_file(str(flat_folder / f"v{i}.mp4"), "unlabelled", f"videos/v{i}.mp4")
    # A cluster started now: its workers inherit the S3 credentials, as a user's would.
    with own_cluster(2):
        _chain(
            in_this_process(monkeypatch),
            tmp_path,
            "s3://unlabelled/videos",
            pretrain_on="source",
            sweep_on="prepared",
            score_on="source",
        )
