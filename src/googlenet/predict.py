"""`googlenet predict`: top-k classes for image files and folders, batched; one bad file never stops the rest."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from googlenet.checkpoint import LoadedModel, open_checkpoint
from googlenet.config import option
from googlenet.data import IMAGE_EXTENSIONS
from googlenet.devices import DEVICE_CHOICES, resolve_device
from googlenet.image_decode import decode_rgb
from googlenet.limits import check_fits
from googlenet.onnx_model import is_onnx, open_onnx


@dataclass
class Prediction:
    path: str
    classes: list[tuple[str, float]] | None = None  # (name, probability), best first
    error: str | None = None


def expand_paths(paths: list[str]) -> Iterator[tuple[str, str | None]]:
    """(file, error) for each given file and each image file under each given folder, sorted."""
    for p in map(Path, paths):
        if p.is_dir():
            images = [f for f in sorted(p.rglob("*")) if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS]
            yield from ((str(f), None) for f in images)
            if not images:
                yield str(p), f"a folder with no image files ({', '.join(IMAGE_EXTENSIONS)})"
        elif p.is_file():
            yield str(p), None
        else:
            yield str(p), "no such file or folder"


def predict(
    member: LoadedModel, paths: list[str], top_k: int = 5, batch_size: int = 32, device: str | torch.device = "cpu"
) -> Iterator[Prediction]:
    """Predictions in input order; unreadable files come back with ``error`` set."""
    k = max(1, min(top_k, len(member.class_names)))
    pending: list[tuple[str, Tensor]] = []

    def flush() -> Iterator[Prediction]:
        x = torch.stack([t for _, t in pending]).to(device, memory_format=torch.channels_last)
        with torch.inference_mode():
            probs = member.model(x).float().softmax(dim=1).cpu()
        values, indices = probs.topk(k, dim=1)
        for (path, _), v, i in zip(pending, values.tolist(), indices.tolist()):
            yield Prediction(path, [(member.class_names[j], p) for j, p in zip(i, v)])
        pending.clear()

    for path, error in expand_paths(paths):
        if error is None:
            try:
                pending.append((path, member.preprocessing(decode_rgb(path))))
            except (OSError, ValueError) as e:
                error = str(e).removeprefix(f"{path}: ")
        if error is not None:
            yield from flush() if pending else ()
            yield Prediction(path, error=error)
        elif len(pending) >= batch_size:
            yield from flush()
    if pending:
        yield from flush()


@dataclass
class PredictConfig:
    """What `googlenet predict` reads (flags, or a TOML file given with --config)."""

    checkpoint: str = option(help="checkpoint file, run folder or exported .onnx", metavar="CKPT")
    paths: list[str] = option(help="image files and folders of images", positional=True, metavar="PATH")
    top_k: int = option(5, "classes to print per image", min=1)
    json: bool = option(False, "one JSON object per line")
    batch_size: int = option(32, "images per forward pass", min=1)
    device: str = option("auto", "auto, cpu or cuda", choices=list(DEVICE_CHOICES))


def run_predict(cfg: PredictConfig) -> int:
    """`googlenet predict`: one line per image; unreadable files named on stderr, then exit status 1."""
    device = resolve_device(cfg.device)
    if is_onnx(cfg.checkpoint):
        member = open_onnx(cfg.checkpoint)
    else:
        member = open_checkpoint(cfg.checkpoint, device, fold_batchnorm=True)
    check_fits(member.model.config.variant, member.preprocessing.img_size, cfg.batch_size, device)
    failed = 0
    for pred in predict(member, cfg.paths, cfg.top_k, cfg.batch_size, device):
        if pred.error:
            failed += 1
            print(f"googlenet: cannot read {pred.path}: {pred.error}", file=sys.stderr)
        elif cfg.json:
            print(json.dumps({"path": pred.path, "top_k": [{"class": c, "probability": p} for c, p in pred.classes]}))
        else:
            print(f"{pred.path}: " + ", ".join(f"{c} {100 * p:.1f}%" for c, p in pred.classes))
    return 1 if failed else 0
