"""Quality benchmark: does the default recipe learn what links the streams?

    python workflows/bench_quality.py [--workdir DIR] [--videos 1000] [--test-videos 300] [--set k=v ...] [--json PATH]

Builds a spoken-digit training corpus and a held-out one from another seed
(avray/demo/spoken.py: only the digit links picture and sound; voices, languages, rooms,
noise, loudness, colours, textures and distractors are drawn per video), pretrains with the
default config (``--config``/``--set`` change it, for ablations) without labels, evaluates on
the held-out corpus, and prints the trained figures against the random-weight baseline and
the wall time of each step. ``--workdir`` keeps corpora and clips for the next run (the
pretraining and evaluation are always fresh).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from avray import cli, console, preflight
from avray.demo.quality import headline_table, quality_run


def main(argv=None) -> int:
    p = cli.parser(__doc__, data=False, output=False)
    p.add_argument("--workdir", default=None, help="keeps corpora and prepared clips between runs")
    p.add_argument("--videos", type=int, default=1000, help="training corpus size (default 1000)")
    p.add_argument("--test-videos", type=int, default=300, help="held-out corpus size (default 300)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the figures here too")
    args = p.parse_args(argv)
    cfg = cli.load(args)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="avray-bench-quality-"))
    preflight.check_job(cfg, output=str(workdir), track=False)
    for fresh in ("pretrain", "eval"):
        shutil.rmtree(workdir / fresh, ignore_errors=True)
    started = time.perf_counter()
    cli.start_ray(args, cfg)
    result = quality_run(
        cfg,
        workdir,
        kind="spoken",
        videos=args.videos,
        test_videos=args.test_videos,
        seed=args.seed,
        say=console.say,
    )
    total = time.perf_counter() - started
    console.say(headline_table(result.metrics))
    steps = ", ".join(f"{step} {seconds:.0f} s" for step, seconds in result.seconds.items())
    console.say(f"wall time: {steps}; total {total:.0f} s")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"metrics": result.metrics, "seconds": result.seconds, "overrides": list(args.overrides)}, indent=2
            )
        )
    return 0


if __name__ == "__main__":
    cli.run(main)
