"""The main job end to end on the embedded default: ``make demo``.

    python workflows/demo.py --output runs/demo [--videos 1000] [--test-videos 300] [--set k=v ...]

1. builds the demo corpus (real mp4s of handwritten digits with matching sounds) and a
   held-out one from another seed, which pretraining never sees;
2. streams the corpus through the Ray Data pipeline into prepared clip shards, printing
   clip counts, skipped files and throughput;
3. pretrains on them with Ray Train (``workflows/configs/demo.yaml``), logging to MLflow;
4. evaluates the checkpoint on the held-out corpus against its random initialisation and
   prints the table.

Every step reuses what a previous run finished, so re-running picks up where it stopped.
"""

from __future__ import annotations

import time
from pathlib import Path

from avray import cli, preflight
from avray.data.pipeline import prepare
from avray.data.shards import count_prepared
from avray.data.shards import resolve_source
from avray.demo.corpus import make_demo_corpus
from avray.eval.evaluate import evaluate, format_table
from avray.tracking import ui_command
from avray.train.trainer import pretrain

DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "demo.yaml"
COMPLETE = ".complete"


def build_corpus(folder: Path, videos: int, seed: int) -> None:
    if (folder / COMPLETE).exists():
        print(f"  reusing {folder}")
        return
    start = time.perf_counter()
    make_demo_corpus(folder, videos=videos, seed=seed, progress=lambda msg: print("  " + msg, flush=True))
    (folder / COMPLETE).touch()
    print(f"  {videos} videos in {time.perf_counter() - start:.1f} s")


def main(argv=None) -> int:
    p = cli.parser(__doc__, data=False)
    p.add_argument("--videos", type=int, default=1000, help="training corpus size (default 1000)")
    p.add_argument("--test-videos", type=int, default=300, help="held-out corpus size (default 300)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(config=str(DEMO_CONFIG))
    args = p.parse_args(argv)
    cfg = cli.load(args)
    preflight.check_job(cfg, output=args.output, track=True)
    output = Path(args.output)
    corpus, held_out, clips = output / "corpus", output / "test-corpus", output / "clips"
    started = time.perf_counter()

    print(f"[1/4] demo corpora: {args.videos} videos to train on, {args.test_videos} held out", flush=True)
    build_corpus(corpus, args.videos, args.seed)
    build_corpus(held_out, args.test_videos, args.seed + 1)

    cli.init_ray(args.ray_address)
    print(f"[2/4] streaming {corpus} through the Ray Data pipeline into {clips}", flush=True)
    if resolve_source(str(clips)).prepared:
        print(f"  reusing {count_prepared(str(clips), cfg.data)} prepared clips")
    else:
        prepare(str(corpus), str(clips), cfg.data, progress=lambda msg: print("  " + msg.replace("\n", "\n  "), flush=True))

    print(f"[3/4] pretraining for {cfg.train.epochs} epochs", flush=True)
    result = pretrain(cfg, str(clips), str(output / "pretrain"))

    print(f"[4/4] evaluating on the held-out corpus ({held_out})", flush=True)
    evaluation = evaluate(result.checkpoint, str(held_out), output / "eval")
    print(format_table(evaluation.metrics))
    print(f"[avray] demo done in {time.perf_counter() - started:.0f} s; metrics and plots in {output / 'eval'}")
    if result.tracker is not None:
        print(f"[avray] MLflow: {ui_command(result.tracker.uri)}")
    return 0


if __name__ == "__main__":
    cli.run(main)
