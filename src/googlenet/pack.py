"""Packed datasets: each split of an image folder pre-resized and stored as one file (`googlenet prepare`).

Decoding a 500x375 JPEG is most of a loader worker's time and opening a million small files adds to it. A
pack stores every image re-encoded as JPEG with its shorter side at most ``short_side`` (FFCV's approach:
256 px serves 224 px training crops), one after another in one file that workers memory-map, so reading
an image is a slice and decoding it is cheaper (one core decodes and crops 1.9x more images from a pack of
500x375 JPEGs than from the files: bench/cpu_speed.py). Training, evaluation and both decode paths read packs
exactly as they read folders (:func:`open_split` picks whichever is there).

File layout (little-endian)::

    MAGIC | JPEG bytes of every image | index (torch.save of tensors, lists and str) | index offset (u64) | MAGIC

The index is read with ``torch.load(weights_only=True)``: a pack is data, never code. Files are written to
a temporary name and renamed when complete, so a pack is either whole or absent.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torchvision.io import encode_jpeg
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from googlenet.config import option
from googlenet.data import DataError, ImageFolderIndex, scan_split
from googlenet.files import remove_stale_temporaries, replacing
from googlenet.image_decode import decode_rgb_bytes

log = logging.getLogger("googlenet")

MAGIC = b"GNPACK1\n"
SUFFIX = ".gpk"
_TRAILER = struct.Struct("<Q8s")  # index offset, MAGIC


@dataclass(frozen=True, eq=False)
class PackedIndex(ImageFolderIndex):
    """An :class:`ImageFolderIndex` whose images live in a pack; ``files`` are the source names (messages).

    ``entries[i]`` is item i's position in the pack (subsets keep the pack whole). Positions are numpy
    arrays (no per-item Python objects for forked workers to copy), and the memory map is opened lazily in
    each process, so the index pickles cheaply into loader workers.
    """

    path: str = ""
    offsets: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    entries: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def read_bytes(self, i: int) -> bytes:
        mm = self.__dict__.get("_map")
        if mm is None:
            mm = np.memmap(self.path, dtype=np.uint8, mode="r")
            object.__setattr__(self, "_map", mm)
        e = self.entries[i]
        start = int(self.offsets[e])
        return mm[start : start + int(self.lengths[e])].tobytes()

    def subset(self, keep: list[int]) -> PackedIndex:
        return replace(
            self,
            files=[self.files[i] for i in keep],
            labels=[self.labels[i] for i in keep],
            entries=self.entries[np.asarray(keep, dtype=np.int64)],
        )

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_map"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


def pack_path(root: Path, split: str) -> Path:
    return root / f"{split}{SUFFIX}"


def open_split(root: Path, split: str, classes: list[str] | None = None) -> ImageFolderIndex:
    """``root/<split>.gpk`` if it exists, else the folder ``root/<split>`` (see :func:`scan_split`)."""
    path = pack_path(root, split)
    return open_pack(path, classes) if path.is_file() else scan_split(root / split, classes)


def open_pack(path: Path, classes: list[str] | None = None) -> PackedIndex:
    """Read a pack's index. Raises :class:`DataError` for a file that is not a whole pack."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(len(MAGIC))
        f.seek(max(0, size - _TRAILER.size))
        tail = f.read(_TRAILER.size)
        if head != MAGIC or len(tail) != _TRAILER.size or _TRAILER.unpack(tail)[1] != MAGIC:
            raise DataError(f"{path}: not a googlenet pack, or truncated")
        offset = _TRAILER.unpack(tail)[0]
        if not len(MAGIC) <= offset <= size - _TRAILER.size:
            raise DataError(f"{path}: corrupt pack index offset")
        f.seek(offset)
        raw = f.read(size - _TRAILER.size - offset)
    try:
        meta = torch.load(io.BytesIO(raw), weights_only=True)
    except Exception as e:
        raise DataError(f"{path}: unreadable pack index ({e})") from None
    index = _index_from_meta(meta, path, offset)
    if classes is not None and list(index.classes) != list(classes):
        raise DataError(f"{path}: its {len(index.classes)} classes differ from the training classes")
    return index


def _index_from_meta(meta: object, path: Path, data_end: int) -> PackedIndex:
    """The index a pack's metadata describes, after checking that it fits the file: a crafted or damaged index
    must be an error here, not a training run on nothing or a crash in a loader worker."""
    keys = ("classes", "names", "labels", "offsets", "lengths")
    if not isinstance(meta, dict) or any(k not in meta for k in keys):
        raise DataError(
            f"{path}: pack index lacks {', '.join(k for k in keys if not isinstance(meta, dict) or k not in meta)}"
        )
    try:
        names, classes = [str(n) for n in meta["names"]], [str(c) for c in meta["classes"]]
        labels, offsets, lengths = (
            np.asarray(meta[k], dtype=np.int64).reshape(-1) for k in ("labels", "offsets", "lengths")
        )
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: malformed pack index ({e})") from None
    n = len(names)
    if not n or len(labels) != n or len(offsets) != n or len(lengths) != n:
        raise DataError(f"{path}: pack index lists {n} names, {len(labels)} labels, {len(offsets)} offsets")
    if labels.min() < 0 or labels.max() >= len(classes):
        raise DataError(f"{path}: pack labels outside the {len(classes)} classes")
    if offsets.min() < len(MAGIC) or lengths.min() < 1 or (offsets + lengths).max() > data_end:
        raise DataError(f"{path}: pack index points outside the file's image data")
    return PackedIndex(
        files=names,
        labels=labels.tolist(),
        classes=classes,
        path=str(path),
        offsets=offsets,
        lengths=lengths,
        entries=np.arange(n, dtype=np.int64),
    )


# ------------------------------------------------------------------------------------------------ writing


class _Reencoded(torch.utils.data.Dataset):
    """Item i: the image re-encoded as JPEG with its shorter side at most ``short_side``, or the error."""

    def __init__(self, index: ImageFolderIndex, short_side: int | None, quality: int) -> None:
        self.index, self.short_side, self.quality = index, short_side, quality

    def __len__(self) -> int:
        return len(self.index.files)

    def __getitem__(self, i: int) -> tuple[bytes | None, str]:
        try:
            img = decode_rgb_bytes(self.index.read_bytes(i), self.index.files[i])
        except (OSError, ValueError) as e:
            return None, str(e)
        if self.short_side is not None and min(img.shape[-2:]) > self.short_side:
            img = TF.resize(img, [self.short_side], interpolation=InterpolationMode.BILINEAR, antialias=True)
        return encode_jpeg(img, quality=self.quality).numpy().tobytes(), ""


@dataclass
class PackReport:
    images: int
    skipped: list[str]
    source_bytes: int
    pack_bytes: int
    seconds: float


def write_pack(
    index: ImageFolderIndex, path: Path, short_side: int | None = 256, quality: int = 90, workers: int = 4
) -> PackReport:
    """Pack ``index``'s images into ``path``; undecodable files are skipped with a warning each."""
    if short_side is not None and short_side < 1:
        raise ValueError("short_side must be >= 1")
    if not 1 <= quality <= 100:
        raise ValueError("quality must be in [1, 100]")
    start = time.perf_counter()
    loader = torch.utils.data.DataLoader(_Reencoded(index, short_side, quality), batch_size=None, num_workers=workers)
    names, labels, offsets, lengths, skipped = [], [], [], [], []
    with replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(MAGIC)
        for i, (data, error) in enumerate(loader):
            if data is None:
                log.warning("skipping %s", error)
                skipped.append(error)
                continue
            offsets.append(f.tell())
            lengths.append(len(data))
            f.write(data)
            names.append(index.files[i])
            labels.append(index.labels[i])
            if (i + 1) % 10_000 == 0:
                log.info("%s: %d / %d images", path.name, i + 1, len(index.files))
        if not names:
            raise DataError(f"{path}: none of the {len(index.files)} images could be decoded")
        meta = {
            "version": 1,
            "classes": list(index.classes),
            "names": names,
            "labels": torch.tensor(labels, dtype=torch.int64),
            "offsets": torch.tensor(offsets, dtype=torch.int64),
            "lengths": torch.tensor(lengths, dtype=torch.int64),
            "short_side": short_side,
            "quality": quality,
        }
        index_offset = f.tell()
        torch.save(meta, f)
        f.write(_TRAILER.pack(index_offset, MAGIC))
        f.flush()
        os.fsync(f.fileno())
    source_bytes = sum(os.path.getsize(p) for p in index.files if os.path.exists(p))
    return PackReport(len(names), skipped, source_bytes, path.stat().st_size, time.perf_counter() - start)


def prepare(
    source: Path, out: Path, short_side: int | None = 256, quality: int = 90, workers: int = 4
) -> dict[str, PackReport]:
    """Pack ``source/train`` and ``source/val`` (whichever exist; val keeps train's class order) into ``out``."""
    splits = [s for s in ("train", "val") if (source / s).is_dir()]
    if not splits:
        raise DataError(f"{source}: no train/ or val/ folder to pack")
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    # All splits or none: each is written under a temporary name and renamed only when every split is whole,
    # so a failure (or Ctrl-C) half way never leaves a new train split beside an old val split.
    staged = {split: out / f".{split}.{os.getpid()}.tmp{SUFFIX}" for split in splits}
    try:
        reports, classes = {}, None
        for split in splits:
            index = scan_split(source / split, classes)
            classes = classes or index.classes
            reports[split] = write_pack(index, staged[split], short_side, quality, workers)
        for split in splits:
            os.replace(staged[split], pack_path(out, split))
        for stale in {"train", "val"} - set(splits):
            pack_path(out, stale).unlink(missing_ok=True)  # a split of an older pack would not match
    finally:
        for path in staged.values():
            path.unlink(missing_ok=True)
    return reports


@dataclass
class PrepareConfig:
    """What `googlenet prepare` reads (flags, or a TOML file given with --config)."""

    source: str = option(
        help="folder with train/<class>/* and/or val/ (as for train --data)", positional=True, metavar="DIR"
    )
    out: str = option(help="where train.gpk / val.gpk go: then --data DIR", metavar="DIR")
    short_side: int = option(256, "shrink images whose shorter side is larger (0: keep sizes)", min=0)
    quality: int = option(90, "JPEG quality of the re-encoded images (1-100)", min=1, max=100)
    workers: int = option(os.cpu_count() or 1, "decoding processes (default: one per CPU)", min=0)


def run_prepare(cfg: PrepareConfig) -> int:
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; prepare writes a folder (train.gpk, val.gpk)")
    reports = prepare(Path(cfg.source), out, cfg.short_side or None, cfg.quality, cfg.workers)
    for split, r in reports.items():
        print(
            f"{split}: {r.images} images, {r.pack_bytes / 2**20:,.1f} MiB (source {r.source_bytes / 2**20:,.1f} MiB), "
            f"{len(r.skipped)} undecodable skipped, {r.seconds:.1f} s -> {pack_path(out, split)}"
        )
    return 0
