"""`googlenet predict`: top-k classes for image files and folders, batched; one bad file never stops the rest."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from googlenet.augment import normalize
from googlenet.checkpoint import LoadedModel
from googlenet.data import IMAGE_EXTENSIONS, RESIZE_RATIO, decode_rgb
from googlenet.evaluate import multi_crop


@dataclass
class Prediction:
    path: str
    classes: list[tuple[str, float]] | None = None  # (name, probability), best first
    error: str | None = None


def expand_paths(paths: list[str]) -> Iterator[tuple[str, str | None]]:
    """(file, error) for each given file and each image file under each given folder, sorted."""
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
                    yield str(f), None
        elif p.is_file():
            yield str(p), None
        else:
            yield str(p), "no such file or folder"


def preprocess_image(img: Tensor, preprocess: dict) -> Tensor:
    """uint8 RGB [3, H, W] -> normalised float [3, S, S] the way the checkpoint's model was evaluated."""
    if preprocess.get("grayscale"):
        grey = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]).round().to(torch.uint8)
        img = grey.expand(3, -1, -1)
    size = int(preprocess.get("img_size", 224))
    crop = multi_crop(img, 1, size, float(preprocess.get("resize_ratio", RESIZE_RATIO)))
    return normalize(crop.float() / 255, preprocess["mean"], preprocess["std"])[0]


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
        if error is not None:
            yield from flush() if pending else ()
            yield Prediction(path, error=error)
            continue
        try:
            pending.append((path, preprocess_image(decode_rgb(path), member.preprocess)))
        except (OSError, ValueError) as e:
            yield from flush() if pending else ()
            yield Prediction(path, error=str(e).removeprefix(f"{path}: "))
            continue
        if len(pending) >= batch_size:
            yield from flush()
    if pending:
        yield from flush()
