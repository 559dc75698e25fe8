"""The `googlenet` command: summary, train, prepare, eval, predict, export, import.

Expected failures (bad config, missing data, unreadable checkpoint) print one line `googlenet: error: ...`
and exit 2 (usage) or 1 (everything else); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from googlenet import config as C

log = logging.getLogger("googlenet")


def _int_in_range(minimum: int, maximum: int | None = None):
    """An argparse type for whole numbers in [minimum, maximum] (no maximum: unbounded): --batch-size 0 is a
    mistake to name, not a value to bend."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {value}")
        return value

    return parse


_positive_int = _int_in_range(1)  # batch sizes, top-k, image sizes
_non_negative_int = _int_in_range(0)  # worker processes (0: load in the main process)


def _add_summary(sub) -> None:
    from googlenet.model import list_models

    p = sub.add_parser("summary", help="per-layer shapes, parameters and MACs beside the paper's Table 1")
    p.add_argument("--model", default="googlenet", choices=list_models())
    p.add_argument("--img-size", type=_positive_int, default=224)
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
        print(
            f"final: epoch {metrics['epoch']}  val top1 {metrics['val_top1']:.2f}%  "
            f"top5 {metrics['val_top5']:.2f}%  run folder {cfg.out}"
        )
    return 0


def _add_eval(sub) -> None:
    from googlenet.evaluate import CROP_COUNTS

    p = sub.add_parser("eval", help="top-1/top-5 with 1, 10 or 144 crops; several checkpoints = an ensemble")
    p.add_argument(
        "--checkpoint",
        action="append",
        required=True,
        metavar="CKPT",
        help="checkpoint file or run folder (its checkpoint_best.pt); repeat for an ensemble",
    )
    p.add_argument("--data", default="fashion-mnist", help="'fashion-mnist' (test split) or a folder")
    p.add_argument("--crops", type=int, default=1, choices=CROP_COUNTS, help="crops per image (paper: 144)")
    p.add_argument("--json", metavar="OUT", help="write the results here (and OUT.confusion.png)")
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        help="crops per forward pass; a step reads batch-size // crops images (default: 256 on a GPU, 32 on the CPU)",
    )
    p.add_argument(
        "--img-size",
        type=_positive_int,
        help="crop size in px for every checkpoint (default: the size each was trained for)",
    )
    p.add_argument("--workers", type=_non_negative_int, default=2)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=_cmd_eval)


def _device(name: str) -> str:
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA device is available")
    return "cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name)


def _cmd_eval(args: argparse.Namespace) -> int:
    from googlenet.evaluate import run_eval

    device = _device(args.device)
    # A GPU runs small batches at a fraction of its speed (144 crops x 50,000 images is 7.2M crops); on the
    # CPU 32 is what every evaluation in bench/results ran with.
    batch_size = args.batch_size or (256 if device == "cuda" else 32)
    run_eval(args.checkpoint, args.data, args.crops, args.json, batch_size, args.workers, device, args.img_size)
    return 0


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="top-k classes for images or folders of images")
    p.add_argument("--checkpoint", required=True, metavar="CKPT")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--top-k", type=_positive_int, default=5)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(args: argparse.Namespace) -> int:
    import json

    from googlenet.checkpoint import open_checkpoint
    from googlenet.predict import predict

    member = open_checkpoint(args.checkpoint, _device(args.device), fold_batchnorm=True)
    failed = 0
    for pred in predict(member, args.paths, args.top_k, args.batch_size, _device(args.device)):
        if pred.error:
            failed += 1
            print(f"googlenet: cannot read {pred.path}: {pred.error}", file=sys.stderr)
            continue
        if args.json:
            print(json.dumps({"path": pred.path, "top_k": [{"class": c, "probability": p} for c, p in pred.classes]}))
        else:
            print(f"{pred.path}: " + ", ".join(f"{c} {100 * p:.1f}%" for c, p in pred.classes))
    return 1 if failed else 0


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="ONNX with a dynamic batch axis, checked against onnxruntime")
    p.add_argument("--checkpoint", required=True, metavar="CKPT")
    p.add_argument("--onnx", required=True, metavar="OUT.onnx")
    p.add_argument("--img-size", type=_positive_int, help="input height/width (default: the checkpoint's)")
    p.add_argument(
        "--bake-preprocessing",
        action="store_true",
        help="the graph takes uint8 RGB [N, 3, H, W] and normalises it itself",
    )
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from googlenet.checkpoint import open_checkpoint
    from googlenet.export import export_onnx

    member = open_checkpoint(args.checkpoint)
    size = args.img_size or int(member.preprocess.get("img_size", 224))
    error = export_onnx(
        member.model, args.onnx, size, preprocess=member.preprocess if args.bake_preprocessing else None
    )
    pre = member.preprocess
    expects = (
        "uint8 RGB [N, 3, H, W], normalised inside the graph"
        if args.bake_preprocessing
        else f"float32 [N, 3, {size}, {size}] = (RGB / 255 - mean {pre.get('mean')}) / std {pre.get('std')}"
    )
    print(
        f"wrote {args.onnx}: input 'input' {expects}; output 'logits' [N, {len(member.class_names)}]; "
        f"onnxruntime max |diff| {error:.2e}"
    )
    return 0


def _add_import(sub) -> None:
    p = sub.add_parser("import", help="published weights into a checkpoint: torchvision .pth or Caffe .caffemodel")
    p.add_argument("source", choices=["torchvision", "caffe"])
    p.add_argument("file", metavar="FILE")
    p.add_argument("--out", required=True, metavar="CKPT")
    p.set_defaults(func=_cmd_import)


def _cmd_import(args: argparse.Namespace) -> int:
    from googlenet import weights

    convert = weights.import_torchvision if args.source == "torchvision" else weights.import_caffe
    model = convert(args.file, args.out)
    print(
        f"wrote {args.out}: {model.config.variant}, {model.config.num_classes} classes, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters"
    )
    return 0


def _add_prepare(sub) -> None:
    p = sub.add_parser(
        "prepare", help="pack an image folder's train/ and val/ into one pre-resized file each, for faster loading"
    )
    p.add_argument("source", metavar="DIR", help="folder with train/<class>/* and/or val/ (as for train --data)")
    p.add_argument("--out", required=True, metavar="DIR", help="where train.gpk / val.gpk go: then --data DIR")
    p.add_argument(
        "--short-side",
        type=_non_negative_int,
        default=256,
        help="shrink images whose shorter side is larger (0: keep sizes)",
    )
    p.add_argument(
        "--quality", type=_int_in_range(1, 100), default=90, help="JPEG quality of the re-encoded images (1-100)"
    )
    p.add_argument(
        "--workers",
        type=_non_negative_int,
        default=os.cpu_count() or 1,
        help="decoding processes (default: one per CPU)",
    )
    p.set_defaults(func=_cmd_prepare)


def _cmd_prepare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from googlenet.pack import prepare

    reports = prepare(Path(args.source), Path(args.out), args.short_side or None, args.quality, args.workers)
    for split, r in reports.items():
        print(
            f"{split}: {r.images} images, {r.pack_bytes / 2**20:,.1f} MiB (source {r.source_bytes / 2**20:,.1f} MiB), "
            f"{len(r.skipped)} undecodable skipped, {r.seconds:.1f} s -> {Path(args.out) / (split + '.gpk')}"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    parser = argparse.ArgumentParser(prog="googlenet", description=__doc__.splitlines()[0], parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)
    original = sub.add_parser
    sub.add_parser = lambda *a, **k: original(*a, parents=[common], **k)  # --debug after the command too
    for add in (_add_summary, _add_train, _add_prepare, _add_eval, _add_predict, _add_export, _add_import):
        add(sub)
    return parser


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
    except BrokenPipeError:
        # The reader of stdout went away (`googlenet predict ... | head`): stop quietly, as other tools do.
        # stdout goes to devnull so that the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except _expected_errors() as e:
        if getattr(args, "debug", False):
            raise
        print(f"googlenet: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
