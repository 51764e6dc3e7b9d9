"""Prepared folders: clip (or feature) shards beside a marker file that says so, written
and read here, and what a ``--data`` location holds (:class:`DataSource`).

``workflows/prepare.py`` writes clip shards; ``workflows/extract_features.py`` writes feature
shards, whose marker adds the kind ``features`` and the per-clip feature shapes. A model
reads one or the other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

import pyarrow.dataset as pads
import pyarrow.fs as pafs
import ray

from avray.config import Config, ConfigError, DataConfig, with_overrides
from avray.data.index import ClipIndex
from avray.data.report import SkipReport
from avray.data.sources import SourceError
from avray.storage import filesystem_for

# A prepared-clip folder (workflows/prepare.py) carries this marker next to its shards;
# the leading underscore keeps pyarrow and Ray from taking it for a data file.
PREPARED_MARKER = "_avray_clips.json"
FEATURES_KIND = "features"
# Shape-defining settings: prepared shards are only valid for a config that agrees on these.
CLIP_SHAPE_KEYS = ("clip_seconds", "fps", "frame_size", "sample_rate")


@dataclass(frozen=True)
class DataSource:
    """A ``--data`` argument resolved once, at the workflow's entry, and handed down.

    ``kind``: ``videos`` (a folder, manifest or prefix to list), ``clips`` (prepared clip
    shards) or ``features`` (frozen-encoder feature shards); ``filesystem`` and ``path`` read
    it; ``marker``: a prepared folder's marker (None for videos).
    """

    uri: str
    kind: Literal["videos", "clips", "features"]
    filesystem: pafs.FileSystem
    path: str
    marker: dict | None = None

    @property
    def prepared(self) -> bool:
        return self.marker is not None

    @property
    def feature_shapes(self) -> dict[str, list[int]] | None:
        """Per-clip feature shapes of feature shards; None for anything else."""
        return self.marker.get("shapes") if self.kind == "features" else None


def resolve_source(source: str | DataSource, endpoint_override: str | None = None) -> DataSource:
    """What ``source`` holds, read once (its marker, if any); a DataSource is returned as it is."""
    if isinstance(source, DataSource):
        return source
    fs, path = filesystem_for(source, endpoint_override)
    marker_path = f"{path}/{PREPARED_MARKER}"
    if fs.get_file_info(marker_path).type != pafs.FileType.File:
        return DataSource(source, "videos", fs, path)
    with fs.open_input_stream(marker_path) as handle:
        marker = json.loads(handle.read())
    return DataSource(source, "features" if marker.get("kind") == FEATURES_KIND else "clips", fs, path, marker)


def check_inputs(cfg: Config, source: DataSource) -> None:
    """A trained model reads what it was trained on: clips, or features of the same shapes."""
    shapes = source.feature_shapes
    if cfg.model.inputs == "clips" and shapes is not None:
        raise ConfigError(
            f"{source.uri!r} holds frozen-encoder features, but this model reads clips: give it "
            "videos or prepared clips"
        )
    if cfg.model.inputs == "features" and shapes != cfg.model.feature_shapes():
        raise ConfigError(
            f"this model reads frozen features shaped {cfg.model.feature_shapes()} and {source.uri!r} "
            f"holds {'none' if shapes is None else shapes}: extract them with "
            "workflows/extract_features.py and the same frozen encoders and frozen.tokens"
        )


def for_inputs(cfg: Config, source: DataSource) -> Config:
    """``cfg`` fitted to what ``source`` holds: on feature shards, heads + fusion over features
    of the shards' shapes; on clips, unchanged. A model built for one cannot read the other."""
    shapes = source.feature_shapes
    if shapes is None:
        check_inputs(cfg, source)
        return cfg
    return with_overrides(
        cfg,
        {
            "model.inputs": "features",
            **{f"model.{name}_feature_dim": shape[-1] for name, shape in shapes.items()},
            **{f"model.{name}_feature_tokens": shape[0] if len(shape) == 2 else 0 for name, shape in shapes.items()},
        },
    )


@dataclass
class Clips:
    """A stream of clip rows and the record of what was skipped producing it."""

    dataset: ray.data.Dataset
    index: ClipIndex | None = None
    skip_log: ray.actor.ActorHandle | None = None

    @property
    def expected(self) -> int | None:
        """Clips to be decoded (some may be skipped), when decoding from videos."""
        return self.index.clips.num_rows if self.index is not None else None

    def report(self) -> SkipReport:
        """Skips so far: those found while indexing plus those found while decoding.

        Complete once the dataset has been consumed.
        """
        report = SkipReport()
        if self.index is not None:
            report.merge(self.index.report)
        if self.skip_log is not None:
            report.merge(ray.get(self.skip_log.get.remote()))
        return report


def read_prepared(source: str | DataSource, cfg: DataConfig, shuffle_files: bool = False) -> Clips:
    """Clip rows materialised by ``workflows/prepare.py``, checked against ``cfg``'s clip shape.

    ``shuffle_files``: read the shard files in a new seeded order on every pass (every epoch),
    a streaming-friendly shuffle that never materialises the dataset.
    """
    source = resolve_source(source, cfg.endpoint_override)
    if not source.prepared:
        raise SourceError(f"{source.uri!r} holds no prepared clips (no {PREPARED_MARKER}); run prepare.py")
    shapes = source.marker["data"]
    mismatched = [k for k in CLIP_SHAPE_KEYS if shapes.get(k) != getattr(cfg, k)]
    if mismatched:
        details = ", ".join(f"{k}: shards {shapes.get(k)} vs config {getattr(cfg, k)}" for k in mismatched)
        raise SourceError(f"prepared clips at {source.uri!r} do not match the config ({details}); re-run prepare.py")
    shuffle = ray.data.FileShuffleConfig(seed=cfg.seed, reseed_after_execution=True) if shuffle_files else None
    dataset = ray.data.read_parquet(
        source.path,
        filesystem=source.filesystem,
        file_extensions=["parquet"],
        num_cpus=cfg.cpus_per_decode_task,
        shuffle=shuffle,
    )
    return Clips(dataset)


def count_prepared(uri: str, cfg: DataConfig) -> int:
    """Clips in a prepared folder, from parquet metadata (nothing is decoded or read in full)."""
    fs, path = filesystem_for(uri, cfg.endpoint_override)
    return pads.dataset(path, filesystem=fs, format="parquet").count_rows()


def remove_shards(fs: pafs.FileSystem, path: str, also: tuple[str, ...] = ()) -> None:
    """Create the folder ``path``, or delete the parquet files (and ``also``) an earlier run
    wrote there, and nothing else (the run's own log is there): old shards beside new ones
    would duplicate every row."""
    fs.create_dir(path, recursive=True)
    for info in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
        if info.type == pafs.FileType.File and (info.base_name.endswith(".parquet") or info.base_name in also):
            fs.delete_file(info.path)


def write_prepared(clips: Clips, uri: str, cfg: DataConfig, extra: dict | None = None) -> SkipReport:
    """Materialise ``clips`` as parquet shards under ``uri`` (local or s3://), plus the marker
    (``extra`` adds keys to it, e.g. that the rows are features)."""
    fs, path = filesystem_for(uri, cfg.endpoint_override)
    remove_shards(fs, path, also=(PREPARED_MARKER,))
    clips.dataset.write_parquet(path, filesystem=fs)
    report = clips.report()
    meta = {
        "data": {k: getattr(cfg, k) for k in CLIP_SHAPE_KEYS},
        "skipped": {src: {"reason": r, "detail": d} for src, (r, d) in report.skipped.items()},
        "silent_videos": sorted(report.silent_videos),
        **(extra or {}),
    }
    # The marker is written last: a folder without it is an interrupted prepare, not a dataset.
    with fs.open_output_stream(f"{path}/{PREPARED_MARKER}") as handle:
        handle.write(json.dumps(meta, indent=2).encode())
    return report
