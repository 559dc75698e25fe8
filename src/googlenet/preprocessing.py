"""How an image is fed to a model: the normalisation constants, the grey conversion and the evaluation crop.

Every path that shows a trained model an image (training-time validation, ``eval``, ``predict``, ``export``)
takes these from here, and a checkpoint stores its :class:`Preprocessing`, so a model never sees input
prepared differently from how it was trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import Tensor
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Channel statistics of the Fashion-MNIST training set (pixel values / 255), repeated on all three channels.
FASHION_MNIST_MEAN = (0.2860,) * 3
FASHION_MNIST_STD = (0.3530,) * 3

# The standard evaluation geometry (docs/paper.md#testing-protocol): the shorter side to 256/224 of the
# crop, then the centre crop.
RESIZE_RATIO = 256 / 224

# ITU-R BT.601 luma, the weights PIL's convert("L") uses.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


class PreprocessingError(ValueError):
    """A stored preprocessing record that is incomplete or holds values that cannot be used."""


def normalize(images: Tensor, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> Tensor:
    """(x - mean) / std per channel for float images [N, C, H, W] in [0, 1].

    ``mean`` and ``std``: numbers per channel, or [1, C, 1, 1] tensors on the images' device
    (:func:`googlenet.augment.channel_constants`), which the training sources pass to stay clear of
    per-batch copies.
    """
    m = mean if isinstance(mean, Tensor) else images.new_tensor(mean).view(1, -1, 1, 1)
    s = std if isinstance(std, Tensor) else images.new_tensor(std).view(1, -1, 1, 1)
    return (images - m) / s


def luma(images: Tensor) -> Tensor:
    """Grey level of float RGB images [N, 3, H, W] -> [N, 1, H, W]."""
    r, g, b = LUMA_WEIGHTS
    return r * images[:, 0:1] + g * images[:, 1:2] + b * images[:, 2:3]


def to_grey_rgb(image: Tensor) -> Tensor:
    """uint8 RGB [3, H, W] -> its grey level on all three channels (as PIL's convert("L"), then to RGB)."""
    grey = luma(image.unsqueeze(0).float())[0].round().to(torch.uint8)
    return grey.expand(3, -1, -1)


def resize_shorter(image: Tensor, size: int) -> Tensor:
    """Resize so the shorter side is ``size`` px (bilinear, antialiased: area-like when shrinking)."""
    return TF.resize(image, [size], interpolation=InterpolationMode.BILINEAR, antialias=True)


def eval_crop(image: Tensor, size: int, resize_ratio: float = RESIZE_RATIO) -> Tensor:
    """The one evaluation crop: the shorter side to ``round(size * resize_ratio)``, then the centre
    ``size`` x ``size``. [C, H, W] -> [C, size, size], same dtype."""
    return TF.center_crop(resize_shorter(image, round(size * resize_ratio)), [size, size])


@dataclass(frozen=True)
class Preprocessing:
    """What a model expects: crop size and geometry, grey conversion, normalisation of RGB / 255.

    Stored in every checkpoint as a plain dict (:meth:`to_dict`) and read back with :meth:`from_dict`.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    img_size: int = 224
    resize_ratio: float = RESIZE_RATIO
    grayscale: bool = False

    @classmethod
    def from_dict(cls, record: dict[str, Any] | None) -> Preprocessing:
        """Parse a stored record; a missing or unusable field is a :class:`PreprocessingError` naming it."""
        if not isinstance(record, dict):
            raise PreprocessingError("no preprocessing record (mean, std, img_size)")
        for key in ("mean", "std"):
            values = record.get(key)
            if not isinstance(values, list | tuple) or len(values) != 3:
                raise PreprocessingError(f"preprocessing {key!r} must be three numbers, got {values!r}")
        try:
            pre = cls(
                mean=tuple(float(v) for v in record["mean"]),
                std=tuple(float(v) for v in record["std"]),
                img_size=int(record.get("img_size", 224)),
                resize_ratio=float(record.get("resize_ratio", RESIZE_RATIO)),
                grayscale=bool(record.get("grayscale", False)),
            )
        except (TypeError, ValueError) as e:
            raise PreprocessingError(f"preprocessing record holds a value of the wrong type ({e})") from None
        if min(pre.std) <= 0 or pre.img_size < 1 or pre.resize_ratio < 1:
            raise PreprocessingError(f"preprocessing values out of range: {record}")
        return pre

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {**d, "mean": list(self.mean), "std": list(self.std)}

    def with_img_size(self, size: int) -> Preprocessing:
        return replace(self, img_size=size)

    def crop(self, image: Tensor) -> Tensor:
        """uint8 RGB [3, H, W] -> uint8 [3, S, S]: grey conversion where the model expects it, evaluation crop."""
        if self.grayscale:
            image = to_grey_rgb(image)
        return eval_crop(image, self.img_size, self.resize_ratio)

    def to_input(self, crops: Tensor) -> Tensor:
        """uint8 crops [N, 3, S, S] (any device) -> the normalised float input of the model."""
        return normalize(crops.float() / 255, self.mean, self.std)

    def __call__(self, image: Tensor) -> Tensor:
        """uint8 RGB [3, H, W] -> normalised float [3, S, S], the way the model was evaluated."""
        return self.to_input(self.crop(image).unsqueeze(0))[0]


def imagenet_preprocessing(img_size: int = 224) -> Preprocessing:
    """The preprocessing of ImageNet-trained weights (torchvision's and Caffe's, imported)."""
    return Preprocessing(IMAGENET_MEAN, IMAGENET_STD, img_size, RESIZE_RATIO, False)
