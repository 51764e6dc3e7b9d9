"""Batch embedding with Ray Data: clip rows in, one row of embeddings per clip out.

    clip rows ─► map_batches(EmbedClips, actor pool; 1 GPU per actor when the cluster has GPUs)
              ─► {clip_id, source, start, label, audio [E], video [E], fused [F]} ─► parquet

Each actor builds its model(s) once from a :class:`ModelSpec` (a checkpoint's files in Ray's
object store, or a config for random weights), so no model object ever travels through Ray,
and no actor reads the driver's disk. Embedding columns are
float32 fixed-size lists: plain parquet that pandas, pyarrow or Spark read without avray.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import ray
import torch

from avray import console
from avray.checkpoint import CONFIG_FILE, STATE_FILE
from avray.cluster import inference_pool
from avray.config import Config, ConfigError, config_from_dict, load_config
from avray.data.labels import label_column
from avray.data.shards import remove_shards
from avray.data.sources import SourceError
from avray.models import load_model
from avray.models.loading import find_model_checkpoint
from avray.models.outputs import ENCODER_FEATURES, MODALITIES
from avray.storage import filesystem_for

# The embeddings evaluated and exported: the projection heads (the space where the
# cross-modal objectives compare audio with video) and the joint embedding.
ID_COLUMNS = ("clip_id", "source", "start", "label")
BASELINE_PREFIX = "baseline/"
# ~100 MB parquet files at default widths (E=128, F=256: about 2 KB per clip).
ROWS_PER_FILE = 50_000


def evaluation_config(checkpoint: str | Path, overrides: Sequence[str] = ()) -> tuple[Path, Config]:
    """The checkpoint folder (on the driver: a local copy of an ``s3://`` one) and its config, with
    ``key=value`` overrides and uniform clip sampling (fixed windows: evaluating twice gives
    the same clips and the same numbers). ``model.*`` overrides are refused: the trained weights
    and the random baseline are both the checkpoint's architecture."""
    changed = sorted(item.split("=", 1)[0].strip() for item in overrides if item.strip().startswith("model."))
    if changed:
        raise ConfigError(
            f"{', '.join(changed)}: evaluation uses the model the checkpoint was trained with, and builds "
            "its random baseline from the same model section; drop the model.* overrides"
        )
    try:
        folder = find_model_checkpoint(checkpoint).resolve()
    except FileNotFoundError as err:
        raise SourceError(str(err)) from None
    cfg = load_config(folder / CONFIG_FILE, overrides)
    return folder, replace(cfg, data=replace(cfg.data, sampling="uniform"))


@dataclass(frozen=True)
class ModelSpec:
    """How an actor gets its model; small and picklable, unlike the model itself.

    ``checkpoint``: the trained weights, as the files of a checkpoint folder put in Ray's object
    store by the driver. The folder the driver resolved (a temporary copy of an ``s3://``
    checkpoint, or a path on its own disk) is not there on another node, and fetching the
    ``s3://`` one again could find a newer checkpoint than the driver scored.
    Otherwise ``config`` (``Config.to_dict()``): the same architecture with random weights from
    ``torch.manual_seed(train.seed)``, which is exactly the initialisation pretraining started
    from (the training loop seeds torch the same way right before building the model).
    """

    checkpoint: ray.ObjectRef | None = None
    config: dict | None = None

    @classmethod
    def trained(cls, folder: str | Path) -> ModelSpec:
        """``folder``: a checkpoint folder on the driver (:func:`evaluation_config`'s)."""
        return cls(checkpoint=ray.put({name: (Path(folder) / name).read_bytes() for name in (STATE_FILE, CONFIG_FILE)}))

    @classmethod
    def random_init(cls, cfg: Config) -> ModelSpec:
        return cls(config=cfg.to_dict())

    def build(self) -> torch.nn.Module:
        if self.checkpoint is not None:
            with tempfile.TemporaryDirectory(prefix="avray-checkpoint-") as folder:
                for name, data in ray.get(self.checkpoint).items():
                    (Path(folder) / name).write_bytes(data)
                return load_model(folder)[0]
        from avray.models import build_model

        cfg = config_from_dict(self.config)
        torch.manual_seed(cfg.train.seed)
        return build_model(cfg.model, cfg.data).eval()


def _embedding_column(values: np.ndarray) -> pa.FixedSizeListArray:
    values = np.ascontiguousarray(values, np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


class EmbedClips:
    """Ray Data callable class: holds models keyed by column prefix, embeds a batch of clip rows
    into the model outputs named in ``outputs``."""

    def __init__(self, models: Mapping[str, ModelSpec], outputs: Sequence[str] = MODALITIES):
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.models = {prefix: spec.build().to(self.device).eval() for prefix, spec in models.items()}
        self.outputs = tuple(outputs)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        video = torch.as_tensor(batch["video"]).to(self.device, non_blocking=True)
        audio = torch.as_tensor(batch["audio"]).to(self.device, non_blocking=True)
        columns = {
            "clip_id": pa.array(batch["clip_id"].tolist(), pa.string()),
            "source": pa.array(batch["source"].tolist(), pa.string()),
            "start": pa.array(batch["start"].tolist(), pa.float64()),
            "label": label_column(batch["label"]),
        }
        with torch.inference_mode():
            for prefix, model in self.models.items():
                outputs = model(video, audio)
                for name in self.outputs:
                    columns[prefix + name] = _embedding_column(outputs[name].float().cpu().numpy())
        console.tick("embed", advance=len(batch["clip_id"]))
        return pa.table(columns)


def embed_dataset(
    clips: ray.data.Dataset,
    models: Mapping[str, ModelSpec] | ModelSpec,
    *,
    batch_size: int = 64,
    actors: int | None = None,
    outputs: Sequence[str] = MODALITIES,
) -> ray.data.Dataset:
    """Embed a dataset of clip rows (lazy, streaming).

    ``models`` maps a column prefix to a model: ``{"": trained, "baseline/": random}`` gives
    columns ``audio, video, fused, baseline/audio, ...`` from one decode of the clips. A single
    :class:`ModelSpec` means ``{"": spec}``. ``outputs``: the model outputs written, a column
    each (:class:`~avray.models.outputs.ModelOutputs` field names). ``actors``: size of the
    actor pool (default: one per GPU, else a quarter of the CPUs, since decoding the clips
    needs the rest).
    """
    if isinstance(models, ModelSpec):
        models = {"": models}
    return clips.map_batches(
        EmbedClips,
        fn_constructor_kwargs={"models": dict(models), "outputs": tuple(outputs)},
        batch_size=batch_size,
        batch_format="numpy",
        # Writable arrays: torch cannot wrap read-only numpy memory (it warns, once per actor).
        zero_copy_batch=False,
        **inference_pool(actors),
    )


def write_embeddings(embeddings: ray.data.Dataset, uri: str, endpoint_override: str | None = None) -> None:
    """Write ``embeddings`` as parquet files in the folder ``uri`` (local or s3://), replacing
    those an earlier export left there."""
    fs, path = filesystem_for(uri, endpoint_override)
    remove_shards(fs, path)
    embeddings.write_parquet(path, filesystem=fs, min_rows_per_file=ROWS_PER_FILE)


@dataclass(frozen=True)
class EmbeddingTable:
    """One model's embeddings as numpy, rows sorted by clip id (N clips).

    ``ids``, ``sources`` str [N]; ``starts`` float [N]; ``labels`` object [N] (None where
    unlabelled); ``audio`` [N, E], ``video`` [N, E], ``fused`` [N, F] float32.
    """

    ids: np.ndarray
    sources: np.ndarray
    starts: np.ndarray
    labels: np.ndarray
    audio: np.ndarray
    video: np.ndarray
    fused: np.ndarray
    # The pooled encoder outputs, where the table was embedded with them (evaluation does).
    audio_features: np.ndarray | None = None
    video_features: np.ndarray | None = None

    @classmethod
    def from_arrow(cls, table: pa.Table, prefix: str = "") -> EmbeddingTable:
        table = table.sort_by("clip_id")

        def matrix(name: str) -> np.ndarray:
            column = table.column(prefix + name).combine_chunks()
            return column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), column.type.list_size)

        return cls(
            ids=np.asarray(table.column("clip_id").to_pylist(), dtype=object),
            sources=np.asarray(table.column("source").to_pylist(), dtype=object),
            starts=table.column("start").to_numpy(),
            labels=np.asarray(table.column("label").to_pylist(), dtype=object),
            **{name: matrix(name) for name in MODALITIES},
            **{name: matrix(name) for name in ENCODER_FEATURES if prefix + name in table.column_names},
        )

    def __len__(self) -> int:
        return len(self.ids)


def collect(embeddings: ray.data.Dataset) -> pa.Table:
    """All rows of an embedding dataset on the driver (small: a few KB per clip, no frames or audio)."""
    return pa.concat_tables(ray.get(embeddings.to_arrow_refs()))


def count_embeddings(uri: str, endpoint_override: str | None = None) -> int:
    """Rows written under ``uri``, from parquet metadata (nothing is read in full)."""
    fs, path = filesystem_for(uri, endpoint_override)
    return pads.dataset(path, filesystem=fs, format="parquet").count_rows()


def read_embeddings(uri: str, prefix: str = "", endpoint_override: str | None = None) -> EmbeddingTable:
    """Embeddings written by :func:`write_embeddings` (a parquet file or folder, local or s3://)."""
    fs, path = filesystem_for(uri, endpoint_override)
    return EmbeddingTable.from_arrow(pads.dataset(path, filesystem=fs, format="parquet").to_table(), prefix)
