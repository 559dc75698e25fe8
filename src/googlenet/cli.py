"""The `googlenet` command: summary, train, eval, predict, export, import.

Expected failures (bad config, missing data, unreadable checkpoint) print one line `googlenet: error: ...`
and exit 2 (usage) or 1 (everything else); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys

from googlenet import config as C

log = logging.getLogger("googlenet")


def _add_summary(sub) -> None:
    from googlenet.model import list_models

    p = sub.add_parser("summary", help="per-layer shapes, parameters and MACs beside the paper's Table 1")
    p.add_argument("--model", default="googlenet", choices=list_models())
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--no-aux", action="store_true", help="leave out the auxiliary heads")
    p.set_defaults(func=_cmd_summary)


def _cmd_summary(args: argparse.Namespace) -> int:
    from googlenet.model import create_model
    from googlenet.summary import format_summary

    model = create_model(args.model, aux_logits=not args.no_aux)
    print(format_summary(model, args.img_size))
    return 0


def _add_train(sub) -> None:
    from googlenet.train import TrainConfig

    p = sub.add_parser("train", help="train from scratch (Fashion-MNIST or an image folder); torchrun-ready")
    p.add_argument("--config", help=f"recipe: a TOML file or one of {', '.join(C.list_recipes())}")
    C.add_arguments(p, TrainConfig)
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from googlenet import train

    overrides = C.overrides_from_args(args, train.TrainConfig)
    if overrides.get("resume"):
        if args.config:
            raise C.ConfigError("--resume continues with the run's own config; drop --config")
        cfg = C.resolve(train.TrainConfig, None, train.resume_config(overrides["resume"], overrides))
    else:
        cfg = C.resolve(train.TrainConfig, args.config, overrides)
    metrics = train.run(cfg)
    if metrics:
        print(f"final: epoch {metrics['epoch']}  val top1 {metrics['val_top1']:.2f}%  "
              f"top5 {metrics['val_top5']:.2f}%  run folder {cfg.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="googlenet", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_summary(sub)
    _add_train(sub)
    for extra in _EXTRA_COMMANDS:
        extra(sub)
    return parser


_EXTRA_COMMANDS: list = []


def _expected_errors() -> tuple[type[BaseException], ...]:
    from googlenet.checkpoint import CheckpointError
    from googlenet.data import DataError
    from googlenet.train import TrainingDiverged

    return (C.ConfigError, DataError, CheckpointError, TrainingDiverged, FileNotFoundError, ValueError)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return args.func(args)
    except _expected_errors() as e:
        if args.debug:
            raise
        print(f"googlenet: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
