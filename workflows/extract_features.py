"""Run frozen pretrained encoders over a corpus once and write their features as shards.

    python workflows/extract_features.py --data SRC --output FEATURES --config frozen.yaml
    python workflows/pretrain.py --data FEATURES --output RUN     # trains heads + fusion only
    python workflows/evaluate.py --checkpoint RUN --data TEST_FEATURES --output EVAL

``frozen.video`` / ``frozen.audio`` name each encoder: a TorchScript file, or an architecture
(``avray``, ``torchvision:<name>``, ``torchaudio:<builder>``) and a state dict; local or
s3://. Nothing is downloaded. Batch inference runs on a Ray Data actor pool (one GPU per
actor when the cluster has GPUs). SRC is any corpus or prepared clips.
"""

from __future__ import annotations

from avray import cli, console, preflight
from avray.extract import extract_features


def main(argv=None) -> int:
    args = cli.parser(__doc__).parse_args(argv)
    cfg = cli.load(args)
    source = preflight.check_job(cfg, data=args.data, output=args.output)
    cli.start_ray(args, cfg)
    preflight.check_resources(preflight.decode_ask(cfg))
    extract_features(source, args.output, cfg, progress=lambda msg: console.say(f"[avray] {msg}"))
    return 0


if __name__ == "__main__":
    cli.run(main)
