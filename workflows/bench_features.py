"""Frozen-encoder benchmark: a training epoch from features against one from pixels, in one run.

On the same prepared demo clips, with the same global batch and the same Ray Train loop:
(a) pretraining from pixels (both encoders, heads and fusion train); (b) extracting the
features of frozen encoders once (``workflows/extract_features.py``; here avray's own default
encoders with random weights stand in for pretrained ones: the cost does not depend on the
weights), then training heads and fusion on them. Prints seconds per epoch (epochs after the
first) of each, their ratio a/b, and the one-off extraction time.

    python workflows/bench_features.py [--videos 100] [--epochs 3] [--json bench_features.json]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from avray import cli, console
from avray.config import load_config
from avray.demo.corpus import prepared_demo_clips
from avray.extract import extract_features
from avray.models import AudioEncoder, VideoEncoder
from avray.train.trainer import pretrain


def seconds_per_epoch(history: list[dict]) -> float:
    later = [h["epoch_seconds"] for h in history if h["epoch"] > 1]
    return sum(later) / len(later)


def save_stand_in_encoders(cfg, folder: Path) -> list[str]:
    """avray's default encoders, randomly initialised: video as TorchScript, audio as a state dict."""
    torch.manual_seed(cfg.train.seed)
    video = VideoEncoder(cfg.model).eval()
    clip = torch.zeros(2, cfg.data.num_frames, cfg.data.frame_size, cfg.data.frame_size, 3, dtype=torch.uint8)
    torch.jit.trace(video, clip).save(str(folder / "video.ts"))
    torch.save(AudioEncoder(cfg.model, cfg.data.sample_rate).state_dict(), folder / "audio.pt")
    return [
        f"frozen.video.path={folder / 'video.ts'}",
        "frozen.video.layout=BTHWC",
        "frozen.video.normalize=false",
        f"frozen.audio.path={folder / 'audio.pt'}",
        "frozen.audio.architecture=avray",
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=100)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--workdir", default=None)
    p.add_argument("--json", dest="json_path", default=None)
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error("--epochs must be >= 2 (the first epoch is excluded)")

    cores = os.cpu_count() or 1
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="avray-bench-features-"))
    settings = [
        f"train.epochs={args.epochs}",
        "train.num_workers=1",
        f"train.threads_per_worker={cores}",
        "data.val_fraction=0",
        "train.warmup_epochs=0",
    ]
    cfg = load_config(None, settings)
    cli.init_ray(None)
    prepared = prepared_demo_clips(workdir, args.videos, cfg.data)
    frozen = load_config(None, [*settings, *save_stand_in_encoders(cfg, workdir)])

    pixels = pretrain(cfg, str(prepared), str(workdir / "from-pixels"), track=False)
    start = time.perf_counter()
    extract_features(str(prepared), str(workdir / "features"), frozen)
    extraction = time.perf_counter() - start
    features = pretrain(cfg, str(workdir / "features"), str(workdir / "from-features"), track=False)

    a, b = seconds_per_epoch(pixels.history), seconds_per_epoch(features.history)
    figures = {
        "seconds_per_epoch": {"pixels": a, "features": b},
        "ratio": {"pixels_vs_features": a / b},
        "extraction_seconds": extraction,
    }
    console.say(f"{args.videos} videos, global batch {cfg.train.batch_size}, {args.epochs} epochs, {cores} cores")
    console.say(f"(a) epoch from pixels (encoders + fusion train) : {a:8.2f} s")
    console.say(f"(b) epoch from frozen features (fusion trains)  : {b:8.2f} s")
    console.say(f"ratio a/b = {a / b:.1f}   (one-off feature extraction: {extraction:.1f} s)")
    return cli.finish_benchmark(figures, args.json_path)


if __name__ == "__main__":
    cli.run(main)
