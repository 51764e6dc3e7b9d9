"""The data pipeline, assembled in one place.

    list_videos ─► probe_videos (Ray tasks) ─► clip index (avray.data.index)
                                                 │  uniform K clips, or fresh random offsets per epoch
                                                 ▼
                   decode_clip_stream (Ray Data tasks, streaming) ─► clip rows ─► training / prepare

The stage functions live in ``avray.data.stages``. Prepared shards (``workflows/prepare.py``;
their format in ``avray.data.shards``) skip the first three steps: they already hold clip
rows and are read back with ``ray.data.read_parquet``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import ray

from avray import console
from avray.cluster import on_driver_node
from avray.config import DataConfig
from avray.data.index import ClipIndex, build_clip_index, decode_parallelism, held_out_sources, knn_labels
from avray.data.labels import label_or_none, labelled_count
from avray.data.report import SkipLog, SkipReport
from avray.data.shards import Clips, DataSource, count_prepared, read_prepared, resolve_source, write_prepared
from avray.data.sources import SourceError
from avray.data.stages import (
    decode_clip_stream,
    video_batches,
)

# Clips per decode task at most (see decode_dataset).
MAX_CLIPS_PER_TASK = 256


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
    parallelism = decode_parallelism(cfg)
    per_task = min(MAX_CLIPS_PER_TASK, max(cfg.decode_batch_size, -(-table.num_rows // (2 * parallelism))))
    tasks = [
        table.slice(start, length) for start, length in video_batches(table.column("source").to_pylist(), per_task)
    ]
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


def load_clips(source: str | DataSource, cfg: DataConfig, epoch: int = 0) -> Clips:
    """Clip rows from any source: videos (folder, manifest, s3://) or prepared shards."""
    source = resolve_source(source, cfg.endpoint_override)
    if source.prepared:
        return read_prepared(source, cfg)
    return decode_dataset(build_clip_index(source.uri, cfg), cfg, epoch)


def prepare(uri: str, output: str, cfg: DataConfig, progress: Callable[[str], None] = console.say) -> SkipReport:
    """Index ``uri``, decode every clip (in a seeded random order, so that shards mix videos
    and classes) and write them as prepared shards to ``output``; report progress and skips."""
    start = time.perf_counter()
    index = build_clip_index(uri, cfg)
    progress(
        f"indexed {index.num_videos} videos -> {index.clips.num_rows} clips in {time.perf_counter() - start:.1f} s"
    )
    clips = decode_dataset(index.shuffled(cfg.seed), cfg)  # refuses an index without clips, before a bar
    with console.bar("decode", "decoding", total=index.clips.num_rows):
        report = write_prepared(clips, output, cfg)
    written, seconds = count_prepared(output, cfg), time.perf_counter() - start
    progress(f"wrote {written} clips to {output} in {seconds:.1f} s ({written / seconds:.1f} clips/s)")
    progress(report.summary())
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
    train_labelled: int = 0  # training clips that carry a label
    val_labelled: int = 0  # held-out clips that carry a label
    val_classes: int = 0  # distinct labels among them
    val_knn_labels: int = 0  # labels with two or more held-out videos (avray.data.index.knn_labels)


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
            columns=["source", "label"]
        )
        sources = rows.column("source").to_pylist()
        labels = [label_or_none(v) for v in rows.column("label").to_pylist()]
        held_out_videos = held_out_sources(sources, labels, cfg.val_fraction, cfg.seed)
        n_val = sum(s in held_out_videos for s in sources)
        held = [(s, label) for s, label in zip(sources, labels) if s in held_out_videos]
        val_labelled, val_classes = labelled_count(label for _, label in held)
        val_knn = len(knn_labels([s for s, _ in held], [label for _, label in held]))
        train_labelled = labelled_count(label for s, label in zip(sources, labels) if s not in held_out_videos)[0]
        split = lambda held_out: clips.dataset.map_batches(  # noqa: E731
            _keep_split,
            fn_kwargs={"held_out_videos": pa.array(sorted(held_out_videos), pa.string()), "held_out": held_out},
            batch_format="pyarrow",
        )
        # Shards may hold a video's clips side by side: the training loop's shuffle buffer mixes
        # them (a global shuffle or block reorder would materialise the dataset every epoch).
        return TrainingData(
            split(False),
            split(True) if n_val else None,
            len(sources) - n_val,
            n_val,
            clips,
            train_labelled=train_labelled,
            val_labelled=val_labelled,
            val_classes=val_classes,
            val_knn_labels=val_knn,
        )
    index = build_clip_index(uri, cfg)
    train_index, val_index = index.split(cfg.val_fraction, cfg.seed)
    if train_index.clips.num_rows == 0:
        raise SourceError(f"no usable training clips in {uri!r}\n{index.report.summary()}")
    train_index = train_index.shuffled(cfg.seed)
    clock = on_driver_node(EpochClock).remote()
    train = decode_dataset(train_index, cfg, epoch_clock=clock)
    val = decode_dataset(val_index, cfg) if val_index.clips.num_rows else None
    val_labelled, val_classes = labelled_count(val_index.clips.column("label").to_pylist())
    return TrainingData(
        train.dataset,
        val.dataset if val else None,
        train_index.clips.num_rows,
        val_index.clips.num_rows,
        train,
        clock,
        train_labelled=labelled_count(train_index.clips.column("label").to_pylist())[0],
        val_labelled=val_labelled,
        val_classes=val_classes,
        val_knn_labels=len(
            knn_labels(val_index.clips.column("source").to_pylist(), val_index.clips.column("label").to_pylist())
        ),
    )
