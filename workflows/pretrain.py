"""Pretrain audio and video encoders and a fused embedding on a video corpus.

    python workflows/pretrain.py --data SRC --output DIR [--config YAML] [--set k=v ...]

Locally this starts an embedded Ray sized to the machine and logs to MLflow in
``sqlite:///DIR/mlflow.db`` (unless ``MLFLOW_TRACKING_URI`` is set). On a cluster:

    ray job submit --working-dir . -- python workflows/pretrain.py --data s3://... --output s3://...

Re-running the same command resumes from the last checkpoint.
"""

from __future__ import annotations

from avray import cli, console, preflight
from avray.tracking import ui_command
from avray.train.trainer import pretrain


def main(argv=None) -> int:
    args = cli.parser(__doc__).parse_args(argv)
    cfg = cli.load(args)
    source = preflight.check_job(cfg, data=args.data, output=args.output, track=True)
    cli.start_ray(args, cfg)
    preflight.check_resources(preflight.training_ask(cfg), preflight.decode_ask(cfg))
    result = pretrain(cfg, source, args.output)
    final = {k: v for k, v in result.metrics.items() if k.startswith(("loss", "val/", "clips_per_s"))}
    console.say("[avray] done: " + "  ".join(f"{k} {v:.4f}" for k, v in sorted(final.items()) if isinstance(v, float)))
    console.say(f"[avray] checkpoint: {result.checkpoint}")
    console.say("[avray] " + result.skipped.summary().replace("\n", "\n[avray] "))
    if result.tracker is not None:
        console.say(f"[avray] MLflow run {result.tracker.run_id}: {ui_command(result.tracker.uri)}")
    return 0


if __name__ == "__main__":
    cli.run(main)
