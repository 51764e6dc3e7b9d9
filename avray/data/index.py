"""The clip index: every clip of a corpus as a row (source, window, label), from container
metadata only, probed in parallel with Ray; split into training and held-out videos."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from avray import console
from avray.config import DataConfig
from avray.data.report import SkipReport
from avray.data.sources import list_videos
from avray.data.stages import clip_id, clip_starts, probe_videos, random_start, video_unit
from avray.storage import filesystem_for


def held_out_sources(sources: list[str], labels: list, val_fraction: float, seed: int) -> set[str]:
    """The videos kept for validation: about ``val_fraction`` of all videos, stratified by label.

    Each label gets its share, rounded by largest remainder so that the total is
    ``round(val_fraction * videos)`` (at least one), and never its last video: a label with one
    video trains. Within a label, videos are ranked by a seeded hash of their path, so the
    choice is reproducible and needs no shared RNG. (One video per label, held out on a small
    corpus, was up to half of it: 10 of 20 videos at 0.1.)
    """
    if val_fraction <= 0:
        return set()
    by_label: dict = {}
    for source, label in zip(sources, labels):
        by_label.setdefault(label, set()).add(source)
    eligible = {label: videos for label, videos in by_label.items() if len(videos) >= 2}
    total = sum(len(videos) for videos in by_label.values())
    target = min(sum(len(v) - 1 for v in eligible.values()), max(1, round(val_fraction * total)))
    shares = {label: val_fraction * len(videos) for label, videos in eligible.items()}
    quota = {label: min(len(eligible[label]) - 1, int(share)) for label, share in shares.items()}
    # Largest remainders first; ties by label, so that the split does not depend on listing order.
    for label in sorted(shares, key=lambda lb: (-(shares[lb] - int(shares[lb])), str(lb))):
        if sum(quota.values()) >= target:
            break
        if quota[label] < len(eligible[label]) - 1:
            quota[label] += 1
    held_out: set[str] = set()
    for label, videos in eligible.items():
        held_out.update(sorted(videos, key=lambda s: video_unit(s, seed))[: quota[label]])
    return held_out


def knn_labels(sources: list[str], labels: list) -> set:
    """The labels with two or more videos among ``sources``: those validation's kNN accuracy can
    score, as its folds keep a video's clips together (a label's only video has no neighbour of
    its own class outside its fold)."""
    videos: dict = {}
    for source, label in zip(sources, labels):
        if label is not None:
            videos.setdefault(label, set()).add(source)
    return {label for label, v in videos.items() if len(v) >= 2}


def decode_parallelism(cfg: DataConfig) -> int:
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
        table = self.clips.set_column(
            self.clips.schema.get_field_index("start"), "start", pa.array(starts, pa.float64())
        )
        return table.set_column(table.schema.get_field_index("clip_id"), "clip_id", pa.array(ids, pa.string()))

    def shuffled(self, seed: int) -> ClipIndex:
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

    def split(self, val_fraction: float, seed: int) -> tuple[ClipIndex, ClipIndex]:
        """(train, validation) by source video, so clips of one video never sit on both sides."""
        sources = self.clips.column("source").to_pylist()
        held_out = held_out_sources(sources, self.clips.column("label").to_pylist(), val_fraction, seed)
        mask = pa.array([s in held_out for s in sources], pa.bool_())
        return (
            ClipIndex(self.clips.filter(pc.invert(mask)), self.report),
            ClipIndex(self.clips.filter(mask), SkipReport()),
        )

    def write(self, uri: str, endpoint_override: str | None = None) -> None:
        fs, path = filesystem_for(uri, endpoint_override)
        pq.write_table(self.clips, path, filesystem=fs)


def build_clip_index(uri: str, cfg: DataConfig) -> ClipIndex:
    """List the videos under ``uri``, probe them in parallel with Ray, lay out their clips.
    The report holds what listing left out and probing skipped; its notes are also said now,
    not only at the end of the job."""
    listing = list_videos(uri, cfg.extensions, cfg.endpoint_override)
    for note in listing.report.notes:
        console.say(f"[avray] {note}")
    items = [{"uri": ref.uri, "label": ref.label} for ref in listing.videos]
    blocks = max(1, min(len(items), 4 * decode_parallelism(cfg)))
    probed = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
        probe_videos,
        fn_kwargs={"cfg": cfg},
        batch_format="numpy",
        batch_size=None,
        compute=ray.data.TaskPoolStrategy(size=decode_parallelism(cfg)),
        num_cpus=cfg.cpus_per_decode_task,
    )
    videos = pa.concat_tables(ray.get(probed.to_arrow_refs())).to_pylist()
    report = listing.report
    rows = []
    for video in sorted(videos, key=lambda v: v["source"]):
        if video["reason"]:
            report.add(video["source"], video["reason"], video["detail"], clips=cfg.clips_per_video)
            continue
        if not video["has_audio"]:
            report.silent_videos.add(video["source"])
        for slot, start in enumerate(clip_starts(video["duration"], cfg).tolist()):
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
