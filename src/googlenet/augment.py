"""Batched image augmentation on tensors, on whatever device the batch is on.

The crop boxes follow the paper (section 6 of Szegedy et al.; docs/paper.md#training-protocol): a patch of
8%-100% of the image area with aspect ratio in [3/4, 4/3], resized to the training size. The same sampler serves the
per-image CPU path (one box at a time, in loader workers) and the batched device path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

from googlenet.preprocessing import luma

# Paper: "patches of the image whose size is distributed evenly between 8% and 100% of the image area
# with aspect ratio constrained to the interval [3/4, 4/3]".
PAPER_CROP_SCALE = (0.08, 1.0)
PAPER_CROP_RATIO = (3 / 4, 4 / 3)

_ATTEMPTS = 10  # as torchvision's RandomResizedCrop, then fall back to a centre crop


def host_to_device(t: Tensor, device: torch.device | str, dtype: torch.dtype | None = None) -> Tensor:
    """Copy a small CPU tensor (boxes, flags, factors) to ``device`` without making the host wait.

    A plain ``.to("cuda")`` from pageable memory synchronises the stream after the copy, so the host waits
    until every kernel already queued (the previous training step) has run: one such copy per batch
    serialises the preparation and launch of the next step with the GPU's work on this one. From pinned
    memory the copy is queued like a kernel; PyTorch's caching host allocator keeps the pinned buffer alive
    until it has run.
    """
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device=device, dtype=dtype)
    return t.to(dtype=dtype).pin_memory().to(device, non_blocking=True)


def channel_constants(values: tuple[float, ...] | list[float], device: torch.device | str) -> Tensor:
    """Per-channel ``values`` as a float32 [1, C, 1, 1] tensor on ``device``, for :func:`normalize`.

    Batch sources make theirs once: a tensor built from Python numbers on every batch is a copy to the device
    every batch (and with ``new_tensor``, one that waits for the queued kernels).
    """
    return host_to_device(torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1), device)


def _uniforms(n: int, generator: torch.Generator | None) -> Tensor:
    """[n, 2 * tries + 2] uniforms: area fractions, log aspect ratios, then the x and y offsets."""
    return torch.rand(n, 2 * _ATTEMPTS + 2, dtype=torch.float64, generator=generator)


def _first_fitting_sides(
    u: Tensor, image_area: Tensor | float, scale: tuple[float, float], ratio: tuple[float, float], fits
) -> tuple[Tensor, Tensor, Tensor]:
    """torchvision's rejection sampler, batched: up to ``_ATTEMPTS`` tries of an area fraction uniform in
    ``scale`` and a log aspect ratio uniform in ``log(ratio)`` (from the first 2 x tries columns of ``u``).

    Returns the sides ``round(sqrt(area * aspect))`` and ``round(sqrt(area / aspect))`` of the first try
    for which both are positive and ``fits(side_a, side_b)`` holds ([N] each; try 0's where none does),
    and whether any try did.
    """
    area = image_area * (scale[0] + (scale[1] - scale[0]) * u[:, :_ATTEMPTS])
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * u[:, _ATTEMPTS : 2 * _ATTEMPTS])
    a = torch.round(torch.sqrt(area * aspect))
    b = torch.round(torch.sqrt(area / aspect))
    valid = (a > 0) & (b > 0) & fits(a, b)
    first = valid.double().argmax(dim=1, keepdim=True)  # first valid try (0 where none is)
    return a.gather(1, first).squeeze(1), b.gather(1, first).squeeze(1), valid.any(dim=1)


def random_resized_boxes(
    heights: Tensor,
    widths: Tensor,
    scale: tuple[float, float] = PAPER_CROP_SCALE,
    ratio: tuple[float, float] = PAPER_CROP_RATIO,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sample one crop box per image, as torchvision's RandomResizedCrop does, for a whole batch at once.

    Area fraction uniform in ``scale``, log aspect ratio uniform in ``log(ratio)``; up to 10 tries per image,
    then a centre crop with the aspect ratio clamped into ``ratio``. :func:`random_resized_box` is the same
    sampler for one image without tensor overhead (same random draws, same boxes).

    Args:
        heights, widths: int64 tensors [N] of image sizes (on the CPU).
        generator: source of randomness (CPU).

    Returns:
        float64 tensor [N, 4] of integer-valued boxes (x0, y0, x1, y1), x1 - x0 = crop width.
    """
    n = heights.numel()
    u = _uniforms(n, generator)
    h_img, w_img = heights.double().unsqueeze(1), widths.double().unsqueeze(1)
    # aspect = width / height here (RandomResizedCrop's convention)
    cw, ch, ok = _first_fitting_sides(u, h_img * w_img, scale, ratio, lambda w, h: (w <= w_img) & (h <= h_img))

    # Fallback: the largest centre crop whose aspect ratio lies in the allowed range.
    hi_, wi = heights.double(), widths.double()
    in_ratio = wi / hi_
    fw = torch.where(in_ratio > ratio[1], torch.round(hi_ * ratio[1]), wi)
    fh = torch.where(in_ratio < ratio[0], torch.round(wi / ratio[0]), hi_)
    cw, ch = torch.where(ok, cw, fw), torch.where(ok, ch, fh)

    x0 = torch.where(ok, torch.floor(u[:, -2] * (wi - cw + 1)), torch.round((wi - cw) / 2))
    y0 = torch.where(ok, torch.floor(u[:, -1] * (hi_ - ch + 1)), torch.round((hi_ - ch) / 2))
    return torch.stack([x0, y0, x0 + cw, y0 + ch], dim=1)


def random_resized_box(
    height: int,
    width: int,
    scale: tuple[float, float] = PAPER_CROP_SCALE,
    ratio: tuple[float, float] = PAPER_CROP_RATIO,
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """:func:`random_resized_boxes` for one image in plain Python: the per-image loader path (~30x faster)."""
    u = _uniforms(1, generator)[0].tolist()
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    for i in range(_ATTEMPTS):
        area = height * width * (scale[0] + (scale[1] - scale[0]) * u[i])
        aspect = math.exp(lo + (hi - lo) * u[_ATTEMPTS + i])
        cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < cw <= width and 0 < ch <= height:
            x0, y0 = math.floor(u[-2] * (width - cw + 1)), math.floor(u[-1] * (height - ch + 1))
            return x0, y0, x0 + cw, y0 + ch
    in_ratio = width / height
    cw = round(height * ratio[1]) if in_ratio > ratio[1] else width
    ch = round(width / ratio[0]) if in_ratio < ratio[0] else height
    x0, y0 = round((width - cw) / 2), round((height - ch) / 2)
    return x0, y0, x0 + cw, y0 + ch


def crop_resize(images: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Cut ``boxes`` out of ``images`` [N, C, H, W] (float) and resize each to ``size`` x ``size``, batched.

    ``roi_align`` with pixel-centred sampling (aligned=True) is bilinear interpolation when enlarging and
    averages ceil(box/size) samples per output pixel when shrinking, so it is area-like, not aliased.
    """
    n = images.shape[0]
    rois = torch.cat([torch.arange(n, dtype=boxes.dtype).unsqueeze(1), boxes], dim=1)
    rois = host_to_device(rois, images.device, images.dtype)
    return roi_align(images, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def random_flip(images: Tensor, flip: Tensor) -> Tensor:
    """Mirror the images [N, C, H, W] where the bool mask ``flip`` [N] is set."""
    flip = host_to_device(flip, images.device).view(-1, 1, 1, 1)
    return torch.where(flip, images.flip(-1), images)


# Random erasing (Zhong et al., arXiv 1708.04896), with torchvision's RandomErasing ranges.
ERASE_SCALE = (0.02, 0.33)
ERASE_RATIO = (0.3, 3.3)


def random_erase_boxes(
    n: int,
    height: int,
    width: int,
    prob: float,
    scale: tuple[float, float] = ERASE_SCALE,
    ratio: tuple[float, float] = ERASE_RATIO,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One rectangle per image to erase with probability ``prob``, sampled as torchvision's RandomErasing.

    Area fraction uniform in ``scale``, log aspect ratio uniform in ``log(ratio)``, up to 10 tries for a
    rectangle that fits strictly inside the image, then a uniform position. Images not erased (not drawn,
    or no try fitted) get the empty box (0, 0, 0, 0). Returns int64 [N, 4] boxes (x0, y0, x1, y1).
    """
    u = torch.rand(n, 2 * _ATTEMPTS + 3, dtype=torch.float64, generator=generator)
    # aspect = height / width here (RandomErasing's convention), and the rectangle must fit strictly inside
    eh, ew, fitted = _first_fitting_sides(u, height * width, scale, ratio, lambda h, w: (h < height) & (w < width))
    keep = fitted & (u[:, -3] < prob)
    eh, ew = torch.where(keep, eh, 0.0), torch.where(keep, ew, 0.0)
    y0 = torch.where(keep, torch.floor(u[:, -2] * (height - eh + 1)), 0.0)
    x0 = torch.where(keep, torch.floor(u[:, -1] * (width - ew + 1)), 0.0)
    return torch.stack([x0, y0, x0 + ew, y0 + eh], dim=1).long()


def erase(images: Tensor, boxes: Tensor, value: float = 0.0) -> Tensor:
    """Set the pixels of ``images`` [N, C, H, W] inside ``boxes`` [N, 4] (x0, y0, x1, y1) to ``value``.

    One masked fill for the whole batch; on normalised images ``value`` 0 is the dataset mean.
    """
    b = host_to_device(boxes, images.device).view(-1, 4, 1, 1)
    ys = torch.arange(images.shape[-2], device=images.device).view(1, -1, 1)
    xs = torch.arange(images.shape[-1], device=images.device).view(1, 1, -1)
    inside = (ys >= b[:, 1]) & (ys < b[:, 3]) & (xs >= b[:, 0]) & (xs < b[:, 2])
    return images.masked_fill(inside.unsqueeze(1), value)


def photometric(images: Tensor, factors: Tensor) -> Tensor:
    """Brightness, contrast and saturation distortions (after Howard, arXiv 1312.5402), per image.

    Args:
        images: float [N, 3, H, W] in [0, 1].
        factors: [N, 3] multipliers for brightness, contrast, saturation (1 = unchanged).
    """
    f = host_to_device(factors, images.device, images.dtype)
    b, c, s = (f[:, i].view(-1, 1, 1, 1) for i in range(3))
    x = images * b
    mean_grey = luma(x).mean(dim=(2, 3), keepdim=True)
    x = (x - mean_grey) * c + mean_grey
    grey = luma(x)
    x = (x - grey) * s + grey
    return x.clamp_(0.0, 1.0)


def photometric_factors(n: int, strength: float, generator: torch.Generator | None = None) -> Tensor:
    """[N, 3] factors uniform in [1 - strength, 1 + strength]."""
    return 1.0 + (torch.rand(n, 3, generator=generator) * 2 - 1) * strength


def resize_square(images: Tensor, size: int) -> Tensor:
    """Resize float images [N, C, H, W] to ``size`` x ``size`` (bilinear, antialiased when shrinking)."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def crop_resize_ragged(images: list[Tensor], boxes: Tensor, size: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """:func:`crop_resize` for images of different sizes: one ``roi_align`` over a canvas holding them all.

    Each image [3, Hi, Wi] (uint8 or float, on one device) is placed on a tall canvas with a one-pixel
    replicated border, so sampling at its edges clamps exactly as it would on the image alone. One batched
    kernel replaces a Python loop of per-image resizes (the slow part of per-image GPU augmentation).

    Returns:
        [N, 3, size, size] of ``dtype`` in the images' value range.
    """
    device = images[0].device
    heights = [img.shape[-2] + 2 for img in images]
    width = max(img.shape[-1] for img in images) + 2
    canvas = torch.zeros(images[0].shape[0], sum(heights), width, device=device, dtype=dtype)
    offsets = []
    row = 0
    for img, h in zip(images, heights):
        padded = F.pad(img.to(dtype).unsqueeze(0), (1, 1, 1, 1), mode="replicate")[0]
        canvas[:, row : row + h, : padded.shape[-1]] = padded
        offsets.append(row + 1)
        row += h
    shift = torch.tensor([[1.0, off, 1.0, off] for off in offsets], dtype=boxes.dtype)
    rois = torch.cat([torch.zeros(len(images), 1, dtype=boxes.dtype), boxes + shift], dim=1)
    return roi_align(
        canvas.unsqueeze(0),
        host_to_device(rois, device, dtype),
        output_size=(size, size),
        spatial_scale=1.0,
        sampling_ratio=-1,
        aligned=True,
    )


def centre_boxes(heights: list[int], widths: list[int], size: int, resize_ratio: float) -> Tensor:
    """Boxes equal to "resize the shorter side to round(size * resize_ratio), then centre-crop size x size".

    The integer rounding follows torchvision's resize and center_crop, so the boxes select the same pixels.
    """
    short_target = round(size * resize_ratio)
    out = []
    for h, w in zip(heights, widths):
        short, long = min(h, w), max(h, w)
        new_long = int(short_target * long / short)
        new_h, new_w = (short_target, new_long) if h <= w else (new_long, short_target)
        top, left = int(round((new_h - size) / 2)), int(round((new_w - size) / 2))
        sy, sx = h / new_h, w / new_w  # resized pixel -> original pixel
        out.append([left * sx, top * sy, (left + size) * sx, (top + size) * sy])
    return torch.tensor(out, dtype=torch.float64)
