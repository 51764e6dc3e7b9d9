"""Write a demo corpus: real mp4s (H.264 + AAC) of handwritten digits that you can also hear.

    python workflows/make_demo_corpus.py --output data/demo --videos 200 --seed 0 [--kind spoken] [--duration 4]

``--kind spoken`` (default): the digit over clutter while a synthetic voice says it in one
of seven languages, stereo 44.1 kHz at 12 fps (``avray/demo/spoken.py``; the hard corpus).
``--kind tones``: the digit with a tone-pair code, mono 22.05 kHz at 24 fps
(``avray/demo/corpus.py``; easy, for fast tests). Layout ``OUTPUT/<class>/*.mp4`` with
classes 0..9 (labels come from the folder names). The same seed writes byte-identical files.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

try:
    from avray.demo.spoken import CORPORA
except ImportError:  # run from a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from avray.demo.spoken import CORPORA


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, help="folder to write (created if missing)")
    p.add_argument("--videos", type=int, default=200, help="number of videos (default 200)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--kind", choices=sorted(CORPORA), default="spoken", help="spoken digits (default) or tones")
    p.add_argument("--duration", type=float, default=4.0, help="seconds per video (default 4.0, at least 2.6)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: one per CPU)")
    args = p.parse_args(argv)
    if args.videos < 1:
        p.error("--videos must be >= 1")
    if args.duration < 2.6:
        p.error("--duration must be >= 2.6 s (a 2-s clip after the digit's onset)")

    output = Path(args.output)
    print(
        f"writing {args.videos} {args.kind} demo videos ({args.duration:g} s each, seed {args.seed}) to {output}",
        flush=True,
    )
    start = time.perf_counter()
    rows = CORPORA[args.kind](
        output,
        args.videos,
        args.seed,
        duration_s=args.duration,
        workers=args.workers,
        progress=lambda msg: print("  " + msg, flush=True),
    )
    seconds = time.perf_counter() - start
    sizes = [Path(r["path"]).stat().st_size for r in rows]
    per_class = Counter(r["label"] for r in rows)
    print(f"videos per class: {', '.join(f'{c}={per_class[c]}' for c in sorted(per_class))}")
    print(
        f"total {sum(sizes) / 1e6:.2f} MB, {sum(sizes) / len(sizes) / 1e3:.1f} kB per video "
        f"(min {min(sizes) / 1e3:.1f}, max {max(sizes) / 1e3:.1f})"
    )
    print(f"{len(rows)} videos in {seconds:.1f} s ({seconds / len(rows) * 1e3:.0f} ms per video)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
