"""Export the embeddings of every clip of a corpus with a pretrained checkpoint.

    python workflows/embed.py --checkpoint DIR_OR_CKPT --data SRC --output PATH [--set k=v ...]

Writes parquet files under ``PATH`` (local or s3://): one row per clip with ``clip_id``,
``source``, ``start``, ``label`` and the float32 embeddings ``audio``, ``video``, ``fused``.
Embedding runs on a Ray Data actor pool, one GPU per actor when the cluster has GPUs.
"""

from __future__ import annotations

import time

from avray import cli, console, preflight
from avray.config import ConfigError
from avray.data.pipeline import load_clips
from avray.data.shards import check_inputs
from avray.eval.embed import (
    ModelSpec,
    count_embeddings,
    embed_dataset,
    evaluation_config,
    write_embeddings,
)
from avray.models.loading import check_loadable


def main(argv=None) -> int:
    p = cli.parser(__doc__)
    p.add_argument("--checkpoint", required=True, help="checkpoint folder, or a pretraining output folder")
    p.add_argument("--batch-size", type=int, default=64, help="clips per embedding batch (default 64)")
    args = p.parse_args(argv)
    if args.config:
        raise ConfigError("embed uses the checkpoint's config: change it with --set, not --config")
    folder, cfg = evaluation_config(args.checkpoint, args.overrides)
    source = preflight.check_job(cfg, data=args.data, output=args.output)
    check_inputs(cfg, source)
    check_loadable(folder)
    cli.start_ray(args, cfg)
    preflight.check_resources(preflight.decode_ask(cfg))
    start = time.perf_counter()
    clips = load_clips(source, cfg.data)
    with console.bar("embed", "embedding", total=clips.expected):
        write_embeddings(
            embed_dataset(clips.dataset, ModelSpec.trained(folder), batch_size=args.batch_size),
            args.output,
            cfg.data.endpoint_override,
        )
    rows = count_embeddings(args.output, cfg.data.endpoint_override)
    console.say(f"[avray] wrote embeddings of {rows} clips to {args.output} in {time.perf_counter() - start:.1f} s")
    console.say("[avray] " + clips.report().summary().replace("\n", "\n[avray] "))
    return 0


if __name__ == "__main__":
    cli.run(main)
