"""Materialise a corpus as clip-row parquet shards (local or s3://) that training re-reads.

    python workflows/prepare.py --data videos/ --output clips/ [--set data.clips_per_video=8]
"""

from __future__ import annotations

import sys
import time

from avray import cli
from avray.data.pipeline import build_clip_index, count_prepared, decode_dataset, write_prepared


def main(argv=None) -> int:
    args = cli.parser(__doc__).parse_args(argv)
    cfg = cli.load(args)
    cli.init_ray(args.ray_address)
    start = time.perf_counter()
    index = build_clip_index(args.data, cfg.data)
    print(f"indexed {index.num_videos} videos -> {index.clips.num_rows} clips in {time.perf_counter() - start:.1f} s")
    clips = decode_dataset(index, cfg.data)
    report = write_prepared(clips, args.output, cfg.data)
    print(f"wrote {count_prepared(args.output, cfg.data)} clips to {args.output} in {time.perf_counter() - start:.1f} s")
    print(report.summary())
    return 0


if __name__ == "__main__":
    cli.run(main)
