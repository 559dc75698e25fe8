"""Shared fixtures: small image folders made on the spot (no downloads)."""

from pathlib import Path

import pytest
import torch
from torchvision.io import encode_jpeg, encode_png

from googlenet import config as C
from googlenet import train


def class_image(label: int, index: int, size: tuple[int, int] = (40, 48)) -> torch.Tensor:
    """A uint8 RGB image whose class shows in its colour and stripe direction (learnable at 32 px)."""
    g = torch.Generator().manual_seed(label * 1000 + index)
    h, w = size
    img = torch.rand(3, h, w, generator=g) * 60
    img[label % 3] += 150
    stripes = (torch.arange(w if label % 2 else h) // 4 % 2).float() * 40
    img += stripes.view(1, 1, -1) if label % 2 else stripes.view(1, -1, 1)
    return img.clamp(0, 255).to(torch.uint8)


def write_image(path: Path, img: torch.Tensor) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = encode_png(img) if path.suffix.lower() == ".png" else encode_jpeg(img, quality=95)
    path.write_bytes(data.numpy().tobytes())
    return path


def make_image_folder(root: Path, classes: int = 3, train_per_class: int = 8, val_per_class: int = 4) -> Path:
    """root/train/<class>/*.JPEG and root/val/<class>/*.JPEG, ImageNet style."""
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            for i in range(n):
                write_image(
                    root / split / f"class_{c}" / f"{split}_{c}_{i}.JPEG", class_image(c, i + 100 * (split == "val"))
                )
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "data")


def small_config(data, out, **kw):
    base = dict(
        data=str(data),
        out=str(out),
        epochs=2,
        batch_size=8,
        img_size=32,
        lr=0.02,
        workers=0,
        warmup_epochs=0.0,
        log_every=1000,
        seed=3,
        bf16=False,  # the same arithmetic on every CPU; the default's choice has its own test
    )
    return C.resolve(train.TrainConfig, None, {**base, **kw})
