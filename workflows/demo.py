"""The main job end to end on the embedded default: ``make demo``.

    python workflows/demo.py --output runs/demo [--videos 600] [--test-videos 200] [--corpus spoken] [--set k=v ...]

1. builds the spoken-digit corpus (real mp4s: a handwritten digit over clutter while a
   synthetic voice says it, in one of seven languages; avray/demo/spoken.py) and a held-out
   one from another seed, which pretraining never sees;
2. streams the corpus through the Ray Data pipeline into prepared clip shards, printing
   clip counts, skipped files and throughput;
3. pretrains on them with Ray Train, without labels (the default recipe with the shorter
   schedule of ``workflows/configs/demo.yaml``), logging to MLflow;
4. evaluates the checkpoint on the held-out corpus against its random initialisation and
   prints the table (``workflows/bench_quality.py`` is the same run at the full budget).

Every step reuses what a previous run finished, so re-running picks up where it stopped.
"""

from __future__ import annotations

import time
from pathlib import Path

from avray import cli, console, preflight
from avray.demo.quality import CORPORA, headline_table, quality_run
from avray.eval.evaluate import format_table
from avray.tracking import ui_command

DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "demo.yaml"


def main(argv=None) -> int:
    p = cli.parser(__doc__, data=False)
    p.add_argument("--videos", type=int, default=600, help="training corpus size (default 600)")
    p.add_argument("--test-videos", type=int, default=200, help="held-out corpus size (default 200)")
    p.add_argument(
        "--corpus",
        choices=sorted(CORPORA),
        default="spoken",
        help="spoken digits (default) or the easier tone-coded digits",
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(config=str(DEMO_CONFIG))
    args = p.parse_args(argv)
    cfg = cli.load(args)
    preflight.check_job(cfg, output=args.output, track=True)
    started = time.perf_counter()
    cli.start_ray(args, cfg)
    preflight.check_resources(preflight.training_ask(cfg), preflight.decode_ask(cfg))
    result = quality_run(
        cfg,
        Path(args.output),
        kind=args.corpus,
        videos=args.videos,
        test_videos=args.test_videos,
        seed=args.seed,
        say=console.say,
    )
    console.say(format_table(result.metrics))
    console.say(headline_table(result.metrics))
    elapsed = time.perf_counter() - started
    console.say(f"[avray] demo done in {elapsed:.0f} s; metrics and plots in {Path(args.output) / 'eval'}")
    if result.pretrain.tracker is not None:
        console.say(f"[avray] MLflow: {ui_command(result.pretrain.tracker.uri)}")
    return 0


if __name__ == "__main__":
    cli.run(main)
