"""The data pipeline, assembled in one place.

    list_videos ─► probe_videos (Ray tasks) ─► clip index (parquet-able table)
                                                 │  uniform K clips, or fresh random offsets per epoch
                                                 ▼
                   decode_clip_stream (Ray Data tasks, streaming) ─► clip rows ─► training / prepare

Prepared shards (``workflows/prepare.py``) skip the first three steps: they already hold
clip rows and are read back with ``ray.data.read_parquet``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from avray.cluster import on_driver_node
from avray.config import DataConfig
from avray.data.labels import label_or_none, labelled_count
from avray.data.report import SkipLog, SkipReport
from avray.data.shards import PREPARED_MARKER, DataSource, resolve_source
from avray.data.sources import SourceError, list_videos
from avray.data.stages import (
    clip_id,
    clip_starts,
    decode_clip_stream,
    probe_videos,
    random_start,
    video_batches,
    video_unit,
)
from avray.storage import filesystem_for

# Shape-defining settings: prepared shards are only valid for a config that agrees on these.
CLIP_SHAPE_KEYS = ("clip_seconds", "fps", "frame_size", "sample_rate")
# Clips per decode task at most (see decode_dataset).
MAX_CLIPS_PER_TASK = 256


def held_out_sources(sources: list[str], labels: list, val_fraction: float, seed: int) -> set[str]:
    """The videos kept for validation: ``val_fraction`` of each label's videos, stratified.

    Within a label, videos are ranked by a seeded hash of their path, so the choice is
    reproducible and needs no shared RNG. Every label with two or more videos gives at least
    one and keeps at least one for training: a small corpus still gets a usable validation set
    (a plain per-video coin flip can leave it empty or single-class).
    """
    if val_fraction <= 0:
        return set()
    by_label: dict = {}
    for source, label in zip(sources, labels):
        by_label.setdefault(label, set()).add(source)
    held_out: set[str] = set()
    for videos in by_label.values():
        if len(videos) < 2:
            continue
        ranked = sorted(videos, key=lambda s: video_unit(s, seed))
        held_out.update(ranked[:min(len(ranked) - 1, max(1, round(val_fraction * len(ranked))))])
    return held_out


def _parallelism(cfg: DataConfig) -> int:
    return cfg.decode_concurrency or max(1, int(ray.cluster_resources().get("CPU", 1)))


@dataclass
class ClipIndex:
    """One row per clip: source, slot, start, duration, video_duration, label, has_audio, clip_id.

    Built from container metadata only. ``for_epoch`` gives the clips to decode in an epoch:
    the stored uniform windows, or (``data.sampling: random``) new offsets for every epoch.
    """

    clips: pa.Table
    report: SkipReport = field(default_factory=SkipReport)

    @property
    def num_videos(self) -> int:
        return len(pc.unique(self.clips.column("source"))) if self.clips.num_rows else 0

    def for_epoch(self, cfg: DataConfig, epoch: int) -> pa.Table:
        if cfg.sampling == "uniform" or self.clips.num_rows == 0:
            return self.clips
        starts = [
            random_start(source, slot, duration, cfg, epoch)
            for source, slot, duration in zip(
                self.clips.column("source").to_pylist(),
                self.clips.column("slot").to_pylist(),
                self.clips.column("video_duration").to_pylist(),
            )
        ]
        ids = [clip_id(s, t) for s, t in zip(self.clips.column("source").to_pylist(), starts)]
        table = self.clips.set_column(self.clips.schema.get_field_index("start"), "start", pa.array(starts, pa.float64()))
        return table.set_column(table.schema.get_field_index("clip_id"), "clip_id", pa.array(ids, pa.string()))

    def shuffled(self, seed: int) -> "ClipIndex":
        """The videos in a seeded random order, each video's clips side by side. The index
        lists a folder-per-class corpus class by class: decoded in that order, a training
        batch would hold a few videos of one class, poor negatives for each other. A video's
        own clips stay together so that one decode pass serves them all
        (``decode_clips_of_video``); the training loop's shuffle buffer parts them."""
        sources = self.clips.column("source").to_pylist()
        videos = sorted(set(sources))
        rank = dict(zip(videos, np.random.default_rng(seed).permutation(len(videos))))
        order = sorted(range(len(sources)), key=lambda i: (rank[sources[i]], i))
        return ClipIndex(self.clips.take(pa.array(order, pa.int64())), self.report)

    def split(self, val_fraction: float, seed: int) -> tuple["ClipIndex", "ClipIndex"]:
        """(train, validation) by source video, so clips of one video never sit on both sides."""
        sources = self.clips.column("source").to_pylist()
        held_out = held_out_sources(sources, self.clips.column("label").to_pylist(), val_fraction, seed)
        mask = pa.array([s in held_out for s in sources], pa.bool_())
        return (ClipIndex(self.clips.filter(pc.invert(mask)), self.report),
                ClipIndex(self.clips.filter(mask), SkipReport()))

    def write(self, uri: str, endpoint_override: str | None = None) -> None:
        fs, path = filesystem_for(uri, endpoint_override)
        pq.write_table(self.clips, path, filesystem=fs)


def build_clip_index(uri: str, cfg: DataConfig) -> ClipIndex:
    """List the videos under ``uri``, probe them in parallel with Ray, lay out their clips."""
    refs = list_videos(uri, cfg.extensions, cfg.endpoint_override)
    items = [{"uri": ref.uri, "label": ref.label} for ref in refs]
    blocks = max(1, min(len(items), 4 * _parallelism(cfg)))
    probed = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
        probe_videos,
        fn_kwargs={"cfg": cfg},
        batch_format="numpy",
        batch_size=None,
        compute=ray.data.TaskPoolStrategy(size=_parallelism(cfg)),
        num_cpus=cfg.cpus_per_decode_task,
    )
    videos = pa.concat_tables(ray.get(probed.to_arrow_refs())).to_pylist()
    report = SkipReport()
    rows = []
    for video in sorted(videos, key=lambda v: v["source"]):
        if video["reason"]:
            report.add(video["source"], video["reason"], video["detail"], clips=cfg.clips_per_video)
            continue
        if not video["has_audio"]:
            report.silent_videos.add(video["source"])
        for slot, start in enumerate(clip_starts(video["duration"], cfg)):
            start = round(float(start), 3)
            rows.append(
                {
                    "source": video["source"],
                    "slot": slot,
                    "start": start,
                    "duration": cfg.clip_seconds,
                    "video_duration": video["duration"],
                    "label": video["label"],
                    "has_audio": video["has_audio"],
                    "clip_id": clip_id(video["source"], start),
                }
            )
    schema = pa.schema(
        [
            ("source", pa.string()),
            ("slot", pa.int32()),
            ("start", pa.float64()),
            ("duration", pa.float64()),
            ("video_duration", pa.float64()),
            ("label", pa.string()),
            ("has_audio", pa.bool_()),
            ("clip_id", pa.string()),
        ]
    )
    return ClipIndex(pa.Table.from_pylist(rows, schema=schema), report)


@dataclass
class Clips:
    """A stream of clip rows and the record of what was skipped producing it."""

    dataset: ray.data.Dataset
    index: ClipIndex | None = None
    skip_log: ray.actor.ActorHandle | None = None

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


@ray.remote(num_cpus=0)
class EpochClock:
    """The epoch a long-lived dataset is being read for.

    Ray Train re-executes the same dataset every epoch; with ``data.sampling: random`` the
    decode tasks read the epoch here, so each epoch gets fresh (and reproducible) offsets.
    """

    def __init__(self, epoch: int = 0):
        self.epoch = epoch

    def set(self, epoch: int) -> None:
        self.epoch = epoch

    def get(self) -> int:
        return self.epoch


def decode_dataset(index: ClipIndex, cfg: DataConfig, epoch: int = 0, epoch_clock=None) -> Clips:
    """Stream the decoded clips of ``index`` (lazy: nothing runs until iterated).

    The clips are those of ``epoch``, or, given an :class:`EpochClock`, of whatever epoch
    the clock shows when each block is decoded.
    """
    table = index.for_epoch(cfg, epoch)
    if table.num_rows == 0:
        raise SourceError(f"no usable clips: every video was skipped\n{index.report.summary()}")
    # Few long tasks, each yielding a block per decode_batch_size clips: Ray Data pauses in its
    # scheduling loop before starting each task, and with a task per 16 clips the cores sat
    # idle about 45 % of the time (workflows/bench_ingest.py). Two tasks per slot, capped, so
    # that the last tasks end together and a task lost with its node is cheap to run again.
    parallelism = _parallelism(cfg)
    per_task = min(MAX_CLIPS_PER_TASK, max(cfg.decode_batch_size, -(-table.num_rows // (2 * parallelism))))
    tasks = [table.slice(start, length) for start, length in video_batches(table.column("source").to_pylist(),
                                                                          per_task)]
    skip_log = on_driver_node(SkipLog).remote()
    dataset = ray.data.from_arrow(tasks).map_batches(
        decode_clip_stream,
        fn_kwargs={"cfg": cfg, "skip_log": skip_log, "epoch_clock": epoch_clock},
        batch_format="numpy",
        batch_size=None,
        compute=ray.data.TaskPoolStrategy(size=parallelism),
        num_cpus=cfg.cpus_per_decode_task,
    )
    # Ray Data reserves part of the cluster for each operator in the plan; decoding is the only
    # one that does work, and with the reservation it ran ~1.3 tasks at a time on 2 cores
    # instead of 2 (workflows/bench_ingest.py). Off for this dataset only.
    dataset.context.op_resource_reservation_enabled = False
    # A block is sent on once it reaches this size: one yielded batch of clips.
    dataset.context.target_max_block_size = max(1 << 20, cfg.decode_batch_size * cfg.clip_bytes)
    return Clips(dataset, index, skip_log)


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
    dataset = ray.data.read_parquet(source.path, filesystem=source.filesystem, file_extensions=["parquet"],
                                    num_cpus=cfg.cpus_per_decode_task, shuffle=shuffle)
    return Clips(dataset)


def count_prepared(uri: str, cfg: DataConfig) -> int:
    """Clips in a prepared folder, from parquet metadata (nothing is decoded or read in full)."""
    fs, path = filesystem_for(uri, cfg.endpoint_override)
    return pads.dataset(path, filesystem=fs, format="parquet").count_rows()


def load_clips(source: str | DataSource, cfg: DataConfig, epoch: int = 0) -> Clips:
    """Clip rows from any source: videos (folder, manifest, s3://) or prepared shards."""
    source = resolve_source(source, cfg.endpoint_override)
    if source.prepared:
        return read_prepared(source, cfg)
    return decode_dataset(build_clip_index(source.uri, cfg), cfg, epoch)


def prepare(uri: str, output: str, cfg: DataConfig, progress: Callable[[str], None] = print) -> SkipReport:
    """Index ``uri``, decode every clip (in a seeded random order, so that shards mix videos
    and classes) and write them as prepared shards to ``output``; report progress and skips."""
    start = time.perf_counter()
    index = build_clip_index(uri, cfg)
    progress(f"indexed {index.num_videos} videos -> {index.clips.num_rows} clips in {time.perf_counter() - start:.1f} s")
    report = write_prepared(decode_dataset(index.shuffled(cfg.seed), cfg), output, cfg)
    written, seconds = count_prepared(output, cfg), time.perf_counter() - start
    progress(f"wrote {written} clips to {output} in {seconds:.1f} s ({written / seconds:.1f} clips/s)")
    progress(report.summary())
    return report


def write_prepared(clips: Clips, uri: str, cfg: DataConfig, extra: dict | None = None) -> SkipReport:
    """Materialise ``clips`` as parquet shards under ``uri`` (local or s3://), plus the marker
    (``extra`` adds keys to it, e.g. that the rows are features)."""
    fs, path = filesystem_for(uri, cfg.endpoint_override)
    fs.create_dir(path, recursive=True)
    # A re-run (or other encoders) replaces what an earlier one wrote here, and nothing else:
    # old shards beside new ones would duplicate every clip.
    old = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    for info in old:
        if info.type == pafs.FileType.File and (info.base_name.endswith(".parquet") or info.base_name == PREPARED_MARKER):
            fs.delete_file(info.path)
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



@dataclass
class TrainingData:
    """What pretraining reads: training and held-out clips, split by source video."""

    train: ray.data.Dataset
    val: ray.data.Dataset | None
    num_train_clips: int
    num_val_clips: int
    clips: Clips
    epoch_clock: ray.actor.ActorHandle | None = None
    val_labelled: int = 0  # held-out clips that carry a label
    val_classes: int = 0  # distinct labels among them


def _keep_split(batch: pa.Table, held_out_videos: pa.Array, held_out: bool) -> pa.Table:
    # In Arrow: converting clip tensors to numpy and back would copy every frame.
    mask = pc.is_in(batch.column("source"), value_set=held_out_videos)
    return batch.filter(mask if held_out else pc.invert(mask))


def training_data(source: str | DataSource, cfg: DataConfig) -> TrainingData:
    """Train/validation streams for pretraining, from videos or prepared shards.

    From videos, the training stream follows an :class:`EpochClock`, so that with
    ``data.sampling: random`` every epoch sees fresh clip offsets.
    """
    source = resolve_source(source, cfg.endpoint_override)
    uri = source.uri
    if source.prepared:
        clips = read_prepared(source, cfg, shuffle_files=True)
        rows = pads.dataset(source.path, filesystem=source.filesystem, format="parquet").to_table(
            columns=["source", "label"])
        sources = rows.column("source").to_pylist()
        labels = [label_or_none(v) for v in rows.column("label").to_pylist()]
        held_out_videos = held_out_sources(sources, labels, cfg.val_fraction, cfg.seed)
        n_val = sum(s in held_out_videos for s in sources)
        val_labelled, val_classes = labelled_count(label for s, label in zip(sources, labels) if s in held_out_videos)
        split = lambda held_out: clips.dataset.map_batches(  # noqa: E731
            _keep_split, fn_kwargs={"held_out_videos": pa.array(sorted(held_out_videos), pa.string()), "held_out": held_out},
            batch_format="pyarrow")
        # Shards may hold a video's clips side by side: the training loop's shuffle buffer mixes
        # them (a global shuffle or block reorder would materialise the dataset every epoch).
        return TrainingData(split(False), split(True) if n_val else None, len(sources) - n_val, n_val, clips,
                            val_labelled=val_labelled, val_classes=val_classes)
    index = build_clip_index(uri, cfg)
    train_index, val_index = index.split(cfg.val_fraction, cfg.seed)
    if train_index.clips.num_rows == 0:
        raise SourceError(f"no usable training clips in {uri!r}\n{index.report.summary()}")
    train_index = train_index.shuffled(cfg.seed)
    clock = on_driver_node(EpochClock).remote()
    train = decode_dataset(train_index, cfg, epoch_clock=clock)
    val = decode_dataset(val_index, cfg) if val_index.clips.num_rows else None
    val_labelled, val_classes = labelled_count(val_index.clips.column("label").to_pylist())
    return TrainingData(train.dataset, val.dataset if val else None, train_index.clips.num_rows,
                        val_index.clips.num_rows, train, clock, val_labelled=val_labelled, val_classes=val_classes)
