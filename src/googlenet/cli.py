"""The `googlenet` command: summary, train, prepare, eval, predict, features, export, serve, import,
dream, visualize, explain.

Every command reads one typed config (a dataclass in the command's module): its fields are the command's
flags, and ``--config FILE.toml`` supplies any of them from a file (flags win; unknown keys are errors).
Expected failures (bad config, missing data, unreadable checkpoint) print one line `googlenet: error: ...`
and exit 2 (usage) or 1 (everything else); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from googlenet import config as C
from googlenet import processes
from googlenet.dream import DreamConfig, run_dream
from googlenet.evaluate import EvalConfig, run_eval
from googlenet.explain import ExplainConfig, run_explain
from googlenet.export import ExportConfig, run_export
from googlenet.features import FeaturesConfig, run_features
from googlenet.pack import PrepareConfig, run_prepare
from googlenet.predict import PredictConfig, run_predict
from googlenet.serve import ServeConfig, run_serve
from googlenet.summary import SummaryConfig, run_summary
from googlenet.train_config import TrainConfig
from googlenet.visualize import VisualizeConfig, run_visualize
from googlenet.weights import ImportConfig, run_import

log = logging.getLogger("googlenet")


@dataclass(frozen=True)
class Command:
    help: str
    config: type
    run: Callable[[Any], Any]


def _run_train(cfg: TrainConfig) -> int:
    from googlenet import train

    metrics = train.run(cfg)
    if metrics and os.environ.get("RANK", "0") == "0":  # one summary line, from the first of several processes
        print(
            f"final: epoch {metrics['epoch']}  val top1 {metrics['val_top1']:.2f}%  "
            f"top5 {metrics['val_top5']:.2f}%  run folder {cfg.out}"
        )
    return 0


def _run_eval(cfg: EvalConfig) -> int:
    run_eval(cfg)
    return 0


COMMANDS = {
    "summary": Command("per-layer shapes, parameters and MACs beside the paper's Table 1", SummaryConfig, run_summary),
    "train": Command("train (Fashion-MNIST or an image folder); torchrun-ready", TrainConfig, _run_train),
    "prepare": Command(
        "pack an image folder's train/ and val/ into one pre-resized file each, for faster loading",
        PrepareConfig,
        run_prepare,
    ),
    "eval": Command("top-1/top-5 with 1, 10 or 144 crops; several checkpoints = an ensemble", EvalConfig, _run_eval),
    "predict": Command("top-k classes for images or folders of images", PredictConfig, run_predict),
    "features": Command(
        "one vector per image from pool5 or any layer, to .npz, .safetensors or .h5", FeaturesConfig, run_features
    ),
    "export": Command(
        "ONNX with a dynamic batch axis, checked against onnxruntime; --int8: quantised, calibrated",
        ExportConfig,
        run_export,
    ),
    "serve": Command(
        "an HTTP API and web page for a checkpoint or .onnx (127.0.0.1 by default)", ServeConfig, run_serve
    ),
    "import": Command(
        "published weights into a checkpoint: torchvision .pth or Caffe .caffemodel", ImportConfig, run_import
    ),
    "dream": Command("DeepDream an image on a layer (octaves, jitter), to PNG", DreamConfig, run_dream),
    "visualize": Command(
        "feature visualisation of a channel, neuron or direction (Fourier parameterisation), to PNG",
        VisualizeConfig,
        run_visualize,
    ),
    "explain": Command(
        "Grad-CAM, integrated gradients or saliency over an image, with the top-5 classes, to PNG",
        ExplainConfig,
        run_explain,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    summary = __doc__.split("\n\n")[0].replace("\n", " ")  # the first paragraph: every command
    parser = argparse.ArgumentParser(prog="googlenet", description=summary, parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, parents=[common])  # --debug after the command too
        if name == "train":
            p.add_argument("--config", help=f"recipe: a TOML file or one of {', '.join(C.list_recipes())}")
        else:
            p.add_argument("--config", metavar="FILE.toml", help="read any of the options below from this file")
        C.add_arguments(p, command.config)
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``parser.parse_args``, except that paths after options join the command's list of paths.

    argparse ends a positional list at the first option after it, so ``predict a.jpg --top-k 3 b.jpg`` would
    refuse ``b.jpg``; its intermixed parsing, which would not, cannot be used with sub-commands.
    """
    args, extra = parser.parse_known_args(argv)
    field = C.positional_list(COMMANDS[args.command].config)
    unknown = [a for a in extra if a.startswith("-")] if field else extra
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        setattr(args, field, [*getattr(args, field, []), *extra])
    return args


def resolve_config(command: str, args: argparse.Namespace) -> Any:
    """The command's config from its --config file and flags; ``train --resume`` starts from the run's own."""
    cls = COMMANDS[command].config
    overrides = C.overrides_from_args(args, cls)
    if command == "train" and overrides.get("resume"):
        from googlenet.train import resume_config

        if args.config:
            raise C.ConfigError("--resume continues with the run's own config; drop --config")
        return C.resolve(cls, None, resume_config(overrides["resume"], overrides))
    return C.resolve(cls, args.config, overrides)


def _expected_errors() -> tuple[type[BaseException], ...]:
    from googlenet.checkpoint import CheckpointError
    from googlenet.data import DataError
    from googlenet.loop import TrainingDiverged

    # OSError: a path that cannot be read or written (permissions, a full disk); MemoryError: an allocation
    # the limits below did not foresee. Each is the user's to fix, so one line, not a traceback.
    return (C.ConfigError, DataError, CheckpointError, TrainingDiverged, OSError, ValueError, MemoryError)


def one_line(error: BaseException) -> str:
    """The error's message on one line (a library's message may span several); its type where it has none."""
    text = " ".join(str(error).split())
    return text or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(build_parser(), argv)
    # Our progress at INFO; libraries' only from WARNING (the ONNX exporter narrates every pass at INFO).
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)
    try:
        cfg = resolve_config(args.command, args)
        if args.command == "train" and cfg.processes > 1 and not processes.launched():
            return processes.start_processes(cfg.processes, cfg.device, argv)
        return COMMANDS[args.command].run(cfg)
    except BrokenPipeError:
        # The reader of stdout went away (`googlenet predict ... | head`): stop quietly, as other tools do.
        # stdout goes to devnull so that the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        if getattr(args, "debug", False):
            raise
        print("googlenet: interrupted; outputs not completed were not written", file=sys.stderr)
        return 130
    except _expected_errors() as e:
        if getattr(args, "debug", False):
            raise
        print(f"googlenet: error: {one_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
