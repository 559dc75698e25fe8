"""The data a training run reads: its batch sources, class names and the preprocessing its checkpoints store."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from googlenet import distributed as D
from googlenet.batches import FolderSource, InMemorySource, folder_crop_spec
from googlenet.data import FASHION_MNIST_CLASSES, DataError, ImageFolderDataset, ImageFolderIndex, load_fashion_mnist
from googlenet.pack import open_split
from googlenet.preprocessing import (
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RESIZE_RATIO,
    Preprocessing,
)
from googlenet.train_config import TrainConfig


@dataclass
class TrainData:
    """The training and validation sources, the class names and how the trained model expects its input."""

    train: InMemorySource | FolderSource
    val: InMemorySource | FolderSource
    classes: list[str]
    preprocessing: Preprocessing


def _subset(n: int, k: int | None, seed: int) -> Tensor | None:
    """A seeded choice of ``k`` of ``n`` indices in ascending order (None: keep all)."""
    if k is None or k >= n:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + 12345))[:k].sort().values


Normalisation = tuple[tuple[float, ...], tuple[float, ...]]


def build_train_data(
    cfg: TrainConfig, device: torch.device, dist: D.DistInfo, normalisation: Normalisation | None = None
) -> TrainData:
    """The sources for ``cfg.data``: Fashion-MNIST in memory, or an image folder / pack decoded by workers.

    ``normalisation``: (mean, std) to use instead of the data's own, as when fine-tuning weights that were
    trained with other constants.
    """
    if cfg.data == "fashion-mnist":
        return _fashion_mnist(cfg, device, dist, normalisation or (FASHION_MNIST_MEAN, FASHION_MNIST_STD))
    return _image_folder(cfg, device, dist, normalisation or (IMAGENET_MEAN, IMAGENET_STD))


def _fashion_mnist(cfg: TrainConfig, device: torch.device, dist: D.DistInfo, norm: Normalisation) -> TrainData:
    common = dict(seed=cfg.seed, rank=dist.rank, world=dist.world, device=device, batch_size=cfg.batch_size)
    (xtr, ytr), (xva, yva) = load_fashion_mnist("train"), load_fashion_mnist("test")
    if (s := _subset(len(xtr), cfg.train_subset, cfg.seed)) is not None:
        xtr, ytr = xtr[s], ytr[s]
    if (s := _subset(len(xva), cfg.val_subset, cfg.seed)) is not None:
        xva, yva = xva[s], yva[s]
    mean, std = norm
    train = InMemorySource(xtr, ytr, train=True, mean=mean, std=std, aug=cfg.augmentation(), **common)
    val = InMemorySource(xva, yva, train=False, mean=mean, std=std, **common)
    # Fashion-MNIST images are 28x28 grey: resized whole (no 256/224 margin), grey copied to R, G and B.
    pre = Preprocessing(mean, std, cfg.eval_img_size or cfg.img_size, resize_ratio=1.0, grayscale=True)
    return TrainData(train, val, list(FASHION_MNIST_CLASSES), pre)


def check_trainable(index: ImageFolderIndex, split: Path) -> None:
    """Refuse, before any work, classes that cannot train a classifier: fewer than two, or one without
    images (its output would never be trained, yet the run would report success)."""
    if len(index.classes) < 2:
        raise DataError(f"{split}: {len(index.classes)} class {index.classes}; a classifier needs at least two")
    counts = torch.bincount(torch.as_tensor(index.labels), minlength=len(index.classes)).tolist()
    empty = [name for name, n in zip(index.classes, counts) if n == 0]
    if empty:
        raise DataError(f"{split}: no image files of class {', '.join(map(repr, empty[:5]))}")


def _image_folder(cfg: TrainConfig, device: torch.device, dist: D.DistInfo, norm: Normalisation) -> TrainData:
    root = Path(cfg.data)
    if not root.is_dir():
        raise DataError(f"--data {cfg.data!r}: not 'fashion-mnist' and not a folder")
    train_index = open_split(root, "train")  # a pack written by `googlenet prepare`, or the folder
    check_trainable(train_index, root / "train")
    val_index = open_split(root, "val", train_index.classes)
    if (s := _subset(len(train_index.files), cfg.train_subset, cfg.seed)) is not None:
        train_index = train_index.subset(s.tolist())
    if (s := _subset(len(val_index.files), cfg.val_subset, cfg.seed)) is not None:
        val_index = val_index.subset(s.tolist())
    aug = cfg.augmentation()
    folder = dict(
        batch_size=cfg.batch_size,
        mean=norm[0],
        std=norm[1],
        workers=cfg.workers,
        decode_on_device=cfg.decode_on_device,
        seed=cfg.seed,
        rank=dist.rank,
        world=dist.world,
        device=device,
    )
    train = FolderSource(ImageFolderDataset(train_index, folder_crop_spec(aug, True), cfg.seed), aug=aug, **folder)
    val = FolderSource(ImageFolderDataset(val_index, folder_crop_spec(aug, False), cfg.seed), **folder)
    pre = Preprocessing(*norm, cfg.eval_img_size or cfg.img_size, RESIZE_RATIO, False)
    return TrainData(train, val, train_index.classes, pre)
