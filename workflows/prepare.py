"""Materialise a corpus as clip-row parquet shards (local or s3://) that training re-reads.

python workflows/prepare.py --data videos/ --output clips/ [--set data.clips_per_video=8]
"""

from __future__ import annotations

from avray import cli, preflight
from avray.data.pipeline import prepare


def main(argv=None) -> int:
    args = cli.parser(__doc__).parse_args(argv)
    cfg = cli.load(args)
    preflight.check_job(cfg, data=args.data, output=args.output)
    cli.start_ray(args, cfg)
    preflight.check_resources(preflight.decode_ask(cfg))
    prepare(args.data, args.output, cfg.data)
    return 0


if __name__ == "__main__":
    cli.run(main)
