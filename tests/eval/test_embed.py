"""Embedding actors get their checkpoint from Ray's object store, not from the driver's disk."""

import shutil

import numpy as np
import torch

from avray.checkpoint import save_state
from avray.data.pipeline import load_clips
from avray.eval.embed import EmbeddingTable, ModelSpec, collect, embed_dataset, evaluation_config
from avray.models import build_model, load_model
from avray.models.outputs import MODALITIES
from tests.tiny import make_tiny_corpus, tiny_config


def _checkpoint_on_s3(s3_server, tmp_path, cfg) -> str:
    """A checkpoint of ``cfg``'s model (seeded weights) uploaded to ``s3://ckpt/run/checkpoint_000001``."""
    torch.manual_seed(1)
    model = build_model(cfg.model, cfg.data)
    folder = tmp_path / "checkpoint"
    save_state(folder, cfg, {"module": {f"model.{k}": v for k, v in model.state_dict().items()}, "epoch": 0})
    client = s3_server.client()
    client.create_bucket(Bucket="ckpt")
    for path in folder.iterdir():
        client.upload_file(str(path), "ckpt", f"run/checkpoint_000001/{path.name}")
    return "s3://ckpt/run"


def test_actors_embed_an_s3_checkpoint_that_only_the_driver_fetched(ray_local, s3_env, tmp_path):
    cfg = tiny_config(tmp_path)
    uri = _checkpoint_on_s3(s3_env, tmp_path, cfg)
    folder, eval_cfg = evaluation_config(uri)  # the driver's temporary copy of the checkpoint
    spec = ModelSpec.trained(folder)
    expected_model = load_model(folder)[0]
    # An actor on another node sees no such folder: take it away here too.
    shutil.rmtree(folder)

    clips = load_clips(make_tiny_corpus(tmp_path / "corpus", videos=2), eval_cfg.data).dataset.materialize()
    table = EmbeddingTable.from_arrow(collect(embed_dataset(clips, spec, batch_size=4, actors=1)))
    rows = sorted(clips.take_all(), key=lambda row: row["clip_id"])
    assert list(table.ids) == [row["clip_id"] for row in rows] and len(rows) == 4
    with torch.inference_mode():
        outputs = expected_model(
            torch.as_tensor(np.stack([row["video"] for row in rows])),
            torch.as_tensor(np.stack([row["audio"] for row in rows])),
        )
    for name in MODALITIES:
        np.testing.assert_allclose(getattr(table, name), outputs[name].numpy(), rtol=1e-4, atol=1e-5)
