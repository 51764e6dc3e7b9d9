"""Ingest benchmark: the same clips decoded three ways in one run.

    (a) a single-process PyAV loop            (what a script does)
    (b) torch DataLoader, num_workers = cores (what a user would pick instead)
    (c) the avray Ray Data pipeline           (streaming, one decode slot per core)

(a) and (b) decode clip by clip with ``avray.data.decode.decode_clip``, as a script or a
map-style dataset of clips does. (c) decodes each video's clips together in one pass
(``decode_clips_of_video``: a clip by itself is exactly the same arrays); as well as the
pipeline's execution, that is part of what c/a and c/b measure. (d), printed for
reference, is a DataLoader over videos calling ``decode_clips_of_video``: the same
decoding without Ray, which tells the two gains apart.

Prints clips/s for each, the ratios c/a and c/b, the pipeline's peak memory (PSS of
the driver plus every Ray process, sampled in a pass of its own: reading PSS costs the CPU
being measured), and where the CPU went during (c) and (d): the share of time the cores sat
idle, and (c)'s CPU seconds in the driver, in Ray's workers (decoding) and in Ray's other
processes. ``--scale 10`` repeats (c) on a corpus 10x larger and prints the memory ratio:
a streaming pipeline's memory must not grow with the corpus.

Each way runs once per round (``--rounds``, 3 by default), all ways in turn, and the
figures are each way's median: on a shared machine the speed drifts within minutes.

    python workflows/bench_ingest.py --videos 200 [--scale 10] [--rounds 3] [--json bench.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import torch
from torch.utils.data import DataLoader, Dataset

from avray import cli, console
from avray.config import DataConfig
from avray.data.decode import decode_clip, decode_clips_of_video
from avray.data.index import build_clip_index
from avray.data.pipeline import decode_dataset
from avray.demo.corpus import make_demo_corpus
from avray.demo.throughput import ResourceMonitor, consume

BATCH = 16


class ClipDataset(Dataset):
    def __init__(self, clips: list[tuple[str, float]], cfg: DataConfig):
        self.clips, self.cfg = clips, cfg

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict:
        clip = decode_clip(*self.clips[i], self.cfg)
        return {"video": torch.from_numpy(clip.video), "audio": torch.from_numpy(clip.audio)}


class VideoDataset(Dataset):
    """(d): one item per video, holding all its clips."""

    def __init__(self, clips: list[tuple[str, float]], cfg: DataConfig):
        self.videos: dict[str, list[float]] = {}
        for source, start in clips:
            self.videos.setdefault(source, []).append(start)
        self.sources, self.cfg = list(self.videos), cfg

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> dict:
        clips = decode_clips_of_video(self.sources[i], self.videos[self.sources[i]], self.cfg)
        return {
            "video": torch.from_numpy(np.stack([c.video for c in clips])),
            "audio": torch.from_numpy(np.stack([c.audio for c in clips])),
        }


def bench_pyav(clips, cfg: DataConfig) -> float:
    start = time.perf_counter()
    for source, t in clips:
        decode_clip(source, t, cfg)
    return len(clips) / (time.perf_counter() - start)


def bench_dataloader(dataset: Dataset, total_clips: int, workers: int, batch_size: int | None = BATCH) -> float:
    """Clips/s of a DataLoader over ``dataset``: batches of clips, or (``batch_size=None``)
    one video's clips at a time."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    start, n = time.perf_counter(), 0
    for batch in loader:
        n += batch["video"].shape[0]
    assert n == total_clips, (n, total_clips)
    return n / (time.perf_counter() - start)


def bench_avray(index, cfg: DataConfig, memory: bool) -> tuple[float, ResourceMonitor]:
    """Clips/s of the pipeline and what it used; sampling ``memory`` costs CPU (see
    ResourceMonitor), so speed and memory are measured in separate passes."""
    with ResourceMonitor(memory=memory) as monitor:
        stats = consume(decode_dataset(index, cfg).dataset, batch_size=BATCH)
    assert stats.clips == index.clips.num_rows, (stats.clips, index.clips.num_rows)
    return stats.clips_per_s, monitor


def corpus(root: Path, videos: int, seed: int) -> str:
    if not (root / "done").exists():
        console.say(f"generating {videos} demo videos in {root} ...")
        make_demo_corpus(root, videos=videos, seed=seed)
        (root / "done").touch()
    return str(root)


def one_round(index, clips: list[tuple[str, float]], cfg: DataConfig, cores: int) -> tuple[dict, dict]:
    """Clips/s of every way, one after the other, and what (c) and (d) used (ResourceMonitor)."""
    # The DataLoaders fork their workers: forked from a process connected to Ray (token auth,
    # Ray >= 2.60's default), the driver's gRPC channel broke ("Missing :authority header") and
    # the next Ray call hung. They run with Ray shut down; it starts again for (c).
    ray.shutdown()
    rates, use = {}, {}
    rates["pyav"] = bench_pyav(clips, cfg)
    rates["dataloader"] = bench_dataloader(ClipDataset(clips, cfg), len(clips), workers=cores)
    with ResourceMonitor(memory=False) as use["dataloader_per_video"]:
        rates["dataloader_per_video"] = bench_dataloader(
            VideoDataset(clips, cfg), len(clips), workers=cores, batch_size=None
        )
    cli.init_ray(None, num_cpus=cores)
    consume(decode_dataset(index, cfg).dataset.limit(4 * BATCH))  # warm Ray's worker pool
    rates["avray"], use["avray"] = bench_avray(index, cfg, memory=False)
    return rates, use


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=200)
    p.add_argument("--scale", type=int, default=1, help="also run the pipeline on a corpus this many times larger")
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of all the ways in turn; the figures are each way's median over them",
    )
    p.add_argument("--workdir", default=None, help="where corpora are generated (reused if present)")
    p.add_argument("--json", dest="json_path", default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be >= 1")

    cores = os.cpu_count() or 1
    cfg = DataConfig(decode_concurrency=cores)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="avray-bench-"))
    cli.init_ray(None, num_cpus=cores)

    data = corpus(workdir / f"corpus-{args.videos}", args.videos, args.seed)
    index = build_clip_index(data, cfg)
    clips = list(zip(index.clips.column("source").to_pylist(), index.clips.column("start").to_pylist()))
    console.say(f"{len(clips)} clips from {index.num_videos} videos; {cores} cores; {args.rounds} round(s)")

    bench_pyav(clips[: 4 * BATCH], cfg)  # warm the page cache so no method pays a first-run cost
    # Rounds, each way in turn: on a shared machine the speed drifts by tens of percent within
    # minutes, and a drift would otherwise fall on whichever way ran then.
    rounds = []
    for number in range(1, args.rounds + 1):
        rates, use = one_round(index, clips, cfg, cores)
        rounds.append(
            {
                "clips_per_s": rates,
                "idle_fraction": {way: u.idle_fraction for way, u in use.items()},
                "avray_cpu_seconds": use["avray"].cpu_seconds,
            }
        )
        # Where the cores went: (c) against (d) is decoding against Ray's own processes and idle cores.
        console.say(
            f"round {number}: (a) {rates['pyav']:.1f}  (b) {rates['dataloader']:.1f}  (c) {rates['avray']:.1f}  "
            f"(d) {rates['dataloader_per_video']:.1f} clips/s; cores idle (c) {use['avray'].idle_fraction:.0%}, "
            f"(d) {use['dataloader_per_video'].idle_fraction:.0%}; (c)'s CPU seconds: "
            + ", ".join(f"{kind} {seconds:.1f}" for kind, seconds in sorted(use["avray"].cpu_seconds.items())),
        )
    median = {way: statistics.median(r["clips_per_s"][way] for r in rounds) for way in rounds[0]["clips_per_s"]}
    sampled_rate, sampled = bench_avray(index, cfg, memory=True)
    peak_mb = sampled.peak_mb
    figures = {
        "clips_per_s": {way: median[way] for way in ("pyav", "dataloader", "avray")},
        "ratio": {
            "avray_vs_pyav": median["avray"] / median["pyav"],
            "avray_vs_dataloader": median["avray"] / median["dataloader"],
        },
        "peak_rss_mb": peak_mb,
        "memory_ratio_10x": None,
        "reference_clips_per_s": {"dataloader_per_video": median["dataloader_per_video"]},
        "avray_clips_per_s_while_sampling_memory": sampled_rate,
        "rounds": rounds,
    }
    console.say(f"median of {args.rounds} round(s):")
    console.say(f"(a) single-process PyAV : {median['pyav']:8.1f} clips/s")
    console.say(f"(b) DataLoader x{cores}       : {median['dataloader']:8.1f} clips/s")
    console.say(f"(c) avray Ray Data      : {median['avray']:8.1f} clips/s")
    reference = median["dataloader_per_video"]
    console.say(f"(d) DataLoader x{cores}, a video's clips in one pass: {reference:8.1f} clips/s (reference)")
    console.say(
        f"ratio c/a = {figures['ratio']['avray_vs_pyav']:.2f}   "
        f"ratio c/b = {figures['ratio']['avray_vs_dataloader']:.2f}   (c/d = {median['avray'] / reference:.2f})"
    )
    console.say(
        f"pipeline peak memory (PSS, driver + Ray): {peak_mb:.0f} MB, in a pass of its own ({sampled_rate:.1f} clips/s "
        f"while sampling)"
    )

    if args.scale > 1:
        big = corpus(workdir / f"corpus-{args.videos * args.scale}", args.videos * args.scale, args.seed + 1)
        big_index = build_clip_index(big, cfg)
        big_rate, big_use = bench_avray(big_index, cfg, memory=True)
        big_peak = big_use.peak_mb
        figures["memory_ratio_10x" if args.scale == 10 else f"memory_ratio_{args.scale}x"] = big_peak / peak_mb
        console.say(
            f"x{args.scale}: {big_index.clips.num_rows} clips, {big_rate:.1f} clips/s while sampling memory, "
            f"peak {big_peak:.0f} MB, memory ratio {big_peak / peak_mb:.2f}"
        )
    return cli.finish_benchmark(figures, args.json_path)


if __name__ == "__main__":
    cli.run(main)
