"""Batch sources: normalised float batches on the training device, sharded across processes.

A source yields ``(images, labels, bad_files)`` for one epoch. Batches are cut from a permutation that
depends only on (seed, epoch); each process takes a contiguous slice of every global batch, so N processes
with global batch B see exactly the samples one process with batch B sees, with the same augmentation.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.io import ImageReadMode, decode_jpeg

from googlenet.augment import (
    PAPER_CROP_RATIO,
    centre_boxes,
    channel_constants,
    crop_resize,
    crop_resize_ragged,
    erase,
    host_to_device,
    photometric,
    photometric_factors,
    random_erase_boxes,
    random_flip,
    random_resized_box,
    random_resized_boxes,
    resize_square,
)
from googlenet.data import (
    CropSpec,
    EncodedImageDataset,
    ImageFolderDataset,
    collate_skipping_bad,
    sample_generator,
)
from googlenet.image_decode import ImageRefused, check_header, decode_rgb_bytes
from googlenet.preprocessing import RESIZE_RATIO, normalize

Batch = tuple[Tensor, Tensor, list[str]]


@dataclass(frozen=True)
class Augmentation:
    """Training-time augmentation settings shared by both sources.

    Attributes:
        crop_scale: (min, max) area fraction of the random-resized crop; None disables cropping.
        crop_ratio: aspect-ratio range of the crop.
        hflip: random horizontal mirror.
        photometric: brightness/contrast/saturation strength (0 = off).
        random_interpolation: random resize method per image (folder data only; device crops are bilinear).
        erase: probability of random erasing, applied after normalisation (0 = off).
    """

    crop_scale: tuple[float, float] | None = (0.08, 1.0)
    crop_ratio: tuple[float, float] = PAPER_CROP_RATIO
    hflip: bool = True
    photometric: float = 0.0
    random_interpolation: bool = False
    erase: float = 0.0


def _generator(seed: int, epoch: int, batch: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 100_003 + batch + 7)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, shuffle: bool, drop_last: bool) -> list[Tensor]:
    """Global batches of sample indices for one epoch."""
    order = torch.randperm(n, generator=_generator(seed, epoch, -1)) if shuffle else torch.arange(n)
    batches = list(order.split(batch_size))
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def local_slice(n: int, rank: int, world: int) -> slice:
    """The contiguous part of a global batch of ``n`` samples that process ``rank`` of ``world`` handles."""
    per = -(-n // world)
    return slice(rank * per, min((rank + 1) * per, n))


class InMemorySource:
    """A dataset held as one uint8 tensor [N, C, H, W] on the device (Fashion-MNIST: 47 MB).

    Cropping, flipping and resizing run batched on the device, so no loader process is involved.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        batch_size: int,
        train: bool,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        aug: Augmentation | None = None,
        device: torch.device | str = "cpu",
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        if images.dim() == 3:
            images = images.unsqueeze(1)
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.batch_size, self.train = batch_size, train
        self.mean, self.std = channel_constants(mean, self.images.device), channel_constants(std, self.images.device)
        self.aug = aug or Augmentation()
        self.seed, self.rank, self.world = seed, rank, world

    def __len__(self) -> int:
        return len(self.images)

    def num_batches(self) -> int:
        n, b = len(self.images), self.batch_size
        return n // b if self.train else -(-n // b)

    def batches(self, epoch: int, size: int, skip: int = 0) -> Iterator[Batch]:
        order = epoch_batches(len(self.images), self.batch_size, self.seed, epoch, self.train, self.train)
        h, w = self.images.shape[-2:]
        for b, idx in enumerate(order):
            if b < skip:
                continue
            part = local_slice(len(idx), self.rank, self.world)
            local = host_to_device(idx[part], self.images.device)
            x = self.images[local].float().div_(255)
            g = _generator(self.seed, epoch, b)
            x = self._augment(x, len(idx), part, h, w, size, g) if self.train else resize_square(x, size)
            if x.shape[1] == 1:  # grey: the same values on all three channels
                x = x.expand(-1, 3, -1, -1)
            x = normalize(x, self.mean, self.std)
            if self.train and self.aug.erase > 0:
                x = erase(x, random_erase_boxes(len(idx), size, size, self.aug.erase, generator=g)[part])
            yield x.contiguous(), self.labels[local], []

    def _augment(self, x: Tensor, n: int, part: slice, h: int, w: int, size: int, g: torch.Generator) -> Tensor:
        # Draw for the whole global batch, then slice: identical crops whatever the number of processes.
        aug = self.aug
        if aug.crop_scale is not None:
            boxes = random_resized_boxes(torch.full((n,), h), torch.full((n,), w), aug.crop_scale, aug.crop_ratio, g)
            x = crop_resize(x, boxes[part], size)
        else:
            x = resize_square(x, size)
        if aug.hflip:
            x = random_flip(x, (torch.rand(n, generator=g) < 0.5)[part])
        if aug.photometric > 0 and x.shape[1] == 3:
            x = photometric(x, photometric_factors(n, aug.photometric, g)[part])
        return x


class _KeyedBatchSampler:
    """Yields this process's part of each global batch as dataset keys ``(index, epoch, size)``."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, rank: int, world: int) -> None:
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world = rank, world
        self.epoch, self.size, self.skip = 0, 224, 0

    def _batches(self) -> list[Tensor]:
        return epoch_batches(self.n, self.batch_size, self.seed, self.epoch, self.shuffle, self.shuffle)

    def __len__(self) -> int:
        return len(self._batches()) - self.skip

    def __iter__(self):
        for idx in self._batches()[self.skip :]:
            yield [(int(i), self.epoch, self.size) for i in idx[local_slice(len(idx), self.rank, self.world)]]


class FolderSource:
    """Image files as normalised float batches on the device.

    Two ways to get there, same crops (boxes and flips drawn from the same per-sample generators):
    - default: DataLoader workers decode and crop to uint8; the device converts and normalises.
    - ``decode_on_device``: workers only read the files' bytes; the device decodes the batch (batched nvJPEG
      on a GPU; PIL-class fallback per file for anything else) and crops all images in one ``roi_align``
      (:func:`crop_resize_ragged`). Interpolation is then always bilinear (no per-image random method).
    """

    def __init__(
        self,
        dataset: ImageFolderDataset,
        *,
        batch_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        aug: Augmentation | None = None,
        device: torch.device | str = "cpu",
        workers: int = 4,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        decode_on_device: bool = False,
    ) -> None:
        self.dataset, self.batch_size = dataset, batch_size
        self.train = dataset.spec.train
        self.aug = aug or Augmentation()
        self.device = torch.device(device)
        self.mean, self.std = channel_constants(mean, self.device), channel_constants(std, self.device)
        self.seed = seed
        self.decode_on_device = decode_on_device
        self.sampler = _KeyedBatchSampler(len(dataset), batch_size, self.train, seed, rank, world)
        self.loader = torch.utils.data.DataLoader(
            EncodedImageDataset(dataset.index) if decode_on_device else dataset,
            batch_sampler=self.sampler,
            num_workers=workers,
            collate_fn=list if decode_on_device else collate_skipping_bad,
            pin_memory=self.device.type == "cuda" and not decode_on_device,
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
            # Its own generator: creating an iterator must not draw from the global RNG (dropout's), or a
            # resumed run would drift from an uninterrupted one. Augmentation is seeded per sample anyway.
            generator=torch.Generator().manual_seed(seed),
        )

    def __len__(self) -> int:
        return len(self.dataset)

    def num_batches(self) -> int:
        n, b = len(self.dataset), self.batch_size
        return n // b if self.train else -(-n // b)

    def batches(self, epoch: int, size: int, skip: int = 0) -> Iterator[Batch]:
        self.sampler.epoch, self.sampler.size, self.sampler.skip = epoch, size, skip
        for b, batch in enumerate(self.loader, start=skip):
            if self.decode_on_device:
                x, labels, bad = self._decode_and_crop(batch, epoch, size)
            else:
                images, labels, bad = batch
                x = images.to(self.device, non_blocking=True).float().div_(255)
            # Random draws for the whole global batch (the same for any process count), then this rank's part.
            g = _generator(self.seed, epoch, b)
            n = self.batch_size
            part = local_slice(n, self.sampler.rank, self.sampler.world)
            train = self.train and len(x) > 0
            if train and self.aug.photometric > 0:
                x = photometric(x, photometric_factors(n, self.aug.photometric, g)[part][: len(x)])
            x = normalize(x, self.mean, self.std)
            if train and self.aug.erase > 0:
                x = erase(x, random_erase_boxes(n, size, size, self.aug.erase, generator=g)[part][: len(x)])
            yield x, labels.to(self.device, non_blocking=True), bad

    def _decode_and_crop(self, items: list, epoch: int, size: int) -> tuple[Tensor, Tensor, list[str]]:
        decoded = decode_batch([it[0] for it in items], [it[2] for it in items], self.device)
        good = [(img, it) for img, it in zip(decoded, items) if not isinstance(img, str)]
        bad = [msg for msg in decoded if isinstance(msg, str)]
        if not good:
            return torch.empty(0, 3, size, size, device=self.device), torch.empty(0, dtype=torch.long), bad
        images = [img for img, _ in good]
        spec = self.dataset.spec
        if self.train:
            boxes, flips = [], []
            for img, it in good:
                g = sample_generator(self.seed, epoch, it[3])  # the worker path's generator: same draws
                boxes.append(random_resized_box(img.shape[-2], img.shape[-1], spec.scale, spec.ratio, g))
                flips.append(spec.hflip and bool(torch.rand(1, generator=g) < 0.5))
            x = crop_resize_ragged(images, torch.tensor(boxes, dtype=torch.float64), size)
            x = random_flip(x, torch.tensor(flips))
        else:
            heights, widths = [img.shape[-2] for img in images], [img.shape[-1] for img in images]
            x = crop_resize_ragged(images, centre_boxes(heights, widths, size, RESIZE_RATIO), size)
        return x.div_(255).clamp_(0, 1), host_to_device(torch.tensor([it[1] for _, it in good]), self.device), bad


def decode_batch(encoded: list[Tensor], names: list[str], device: torch.device) -> list[Tensor | str]:
    """Decode a batch of files' bytes to uint8 RGB on ``device``; an error message where one cannot be.

    Every header is checked first (:func:`~googlenet.image_decode.check_header`: the pixel limit); the
    JPEGs then take one batched call on the device (nvJPEG on CUDA), and the rest, or all of them if the
    batched call fails, decode one by one through :func:`~googlenet.image_decode.decode_rgb_bytes`.
    """
    out: list[Tensor | str | None] = [None] * len(encoded)
    jpegs: list[int] = []
    for i, (data, name) in enumerate(zip(encoded, names)):
        try:
            if check_header(data.numpy().tobytes(), name) == "JPEG":
                jpegs.append(i)
        except ImageRefused as e:
            out[i] = str(e)
    try:
        decoded = decode_jpeg([encoded[i] for i in jpegs], mode=ImageReadMode.RGB, device=device) if jpegs else []
        for i, img in zip(jpegs, decoded):
            out[i] = img
    except (RuntimeError, ValueError):
        pass
    for i, item in enumerate(out):
        if item is None:
            try:
                out[i] = decode_rgb_bytes(encoded[i].numpy().tobytes(), names[i]).to(device)
            except ImageRefused as e:
                out[i] = str(e)
    return out


def folder_crop_spec(aug: Augmentation, train: bool) -> CropSpec:
    """The per-image crop the loader workers apply for ``aug``."""
    if not train:
        return CropSpec(train=False)
    scale = aug.crop_scale if aug.crop_scale is not None else (1.0, 1.0)
    return CropSpec(True, scale, aug.crop_ratio, aug.random_interpolation, aug.hflip)
