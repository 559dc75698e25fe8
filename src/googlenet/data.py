"""Datasets: Fashion-MNIST held in memory, and image folders (ImageNet layout) decoded by loader workers.

Both produce uint8 images; conversion to float, augmentation and normalisation happen on the training
device in batches (see :mod:`googlenet.batches`), so the loader moves 4x fewer bytes than float tensors.

Randomness is a pure function of (seed, epoch, batch or sample index): the same epoch yields the same
batches and crops whatever the number of workers or processes, and a resumed run skips batches exactly.
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from googlenet.augment import PAPER_CROP_RATIO, PAPER_CROP_SCALE, random_resized_box
from googlenet.image_decode import decode_rgb_bytes
from googlenet.preprocessing import eval_crop

log = logging.getLogger("googlenet")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


class DataError(ValueError):
    """A dataset that cannot be used at all (missing, empty, unreadable); raised before any training."""


# ----------------------------------------------------------------------------------------- Fashion-MNIST


def _read_idx(path: Path) -> Tensor:
    """Parse an IDX file (optionally gzipped): big-endian magic 0x0000 08 <ndim>, dims, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:  # a truncated or damaged .gz
        raise DataError(f"{path}: unreadable ({e})") from None
    if len(data) < 4 or data[0:2] != b"\x00\x00" or data[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    expected = 4 + 4 * ndim + int(torch.tensor(dims).prod())
    if len(data) != expected:
        raise DataError(f"{path}: {len(data)} bytes, expected {expected} for shape {dims} (truncated?)")
    return torch.frombuffer(bytearray(data[4 + 4 * ndim :]), dtype=torch.uint8).reshape(dims)


def _find_idx(root: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    return None


def fashion_mnist_roots() -> list[Path]:
    """Where Fashion-MNIST is looked for, in order: $GOOGLENET_DATA, Debian's package, ~/.cache."""
    roots = []
    if os.environ.get("GOOGLENET_DATA"):
        env = Path(os.environ["GOOGLENET_DATA"])
        roots += [env, env / "fashion-mnist", env / "FashionMNIST" / "raw"]
    roots.append(DEBIAN_FASHION_MNIST)
    roots.append(Path.home() / ".cache" / "googlenet" / "FashionMNIST" / "raw")
    return roots


def load_fashion_mnist(split: str) -> tuple[Tensor, Tensor]:
    """Fashion-MNIST images [N, 28, 28] uint8 and labels [N] int64; split "train" (60k) or "test" (10k).

    Reads the IDX files directly (Debian's gzip files differ from upstream's checksums, so torchvision's
    checksum-verifying loader rejects them). Falls back to torchvision's download where a network exists.
    """
    prefix = {"train": "train", "test": "t10k"}[split]
    for root in fashion_mnist_roots():
        images = _find_idx(root, f"{prefix}-images-idx3-ubyte")
        labels = _find_idx(root, f"{prefix}-labels-idx1-ubyte")
        if images and labels:
            x, y = _read_idx(images), _read_idx(labels).long()
            if x.shape[0] != y.shape[0]:
                raise DataError(f"{root}: {x.shape[0]} images but {y.shape[0]} labels")
            return x, y
    try:  # last resort: torchvision's download (fails offline)
        from torchvision.datasets import FashionMNIST

        ds = FashionMNIST(str(Path.home() / ".cache" / "googlenet"), train=split == "train", download=True)
        return ds.data, ds.targets.long()
    except Exception as e:
        searched = ", ".join(str(r) for r in fashion_mnist_roots())
        raise DataError(
            f"Fashion-MNIST not found (searched {searched}; download failed: {e}). "
            "Install it with `apt-get install dataset-fashion-mnist` or set GOOGLENET_DATA to a folder "
            "holding the *-idx?-ubyte(.gz) files."
        ) from None


# ------------------------------------------------------------------------------------------ image files


@dataclass(frozen=True)
class ImageFolderIndex:
    """Files and labels of one split; ``classes`` is sorted folder-name order (ImageNet class indices).

    Items are read through :meth:`read_bytes`, so a packed split (:mod:`googlenet.pack`) serves in its place.
    """

    files: list[str]
    labels: list[int]
    classes: list[str]

    def read_bytes(self, i: int) -> bytes:
        """Item i's encoded image."""
        return Path(self.files[i]).read_bytes()

    def subset(self, keep: list[int]) -> ImageFolderIndex:
        """The items at positions ``keep``, in that order."""
        return replace(self, files=[self.files[i] for i in keep], labels=[self.labels[i] for i in keep])


def scan_split(split_dir: Path, classes: list[str] | None = None) -> ImageFolderIndex:
    """Index ``split_dir/<class>/*`` image files, or a flat folder with a ``labels.txt`` (see below).

    A flat folder of images (like ILSVRC2012's validation set) needs the labels in a text file beside it
    (``labels.txt`` inside the folder, or ``<folder>_labels.txt``): one line per image in sorted file-name
    order, each a class index (0-based) or a class name.

    Raises:
        DataError: missing folder, no images, or classes that do not match ``classes``.
    """
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: folder not found")
    subdirs = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if subdirs:
        found = classes if classes is not None else subdirs
        unknown = sorted(set(subdirs) - set(found))
        if unknown:
            raise DataError(f"{split_dir}: class folders not in the training classes: {unknown[:5]}")
        index = {c: i for i, c in enumerate(found)}
        files, labels = [], []
        for name in subdirs:
            for f in sorted((split_dir / name).rglob("*")):
                if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file():
                    files.append(str(f))
                    labels.append(index[name])
        result = ImageFolderIndex(files, labels, list(found))
    else:
        result = _scan_flat(split_dir, classes)
    if not result.files:
        raise DataError(f"{split_dir}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found")
    return result


def _scan_flat(split_dir: Path, classes: list[str] | None) -> ImageFolderIndex:
    files = sorted(str(f) for f in split_dir.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
    label_file = next(
        (p for p in (split_dir / "labels.txt", split_dir.with_name(split_dir.name + "_labels.txt")) if p.is_file()),
        None,
    )
    if label_file is None:
        raise DataError(f"{split_dir}: no class sub-folders and no labels.txt beside the images")
    lines = [ln.strip() for ln in label_file.read_text().splitlines() if ln.strip()]
    if len(lines) != len(files):
        raise DataError(f"{label_file}: {len(lines)} labels for {len(files)} images")
    if classes is None:
        raise DataError(f"{split_dir}: a flat folder needs the class list of a training split or checkpoint")
    return ImageFolderIndex(files, _flat_labels(lines, classes, label_file), list(classes))


def _flat_labels(lines: list[str], classes: list[str], label_file: Path) -> list[int]:
    """Labels from a flat folder's labels file: class names, or 0-based class indices where no class is
    named by a number (ILSVRC2012's validation labels). Where classes are named by numbers a number is a
    class name, and a number that names no class is an error rather than a guess at an index."""
    index = {c: i for i, c in enumerate(classes)}
    numeric_names = any(c.isdigit() for c in classes)
    labels = []
    for n, ln in enumerate(lines, 1):
        if ln in index:
            labels.append(index[ln])
        elif ln.isdigit() and numeric_names:
            raise DataError(
                f"{label_file}:{n}: {ln!r} is not a class name, and with classes named by numbers it cannot be "
                "read as an index either; write class names"
            )
        elif ln.isdigit() and int(ln) < len(classes):
            labels.append(int(ln))
        else:
            raise DataError(f"{label_file}:{n}: {ln!r} is neither a class index < {len(classes)} nor a class name")
    return labels


INTERPOLATIONS = (
    (InterpolationMode.BILINEAR, True),  # antialiased bilinear: area-like when shrinking
    (InterpolationMode.BILINEAR, False),
    (InterpolationMode.NEAREST, False),
    (InterpolationMode.BICUBIC, True),
)


@dataclass(frozen=True)
class CropSpec:
    """How a loader worker turns a decoded image into a fixed-size uint8 crop.

    Attributes:
        train: random-resized crop + flip (else resize shorter side to size * 256/224 and centre-crop).
        scale, ratio: area fraction and aspect-ratio ranges of the random crop.
        random_interpolation: pick bilinear / area-like / nearest / bicubic per image (paper, section 6).
        hflip: random horizontal mirror.
    """

    train: bool
    scale: tuple[float, float] = PAPER_CROP_SCALE
    ratio: tuple[float, float] = PAPER_CROP_RATIO
    random_interpolation: bool = False
    hflip: bool = True


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator that depends only on (seed, epoch, index): augmentation independent of worker layout."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 10_000_019 + index)


def crop_image(img: Tensor, size: int, spec: CropSpec, g: torch.Generator | None) -> Tensor:
    """uint8 [3, H, W] -> uint8 [3, size, size] following ``spec`` (``g`` drives the training randomness)."""
    if not spec.train:
        return eval_crop(img, size)
    h, w = img.shape[-2:]
    x0, y0, x1, y1 = random_resized_box(h, w, spec.scale, spec.ratio, g)
    mode, antialias = INTERPOLATIONS[0]
    if spec.random_interpolation:
        mode, antialias = INTERPOLATIONS[int(torch.randint(len(INTERPOLATIONS), (1,), generator=g))]
    img = TF.resized_crop(img, y0, x0, y1 - y0, x1 - x0, [size, size], interpolation=mode, antialias=antialias)
    if spec.hflip and bool(torch.rand(1, generator=g) < 0.5):
        img = img.flip(-1)
    return img


class ImageFolderDataset(torch.utils.data.Dataset):
    """Items are keyed by ``(index, epoch, size)`` so workers need no per-epoch state.

    An undecodable file yields ``None`` for its image; :func:`collate_skipping_bad` drops it and reports the
    path, so one bad file costs one sample, never the epoch.
    """

    def __init__(self, index: ImageFolderIndex, spec: CropSpec, seed: int = 0) -> None:
        self.index, self.spec, self.seed = index, spec, seed

    def __len__(self) -> int:
        return len(self.index.files)

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[Tensor | None, int, str]:
        i, epoch, size = key
        path = self.index.files[i]
        try:
            img = decode_rgb_bytes(self.index.read_bytes(i), path)
        except (OSError, ValueError) as e:
            return None, self.index.labels[i], str(e)
        g = sample_generator(self.seed, epoch, i) if self.spec.train else None
        return crop_image(img, size, self.spec, g), self.index.labels[i], path


class EncodedImageDataset(torch.utils.data.Dataset):
    """The files' bytes, undecoded: workers only read, the training device decodes (nvJPEG on a GPU).

    Keys are ``(index, epoch, size)`` like :class:`ImageFolderDataset`'s; items are
    ``(uint8 bytes tensor, label, path, index)``.
    """

    def __init__(self, index: ImageFolderIndex) -> None:
        self.index = index

    def __len__(self) -> int:
        return len(self.index.files)

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[Tensor, int, str, int]:
        i = key[0]
        path = self.index.files[i]
        try:
            data = self.index.read_bytes(i)
        except OSError:
            data = b""
        encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
        return encoded, self.index.labels[i], path, i


def collate_skipping_bad(items: list) -> tuple[Tensor, Tensor, list[str]]:
    """Stack the good samples into uint8 [B, 3, S, S] and int64 [B]; return the bad files' messages."""
    good = [(img, label) for img, label, _ in items if img is not None]
    bad = [msg for img, _, msg in items if img is None]
    if not good:
        return torch.empty(0, 3, 1, 1, dtype=torch.uint8), torch.empty(0, dtype=torch.long), bad
    return torch.stack([g[0] for g in good]), torch.tensor([g[1] for g in good]), bad
