"""Evaluation as the paper did it: 1, 10 or 144 crops per image, softmax averaged over crops and models.

The 144-crop protocol (Szegedy et al. 2015, section 7; docs/paper.md#testing-protocol): the shorter side is resized to
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

from googlenet.checkpoint import CheckpointError, LoadedModel, checkpoint_file, open_checkpoint
from googlenet.config import option
from googlenet.data import (
    FASHION_MNIST_CLASSES,
    IMAGE_EXTENSIONS,
    DataError,
    ImageFolderIndex,
    load_fashion_mnist,
    scan_split,
)
from googlenet.devices import DEVICE_CHOICES, resolve_device
from googlenet.files import check_output, check_outside_data, replacing
from googlenet.image_decode import decode_rgb_bytes
from googlenet.limits import check_fits, check_img_size
from googlenet.onnx_model import is_onnx, open_onnx
from googlenet.pack import open_split, pack_path
from googlenet.preprocessing import RESIZE_RATIO, eval_crop, resize_shorter, to_grey_rgb

CROP_COUNTS = (1, 10, 144)
PAPER_SCALES = (256, 288, 320, 352)  # shorter side, at crop size 224


def _five_crops(image: Tensor, size: int) -> list[Tensor]:
    """Top-left, top-right, bottom-left, bottom-right, centre."""
    h, w = image.shape[-2:]
    corners = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size)]
    return [image[..., y : y + size, x : x + size] for y, x in corners] + [TF.center_crop(image, [size, size])]


def _paper_144_crops(image: Tensor, crop_size: int) -> list[Tensor]:
    crops = []
    for scale in PAPER_SCALES:
        resized = resize_shorter(image, round(scale * crop_size / 224))
        h, w = resized.shape[-2:]
        side = min(h, w)
        starts = [0, (max(h, w) - side) // 2, max(h, w) - side]
        for start in starts:
            square = resized[..., start : start + side, :] if h > w else resized[..., :, start : start + side]
            whole = TF.resize(square, [crop_size, crop_size], interpolation=InterpolationMode.BILINEAR, antialias=True)
            for crop in _five_crops(square, crop_size) + [whole]:
                crops += [crop, crop.flip(-1)]
    return crops


def multi_crop(image: Tensor, n_crops: int, crop_size: int = 224, resize_ratio: float = RESIZE_RATIO) -> Tensor:
    """The paper's test-time crops of one image.

    Args:
        image: float or uint8 [C, H, W], any size.
        n_crops: 1, 10 or 144.
        crop_size: output height and width; 224 in the paper, the other sizes scale with it.
        resize_ratio: for 1 and 10 crops, the shorter side is first resized to ``crop_size * resize_ratio``.

    Returns:
        [n_crops, C, crop_size, crop_size], same dtype. Order:
        - 1: the centre crop (:func:`googlenet.preprocessing.eval_crop`).
        - 10: top-left, top-right, bottom-left, bottom-right, centre; then the same five mirrored.
        - 144: index ((scale * 3 + square) * 6 + crop) * 2 + mirror, with scale over 256/288/320/352
          (x crop_size/224), square over left|top, centre, right|bottom, crop over the five crops above
          then the whole square resized, mirror 0 then 1.
    """
    if n_crops not in CROP_COUNTS:
        raise ValueError(f"n_crops must be one of {CROP_COUNTS}, got {n_crops}")
    if image.dim() != 3:
        raise ValueError(f"expected an image [C, H, W], got shape {tuple(image.shape)}")
    if n_crops == 1:
        return eval_crop(image, crop_size, resize_ratio).unsqueeze(0)
    if n_crops == 10:
        five = _five_crops(resize_shorter(image, round(crop_size * resize_ratio)), crop_size)
        return torch.stack(five + [c.flip(-1) for c in five])
    return torch.stack(_paper_144_crops(image, crop_size))


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


def _crops_for(member: LoadedModel, images: list[Tensor], n_crops: int) -> Tensor:
    pre = member.preprocessing
    if pre.grayscale:
        images = [to_grey_rgb(img) for img in images]
    return torch.cat([multi_crop(img, n_crops, pre.img_size, pre.resize_ratio) for img in images])


def _softmax_in_chunks(member: LoadedModel, crops: Tensor, chunk: int, device: str | torch.device) -> Tensor:
    """Softmax of every uint8 crop, at most ``chunk`` crops per forward pass.

    A batch of 32 images at 144 crops is 4,608 crops: one forward over all of them would need about 15 GB
    for conv1's output alone at 224 px, so ``batch_size`` bounds the crops per pass, not only the images.
    """
    out = []
    for part in crops.split(max(1, chunk)):
        x = member.preprocessing.to_input(part.to(device, memory_format=torch.channels_last))
        out.append(member.model(x).float().softmax(dim=1))
    return torch.cat(out)


class _Tally:
    """Running top-1 / top-5 counts and the confusion matrix of an evaluation."""

    def __init__(self, num_classes: int) -> None:
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
        self.top1 = self.top5 = self.images = self.skipped = 0

    def add(self, probs: Tensor, labels: Tensor) -> None:
        ranked = probs.topk(min(5, probs.shape[1]), dim=1).indices
        self.top1 += int((ranked[:, 0] == labels).sum())
        self.top5 += int((ranked == labels.unsqueeze(1)).any(dim=1).sum())
        ones = torch.ones(len(labels), dtype=torch.long)
        self.confusion.index_put_((labels, ranked[:, 0]), ones, accumulate=True)
        self.images += len(labels)

    def result(self, names: list[str], n_crops: int, models: int, seconds: float) -> EvalResult:
        if self.images == 0:
            raise DataError("no image could be evaluated")
        small = len(names) <= 100
        per_class = None
        if small:
            totals = self.confusion.sum(dim=1).clamp(min=1)
            per_class = {name: 100 * float(self.confusion[i, i]) / float(totals[i]) for i, name in enumerate(names)}
        n = self.images
        confusion = self.confusion if small else None
        return EvalResult(100 * self.top1 / n, 100 * self.top5 / n, n, n_crops, models, seconds, self.skipped,
                          per_class, confusion)  # fmt: skip


def ensemble_probabilities(
    members: list[LoadedModel], images: list[Tensor], n_crops: int, batch_size: int, device: str | torch.device
) -> Tensor:
    """Softmax averaged over each image's ``n_crops`` crops, summed over ``members``: [len(images), classes]."""
    probs = torch.zeros(len(images), len(members[0].class_names))
    for member in members:
        crop_probs = _softmax_in_chunks(member, _crops_for(member, images, n_crops), batch_size, device)
        probs += crop_probs.view(len(images), n_crops, -1).mean(dim=1).cpu()
    return probs


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
    images_per_step = max(1, batch_size // n_crops)
    loader = torch.utils.data.DataLoader(dataset, batch_size=images_per_step, num_workers=workers, collate_fn=list)
    tally = _Tally(len(names))
    start = time.perf_counter()
    with torch.inference_mode():
        for items in loader:
            for img, _, msg in items:
                if img is None:
                    tally.skipped += 1
                    log_bad(f"skipped unreadable image: {msg}")
            good = [(img, label) for img, label, _ in items if img is not None]
            if good:
                probs = ensemble_probabilities(members, [g[0] for g in good], n_crops, batch_size, device)
                tally.add(probs, torch.tensor([g[1] for g in good]))
    return tally.result(names, n_crops, len(members), time.perf_counter() - start)


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


@dataclass
class EvalConfig:
    """What `googlenet eval` reads (flags, or a TOML file given with --config)."""

    checkpoint: list[str] = option(
        help="checkpoint file, run folder (its checkpoint_best.pt) or exported .onnx; repeat for an ensemble",
        metavar="CKPT",
    )
    data: str = option("fashion-mnist", "'fashion-mnist' (its test split), a folder, or a pack folder")
    crops: int = option(1, "crops per image (paper: 144)", choices=list(CROP_COUNTS))
    json: str | None = option(None, "write the results here (and OUT.confusion.png)", metavar="OUT")
    batch_size: int | None = option(
        None, "crops per forward pass; a step reads batch-size // crops images (default: 256 on a GPU, 32 on the CPU)",
        min=1,
    )  # fmt: skip
    img_size: int | None = option(
        None, "crop size in px for every checkpoint (default: the size each was trained for)", min=1
    )
    workers: int = option(2, "loader processes", min=0)
    device: str = option("auto", "auto, cpu or cuda", choices=list(DEVICE_CHOICES))


def default_batch_size(device: torch.device) -> int:
    """Crops per forward pass when --batch-size is not given.

    A GPU runs small batches at a fraction of its speed (144 crops x 50,000 images is 7.2M crops); on the CPU
    32 is what every evaluation in bench/results ran with.
    """
    return 256 if device.type == "cuda" else 32


def run_eval(cfg: EvalConfig) -> EvalResult:
    """`googlenet eval`: load the members, evaluate, print, and write the JSON and confusion PNG.

    ``img_size`` replaces every member's crop size (default: the size each was trained for). Random-resized-crop
    training shows objects larger than a test crop of the same size does, so a somewhat larger test size can
    score higher (Touvron et al. 2019, "Fixing the train-test resolution discrepancy").
    """
    if cfg.json:
        inputs = [checkpoint_file(c) for c in cfg.checkpoint]
        for out, flag in ((cfg.json, "--json"), (Path(cfg.json).with_suffix(".confusion.png"), "its confusion plot")):
            check_output(out, inputs, flag)
            check_outside_data(out, cfg.data, IMAGE_EXTENSIONS, flag)
    device = resolve_device(cfg.device)
    batch_size = cfg.batch_size or default_batch_size(device)
    members = [open_onnx(c) if is_onnx(c) else open_checkpoint(c, device, fold_batchnorm=True) for c in cfg.checkpoint]
    for member in members:  # before any image is read
        if cfg.img_size:
            check_img_size(member.model.config.variant, cfg.img_size)
            member.preprocessing = member.preprocessing.with_img_size(cfg.img_size)
        check_fits(member.model.config.variant, member.preprocessing.img_size, batch_size, device)
    dataset = eval_dataset(cfg.data, members[0].class_names)
    result = evaluate_ensemble(members, dataset, cfg.crops, batch_size, cfg.workers, device)
    # Files first: a reader that closes stdout early (`googlenet eval ... | head -n 1`) must not cost them.
    if cfg.json:
        _write_results(Path(cfg.json), result, members, cfg)
    print(
        f"top1 {result.top1:.2f}%  top5 {result.top5:.2f}%  images {result.images}  crops {result.crops}  "
        f"models {result.models}  seconds {result.seconds:.1f}"
        + (f"  skipped {result.skipped}" if result.skipped else "")
    )
    for name, acc in (result.per_class or {}).items():
        print(f"  {name:<24} {acc:6.2f}%")
    return result


def _write_results(path: Path, result: EvalResult, members: list[LoadedModel], cfg: EvalConfig) -> None:
    sizes = [m.preprocessing.img_size for m in members]
    record = {**result.to_dict(), "img_sizes": sizes, "checkpoints": cfg.checkpoint, "data": cfg.data}
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    if result.confusion is not None:
        with replacing(path.with_suffix(".confusion.png")) as tmp:
            plot_confusion(result.confusion, members[0].class_names, tmp)
