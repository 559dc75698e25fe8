"""Evaluation as the paper did it: 1, 10 or 144 crops per image, softmax averaged over crops and models.

The 144-crop protocol (Szegedy et al. 2015, section 7; SPEC section 4): the shorter side is resized to
256, 288, 320 and 352; three squares are taken along the longer side (left/centre/right, or top/centre/
bottom); from each square the 4 corner and the centre 224x224 crops and the whole square resized to
224x224; each also mirrored: 4 x 3 x 6 x 2 = 144. Every size scales with ``crop_size / 224``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from googlenet.augment import normalize
from googlenet.checkpoint import CheckpointError, LoadedModel, open_checkpoint
from googlenet.data import (
    FASHION_MNIST_CLASSES,
    RESIZE_RATIO,
    DataError,
    ImageFolderIndex,
    decode_rgb_bytes,
    load_fashion_mnist,
    scan_split,
)
from googlenet.files import replacing
from googlenet.model import MIN_INPUT_SIZE
from googlenet.pack import open_split, pack_path

CROP_COUNTS = (1, 10, 144)
PAPER_SCALES = (256, 288, 320, 352)  # shorter side, at crop size 224


def _resize_shorter(image: Tensor, size: int) -> Tensor:
    return TF.resize(image, [size], interpolation=InterpolationMode.BILINEAR, antialias=True)


def _five_crops(image: Tensor, size: int) -> list[Tensor]:
    """Top-left, top-right, bottom-left, bottom-right, centre."""
    h, w = image.shape[-2:]
    corners = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size)]
    return [image[..., y : y + size, x : x + size] for y, x in corners] + [TF.center_crop(image, [size, size])]


def multi_crop(image: Tensor, n_crops: int, crop_size: int = 224, resize_ratio: float = RESIZE_RATIO) -> Tensor:
    """The paper's test-time crops of one image.

    Args:
        image: float or uint8 [C, H, W], any size.
        n_crops: 1, 10 or 144.
        crop_size: output height and width; 224 in the paper, the other sizes scale with it.
        resize_ratio: for 1 and 10 crops, the shorter side is first resized to ``crop_size * resize_ratio``.

    Returns:
        [n_crops, C, crop_size, crop_size], same dtype. Order:
        - 1: the centre crop.
        - 10: top-left, top-right, bottom-left, bottom-right, centre; then the same five mirrored.
        - 144: index ((scale * 3 + square) * 6 + crop) * 2 + mirror, with scale over 256/288/320/352
          (x crop_size/224), square over left|top, centre, right|bottom, crop over the five crops above
          then the whole square resized, mirror 0 then 1.
    """
    if n_crops not in CROP_COUNTS:
        raise ValueError(f"n_crops must be one of {CROP_COUNTS}, got {n_crops}")
    if image.dim() != 3:
        raise ValueError(f"expected an image [C, H, W], got shape {tuple(image.shape)}")
    if n_crops in (1, 10):
        resized = _resize_shorter(image, round(crop_size * resize_ratio))
        if n_crops == 1:
            return TF.center_crop(resized, [crop_size, crop_size]).unsqueeze(0)
        five = _five_crops(resized, crop_size)
        return torch.stack(five + [c.flip(-1) for c in five])
    crops = []
    for scale in PAPER_SCALES:
        resized = _resize_shorter(image, round(scale * crop_size / 224))
        h, w = resized.shape[-2:]
        side = min(h, w)
        starts = [0, (max(h, w) - side) // 2, max(h, w) - side]
        for start in starts:
            square = resized[..., start : start + side, :] if h > w else resized[..., :, start : start + side]
            whole = TF.resize(square, [crop_size, crop_size], interpolation=InterpolationMode.BILINEAR, antialias=True)
            for crop in _five_crops(square, crop_size) + [whole]:
                crops += [crop, crop.flip(-1)]
    return torch.stack(crops)


# ---------------------------------------------------------------------------------------------- dataset


class EvalImages(torch.utils.data.Dataset):
    """Images for evaluation, each returned whole (uint8 [3, H, W]) with its label; cropping is per model."""

    def __init__(self, index: ImageFolderIndex | None, labels: list[int], images: Tensor | None = None) -> None:
        self.index, self.labels, self.images = index, labels, images

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor | None, int, str]:
        if self.images is not None:  # in-memory grey images (Fashion-MNIST)
            return self.images[i].unsqueeze(0).expand(3, -1, -1), self.labels[i], str(i)
        name = self.index.files[i]
        try:
            return decode_rgb_bytes(self.index.read_bytes(i), name), self.labels[i], name
        except (OSError, ValueError) as e:
            return None, self.labels[i], str(e)


def eval_dataset(data: str, class_names: list[str]) -> EvalImages:
    """``fashion-mnist`` (its test split), or DIR/val.gpk (a pack), DIR/val, else DIR (class folders or flat)."""
    if data == "fashion-mnist":
        if list(class_names) != list(FASHION_MNIST_CLASSES):
            raise DataError(f"the checkpoint's {len(class_names)} classes are not Fashion-MNIST's")
        x, y = load_fashion_mnist("test")
        return EvalImages(None, y.tolist(), images=x)
    root = Path(data)
    if not root.is_dir():
        raise DataError(f"--data {data!r}: not 'fashion-mnist' and not a folder")
    if pack_path(root, "val").is_file() or (root / "val").is_dir():
        index = open_split(root, "val", class_names)
    else:
        index = scan_split(root, class_names)
    return EvalImages(index, index.labels)


# ------------------------------------------------------------------------------------------------- eval


@dataclass
class EvalResult:
    top1: float
    top5: float
    images: int
    crops: int
    models: int
    seconds: float
    skipped: int
    per_class: dict[str, float] | None
    confusion: Tensor | None

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "confusion"}
        if self.confusion is not None:
            d["confusion"] = self.confusion.tolist()
        return d


def _crop_size(member: LoadedModel) -> int:
    return int(member.preprocess.get("img_size", 224))


def _crops_for(member: LoadedModel, images: list[Tensor], n_crops: int) -> Tensor:
    ratio = float(member.preprocess.get("resize_ratio", RESIZE_RATIO))
    return torch.cat([multi_crop(img, n_crops, _crop_size(member), ratio) for img in images])


def _softmax_in_chunks(member: LoadedModel, crops: Tensor, chunk: int, device: str | torch.device) -> Tensor:
    """Softmax of every uint8 crop, at most ``chunk`` crops per forward pass.

    A batch of 32 images at 144 crops is 4,608 crops: one forward over all of them would need about 15 GB
    for conv1's output alone at 224 px, so ``batch_size`` bounds the crops per pass, not only the images.
    """
    mean, std = member.preprocess["mean"], member.preprocess["std"]
    out = []
    for part in crops.split(max(1, chunk)):
        x = normalize(part.to(device, memory_format=torch.channels_last).float() / 255, mean, std)
        out.append(member.model(x).float().softmax(dim=1))
    return torch.cat(out)


def evaluate_ensemble(
    members: list[LoadedModel],
    dataset: EvalImages,
    n_crops: int = 1,
    batch_size: int = 32,
    workers: int = 2,
    device: str | torch.device = "cpu",
    log_bad=print,
) -> EvalResult:
    """Top-1/top-5 of the softmax averaged over ``n_crops`` crops and over all ``members``.

    ``batch_size`` counts crops per forward pass; each step reads ``batch_size // n_crops`` images (at least
    one), so memory stays bounded at 144 crops.
    """
    if n_crops not in CROP_COUNTS:
        raise ValueError(f"--crops must be one of {', '.join(map(str, CROP_COUNTS))}, got {n_crops}")
    names = members[0].class_names
    for m in members[1:]:
        if m.class_names != names:
            raise CheckpointError(f"ensemble members disagree on the classes: {m.path} vs {members[0].path}")
    num_classes = len(names)
    images_per_step = max(1, batch_size // n_crops)
    loader = torch.utils.data.DataLoader(dataset, batch_size=images_per_step, num_workers=workers, collate_fn=list)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    top1 = top5 = n = skipped = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for items in loader:
            good = [(img, label) for img, label, _ in items if img is not None]
            for img, _, msg in items:
                if img is None:
                    skipped += 1
                    log_bad(f"skipped unreadable image: {msg}")
            if not good:
                continue
            images, labels = [g[0] for g in good], torch.tensor([g[1] for g in good])
            probs = torch.zeros(len(good), num_classes)
            for member in members:
                crop_probs = _softmax_in_chunks(member, _crops_for(member, images, n_crops), batch_size, device)
                probs += crop_probs.view(len(good), n_crops, num_classes).mean(dim=1).cpu()
            ranked = probs.topk(min(5, num_classes), dim=1).indices
            top1 += int((ranked[:, 0] == labels).sum())
            top5 += int((ranked == labels.unsqueeze(1)).any(dim=1).sum())
            confusion.index_put_((labels, ranked[:, 0]), torch.ones(len(good), dtype=torch.long), accumulate=True)
            n += len(good)
    if n == 0:
        raise DataError("no image could be evaluated")
    per_class = None
    if num_classes <= 100:
        totals = confusion.sum(dim=1).clamp(min=1)
        per_class = {name: 100 * float(confusion[i, i]) / float(totals[i]) for i, name in enumerate(names)}
    return EvalResult(
        100 * top1 / n,
        100 * top5 / n,
        n,
        n_crops,
        len(members),
        time.perf_counter() - start,
        skipped,
        per_class,
        confusion if num_classes <= 100 else None,
    )


def plot_confusion(confusion: Tensor, names: list[str], path: Path) -> None:
    """Row-normalised confusion matrix (true class down, predicted across) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = confusion.float() / confusion.sum(dim=1, keepdim=True).clamp(min=1)
    k = len(names)
    fig, ax = plt.subplots(figsize=(max(4, k * 0.5 + 2), max(4, k * 0.5 + 1)))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), names, rotation=90, fontsize=7 if k > 20 else 9)
    ax.set_yticks(range(k), names, fontsize=7 if k > 20 else 9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_eval(
    checkpoints: list[str],
    data: str,
    crops: int,
    json_out: str | None,
    batch_size: int,
    workers: int,
    device: str,
    img_size: int | None = None,
) -> EvalResult:
    """`googlenet eval`: load the members, evaluate, print, and write the JSON and confusion PNG.

    ``img_size`` replaces every member's crop size (default: the size each was trained for). Random-resized-crop
    training shows objects larger than a test crop of the same size does, so a somewhat larger test size can
    score higher (Touvron et al. 2019, "Fixing the train-test resolution discrepancy").
    """
    members = [open_checkpoint(c, device, fold_batchnorm=True) for c in checkpoints]
    if img_size:
        for member in members:
            variant = member.model.config.variant
            if img_size < MIN_INPUT_SIZE[variant]:  # before any image is read
                raise ValueError(f"--img-size {img_size} is below {variant}'s minimum {MIN_INPUT_SIZE[variant]}")
            member.preprocess = {**member.preprocess, "img_size": img_size}
    dataset = eval_dataset(data, members[0].class_names)
    result = evaluate_ensemble(members, dataset, crops, batch_size, workers, device)
    # Files first: a reader that closes stdout early (`googlenet eval ... | head -n 1`) must not cost them.
    if json_out:
        path = Path(json_out)
        with replacing(path) as tmp:
            sizes = [_crop_size(m) for m in members]
            record = {**result.to_dict(), "img_sizes": sizes, "checkpoints": checkpoints, "data": data}
            tmp.write_text(json.dumps(record, indent=2) + "\n")
        if result.confusion is not None:
            with replacing(path.with_suffix(".confusion.png")) as tmp:
                plot_confusion(result.confusion, members[0].class_names, tmp)
    print(
        f"top1 {result.top1:.2f}%  top5 {result.top5:.2f}%  images {result.images}  crops {result.crops}  "
        f"models {result.models}  seconds {result.seconds:.1f}"
        + (f"  skipped {result.skipped}" if result.skipped else "")
    )
    if result.per_class:
        for name, acc in result.per_class.items():
            print(f"  {name:<24} {acc:6.2f}%")
    return result
