"""The main job end to end on the embedded default: ``make demo``.

Builds the demo corpus (real mp4s of handwritten digits with matching sounds), then
streams it through the avray data pipeline, printing clip counts, skipped files and
throughput.

    python workflows/demo.py --output runs/demo [--videos 200]
"""

from __future__ import annotations

import time
from pathlib import Path

from avray import cli
from avray.data.demo_corpus import make_demo_corpus
from avray.data.pipeline import load_clips
from avray.data.throughput import consume


def main(argv=None) -> int:
    p = cli.parser(__doc__, data=False)
    p.add_argument("--videos", type=int, default=200, help="demo corpus size (default 200)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    cfg = cli.load(args)
    output = Path(args.output)
    corpus = output / "corpus"
    if (corpus / ".complete").exists():
        print(f"[1/2] demo corpus: reusing {corpus}")
    else:
        print(f"[1/2] demo corpus: writing {args.videos} videos to {corpus}", flush=True)
        start = time.perf_counter()
        make_demo_corpus(corpus, videos=args.videos, seed=args.seed, progress=lambda msg: print("  " + msg, flush=True))
        (corpus / ".complete").touch()
        print(f"  done in {time.perf_counter() - start:.1f} s")

    cli.init_ray(args.ray_address)
    print("[2/2] streaming the corpus through the Ray Data pipeline", flush=True)
    start = time.perf_counter()
    clips = load_clips(str(corpus), cfg.data)
    indexed = time.perf_counter() - start
    stats = consume(clips.dataset, progress=print)
    report = clips.report()
    print(f"  index: {clips.index.num_videos} videos -> {clips.index.clips.num_rows} clips in {indexed:.1f} s")
    print(f"  decoded {stats.clips} clips in {stats.seconds:.1f} s = {stats.clips_per_s:.1f} clips/s")
    print(f"  clips per label: {dict(sorted(stats.labels.items()))}")
    print("  " + report.summary().replace("\n", "\n  "))
    return 0


if __name__ == "__main__":
    cli.run(main)
