"""Evaluate a pretrained checkpoint against its random initialisation.

    python workflows/evaluate.py --checkpoint DIR_OR_CKPT --data SRC --output DIR [--set k=v ...]

``--checkpoint``: a checkpoint folder, or a pretraining output folder (its newest checkpoint).
The config is the checkpoint's own (``--set`` changes it, e.g. ``--set data.clips_per_video=2``),
with clip windows evenly spaced so that evaluating twice gives the same numbers. Writes
``DIR/metrics.json``, ``DIR/embeddings.parquet`` and ``DIR/plots/*.png``, logs them to the
pretraining run in MLflow (``eval/...``) and prints a table: trained vs random baseline.
"""

from __future__ import annotations

from avray import cli, console, preflight
from avray.config import ConfigError
from avray.eval.embed import evaluation_config
from avray.eval.evaluate import evaluate, format_table
from avray.models.loading import check_loadable
from avray.tracking import ui_command


def main(argv=None) -> int:
    p = cli.parser(__doc__)
    p.add_argument("--checkpoint", required=True, help="checkpoint folder, or a pretraining output folder")
    p.add_argument("--batch-size", type=int, default=64, help="clips per embedding batch (default 64)")
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    args = p.parse_args(argv)
    if args.config:
        raise ConfigError("evaluate uses the checkpoint's config: change it with --set, not --config")
    folder, cfg = evaluation_config(args.checkpoint, args.overrides)  # a bad checkpoint or override fails here
    source = preflight.check_job(cfg, data=args.data, output=args.output, track=not args.no_track)
    check_loadable(folder)
    cli.start_ray(args, cfg)
    preflight.check_resources(preflight.decode_ask(cfg))
    result = evaluate(
        args.checkpoint,
        source,
        args.output,
        cfg_overrides=args.overrides,
        track=not args.no_track,
        batch_size=args.batch_size,
    )
    console.say(format_table(result.metrics))
    console.say(f"[avray] metrics, embeddings and plots in {result.output}")
    if result.run_id is not None:
        console.say(f"[avray] MLflow run {result.run_id}: {ui_command(result.tracking_uri)}")
    return 0


if __name__ == "__main__":
    cli.run(main)
