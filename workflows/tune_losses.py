"""Search the loss mixture's weights λ with Ray Tune ("evolving losses", ELo).

    python workflows/tune_losses.py --data SRC --output DIR [--config YAML] [--set tune.num_samples=8 ...]

Each trial runs the pretraining loop with its own λ (one per enabled objective, in [0, 1]) and is
scored every epoch by ELo's label-free Zipf fitness on held-out clips (``tune.fitness: knn``
uses kNN accuracy where labels exist). ``tune.scheduler``: pbt (default), pb2, asha, fifo;
``tune.search_alg``: random, optuna, hyperopt (with asha/fifo). Prepare clips first
(workflows/prepare.py): every trial reads them every epoch. On a cluster:

    ray job submit --working-dir . -- python workflows/tune_losses.py --data s3://.../clips --output s3://...

Re-running the same command resumes an interrupted sweep (Tuner.restore). Writes the trials
table and the best mixture (DIR/best_mixture.yaml, a config for pretrain.py) and logs a parent
MLflow run with a child run per trial.
"""

from __future__ import annotations

from avray import cli, console, preflight
from avray.tracking import ui_command
from avray.tune import check_resumable, format_table, tune_losses


def main(argv=None) -> int:
    args = cli.parser(__doc__).parse_args(argv)
    cfg = cli.load(args)
    source = preflight.check_job(cfg, data=args.data, output=args.output, track=True)
    check_resumable(cfg, args.output)
    cli.start_ray(args, cfg)
    preflight.check_resources(preflight.trial_ask(cfg), preflight.decode_ask(cfg))
    result = tune_losses(cfg, source, args.output)
    console.say("[avray] trials, best first:\n" + format_table(result))
    best = result.best
    console.say(
        f"[avray] best mixture: trial {best['trial']}, {result.metric} {best['final_fitness']:.4f}; "
        f"checkpoint {best['checkpoint']}"
    )
    console.say(
        f"[avray] pretrain with it: python workflows/pretrain.py --config {result.best_config_path} "
        f"--data {args.data} --output ..."
    )
    console.say(
        f"[avray] evaluate it: python workflows/evaluate.py --checkpoint {best['checkpoint']} --data ... --output ..."
    )
    console.say(f"[avray] MLflow sweep run {result.parent_run_id}: {ui_command(result.tracking_uri)}")
    return 0


if __name__ == "__main__":
    cli.run(main)
