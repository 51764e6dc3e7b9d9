"""Training benchmark: the Ray Train loop against a plain PyTorch loop, in one run.

Both train the same model with the same global batch for the same number of steps on the
same clips, decoded once beforehand (``prepare``): (a) a plain single-process loop over
clips held in memory as tensors; avray's Ray Train loop, its worker iterating its Ray Data
shard of the prepared clips, (b) read once into Ray's object store (the default,
``train.cache_clips: auto``) and (c) read from parquet every epoch. The ratio b/a
is what Ray and the data plane cost.

Resources are matched: the plain loop uses every core for PyTorch, and so does the Ray
worker (``train.threads_per_worker``), while Ray Data reads the shards beside it, as data
tasks on a GPU node use the CPUs that training leaves free.

    python workflows/bench_train.py [--videos 100] [--epochs 3] [--json bench_train.json]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from avray import cli, console
from avray.config import load_config, with_overrides
from avray.data.pipeline import load_clips
from avray.demo.corpus import prepared_demo_clips
from avray.models import build_model
from avray.models.augment import Augmenter
from avray.objectives import LossMixture
from avray.train.trainer import pretrain


def plain_loop(cfg, clips: dict[str, np.ndarray], epochs: int) -> float:
    """clips/s of a single-process loop over in-memory tensors (the same step as avray's)."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, cfg.data, cfg.augment)
    mixture = LossMixture.from_config(cfg.objectives, model.output_dims)
    augmenter = Augmenter(cfg.augment, cfg.data)
    params = list(model.parameters()) + list(mixture.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    video, audio = torch.from_numpy(clips["video"]), torch.from_numpy(clips["audio"])
    batch = cfg.train.batch_size
    steps = len(video) // batch
    seen, elapsed = 0, 0.0
    for epoch in range(epochs):
        order = torch.randperm(len(video))
        start = time.perf_counter()
        for step in range(steps):
            idx = order[step * batch : (step + 1) * batch]
            ((view_video, view_audio),) = augmenter.views(video[idx], audio[idx], 1, epoch * steps + step)
            result = mixture(model(view_video, view_audio))
            optimizer.zero_grad(set_to_none=True)
            result.total.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
            optimizer.step()
            seen += batch
        if epoch > 0:  # the first epoch warms up allocators and caches, as Ray's does
            elapsed += time.perf_counter() - start
    return seen * (epochs - 1) / epochs / elapsed


def ray_train_rate(cfg, prepared: Path, output: Path) -> float:
    """clips/s of avray's Ray Train loop, with the plain loop's accounting: epochs after the first."""
    result = pretrain(cfg, str(prepared), str(output), track=False)
    later = [h for h in result.history if h["epoch"] > 1]
    return sum(h["clips_per_s"] * h["epoch_seconds"] for h in later) / sum(h["epoch_seconds"] for h in later)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=100)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--workdir", default=None)
    p.add_argument("--json", dest="json_path", default=None)
    args = p.parse_args(argv)

    cores = os.cpu_count() or 1
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="avray-bench-train-"))
    cfg = load_config(
        None,
        [
            f"train.epochs={args.epochs}",
            "train.num_workers=1",
            f"train.threads_per_worker={cores}",
            "data.val_fraction=0",
            "train.warmup_epochs=0",
        ],
    )
    torch.set_num_threads(cores)
    cli.init_ray(None)
    prepared = prepared_demo_clips(workdir, args.videos, cfg.data)
    rows = load_clips(str(prepared), cfg.data).dataset.take_all()
    clips = {k: np.stack([r[k] for r in rows]) for k in ("video", "audio")}
    console.say(f"{len(rows)} clips, global batch {cfg.train.batch_size}, {args.epochs} epochs, {cores} cores")

    plain = plain_loop(cfg, clips, args.epochs)
    cached = ray_train_rate(cfg, prepared, workdir / "ray-train-cached")
    streaming = ray_train_rate(
        with_overrides(cfg, {"train.cache_clips": "never"}), prepared, workdir / "ray-train-streaming"
    )
    figures = {
        "clips_per_s": {"ray_train": cached, "plain": plain, "ray_train_streaming": streaming},
        "ratio": {"ray_train_vs_plain": cached / plain, "ray_train_streaming_vs_plain": streaming / plain},
    }
    console.say(f"(a) plain PyTorch loop, in-memory clips                : {plain:8.1f} clips/s")
    console.say(f"(b) Ray Train + Ray Data, clips cached (default)        : {cached:8.1f} clips/s")
    console.say(f"(c) Ray Train + Ray Data, parquet streamed every epoch : {streaming:8.1f} clips/s")
    console.say(f"ratio b/a = {cached / plain:.2f}   c/a = {streaming / plain:.2f}")
    return cli.finish_benchmark(figures, args.json_path)


if __name__ == "__main__":
    cli.run(main)
