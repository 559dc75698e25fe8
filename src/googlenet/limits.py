"""Sizes that cannot fit: refused with the estimate before anything is allocated.

The activations of a forward pass grow with the square of the input size, so ``--img-size 5000`` asks for
about 500x the memory of 224 px per image: left alone, the kernel kills the process without a word. The
estimate sums every layer's output.
That sum is what a training step keeps for its backward pass; an inference pass frees most of it as it goes,
so the estimate is an upper bound there and refuses only what could not possibly fit.
"""

from __future__ import annotations

import os

import torch

from googlenet.model import MIN_INPUT_SIZE, create_model

# Far above any size GoogLeNet is used at (the paper's largest test scale is 352 px); a larger input is a
# typo, and even the shapes-only estimate of one would take a while.
MAX_INPUT_SIZE = 4096


class SizeError(ValueError):
    """An input size or batch that is outside the variant's range or cannot fit in memory."""


def check_img_size(variant: str, img_size: int, flag: str = "--img-size") -> None:
    """The variant's valid range of input sizes (its smallest works through every pooling layer)."""
    low = MIN_INPUT_SIZE[variant]
    if not low <= img_size <= MAX_INPUT_SIZE:
        raise SizeError(f"{flag} {img_size} is outside {variant}'s range {low}-{MAX_INPUT_SIZE} px")


def activation_bytes(variant: str, img_size: int, batch: int) -> int:
    """float32 bytes of every layer's output for ``batch`` images of ``img_size`` px.

    Measured by one real forward pass of one image at ``min(img_size, 224)`` px and scaled with the area
    (outputs of strided layers grow with it, up to rounding): cheap, and exact at and below 224 px.
    """
    probe = min(img_size, 224)
    model = create_model(variant, aux_logits=False).eval()
    total = 0

    def count(module, inputs, output):
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * 4

    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, probe, probe))
    finally:
        for hook in hooks:
            hook.remove()
    return int(total * batch * (img_size / probe) ** 2)


def available_bytes(device: torch.device) -> int:
    """Free memory on ``device``: the GPU's free memory, or the CPU's MemAvailable (all of RAM where unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(variant: str, img_size: int, batch: int, device: torch.device, flag: str = "--img-size") -> None:
    """Refuse an input size (and batch) whose activations alone exceed the device's free memory."""
    check_img_size(variant, img_size, flag)
    need, free = activation_bytes(variant, img_size, batch), available_bytes(device)
    if need > free:
        raise SizeError(
            f"{flag} {img_size} with {batch} per pass needs about {need / 2**30:.1f} GiB of activations, "
            f"more than the {free / 2**30:.1f} GiB free on {device.type}; use a smaller size or --batch-size"
        )
