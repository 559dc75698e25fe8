"""`googlenet dream` and :func:`deep_dream`: DeepDream (Mordvintsev, Olah and Tyka 2015, "Inceptionism:
Going Deeper into Neural Networks", and its reference notebook).

Gradient ascent on the image to raise the L2 norm of a layer's activation (the notebook's default
objective: the gradient at the layer is the activation itself), each step normalised by the mean absolute
gradient, the image rolled by a random jitter before each step and back after, and run over an image
pyramid (octaves) from small to large, the detail added at one octave carried up to the next. Pixels are
optimised in [0, 1] and fed through the checkpoint's own preprocessing, and clipped to [0, 1] after every
step, so the result is always a valid image.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from googlenet.checkpoint import LoadedModel, open_checkpoint
from googlenet.config import option
from googlenet.devices import DEVICE_CHOICES, resolve_device
from googlenet.files import check_output
from googlenet.image_decode import decode_rgb
from googlenet.layers import layer_output, module_name
from googlenet.model import MIN_INPUT_SIZE
from googlenet.preprocessing import Preprocessing, luma, normalize


def model_input(pixels: Tensor, pre: Preprocessing) -> Tensor:
    """Float pixels [N, 3, H, W] in [0, 1] -> the model's input, differentiably (grey where it expects grey)."""
    if pre.grayscale:
        pixels = luma(pixels).expand(-1, 3, -1, -1)
    return normalize(pixels, pre.mean, pre.std)


def _objective(model: nn.Module, layer: str, pixels: Tensor, pre: Preprocessing) -> Tensor:
    # Mean rather than the notebook's half sum of squares: the same gradient direction (the step is
    # normalised), and a number comparable across octaves of different sizes.
    return layer_output(model, layer, model_input(pixels, pre)).float().pow(2).mean()


def _step(model: nn.Module, layer: str, img: Tensor, pre: Preprocessing, step: float, jitter: int, g) -> None:
    """One ascent step on ``img`` [1, 3, H, W] in place: jitter, gradient, normalised step, unjitter, clip."""
    ox, oy = (torch.randint(-jitter, jitter + 1, (2,), generator=g).tolist()) if jitter else (0, 0)
    shifted = img.roll((oy, ox), dims=(2, 3)).requires_grad_(True)
    (grad,) = torch.autograd.grad(_objective(model, layer, shifted, pre), shifted)
    # The notebook's step: step_size / mean|g| * g, with step_size in 0-255 pixel units.
    update = (step / 255) * grad / grad.abs().mean().clamp_min(1e-12)
    img.add_(update.roll((-oy, -ox), dims=(2, 3))).clamp_(0, 1)


def _pyramid(image: Tensor, octaves: int, scale: float, min_size: int) -> list[Tensor]:
    """The image and its successively smaller copies (largest first), none below the model's minimum size."""
    levels = [image]
    for _ in range(octaves - 1):
        h, w = (round(s / scale) for s in levels[-1].shape[-2:])
        if min(h, w) < min_size:
            break  # smaller octaves would not fit the network
        levels.append(F.interpolate(levels[-1], size=(h, w), mode="bilinear", align_corners=False))
    return levels


def deep_dream(
    loaded: LoadedModel,
    image: Tensor,
    layer: str = "inception4c",
    octaves: int = 4,
    octave_scale: float = 1.4,
    steps: int = 10,
    step_size: float = 1.5,
    jitter: int = 32,
    seed: int = 0,
    return_objectives: bool = False,
) -> Tensor | tuple[Tensor, list[tuple[float, float]]]:
    """DeepDream ``image`` (uint8 RGB [3, H, W]) on ``layer`` (a module or Caffe name) of ``loaded``'s model.

    Returns:
        uint8 RGB [3, H, W], the input's size; with ``return_objectives`` also, per octave (smallest
        first), the layer's mean squared activation before and after that octave's steps.
    """
    model, pre = loaded.model, loaded.preprocessing
    layer = module_name(model, layer)
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    base = image.to(device).float().unsqueeze(0) / 255
    levels = _pyramid(base, octaves, octave_scale, MIN_INPUT_SIZE[model.config.variant])
    detail = torch.zeros_like(levels[-1])
    objectives = []
    model.eval()
    for octave_base in reversed(levels):
        detail = F.interpolate(detail, size=octave_base.shape[-2:], mode="bilinear", align_corners=False)
        img = (octave_base + detail).clamp(0, 1)
        with torch.no_grad():
            before = _objective(model, layer, img, pre).item()
        for _ in range(steps):
            _step(model, layer, img, pre, step_size, jitter, g)
        with torch.no_grad():
            objectives.append((before, _objective(model, layer, img, pre).item()))
        detail = img - octave_base
    out = (img[0] * 255).round().clamp(0, 255).to(torch.uint8).cpu()
    return (out, objectives) if return_objectives else out


@dataclass
class DreamConfig:
    """What `googlenet dream` reads (flags, or a TOML file given with --config)."""

    image: str = option(help="the image to dream on", positional=True, metavar="IMAGE")
    checkpoint: str = option(help="checkpoint file or run folder", metavar="CKPT")
    out: str = option(help="output PNG", metavar="FILE.png")
    layer: str = option("inception4c", "layer whose activation is amplified: inception4c or inception_4c/output")
    octaves: int = option(4, "image pyramid levels, smallest first", min=1)
    octave_scale: float = option(1.4, "size ratio between octaves", min=1.0)
    steps: int = option(10, "gradient-ascent steps per octave", min=1)
    step_size: float = option(1.5, "step per iteration, in 0-255 pixel units over the mean |gradient|", min=0.0)
    jitter: int = option(32, "largest random shift (pixels) before each step", min=0)
    seed: int = option(0, "seed of the jitter: the same seed gives the same picture")
    device: str = option("auto", "auto, cpu or cuda", choices=list(DEVICE_CHOICES))

    def validate(self) -> None:
        check_output(self.out, [self.image, self.checkpoint], flag="--out")


def run_dream(cfg: DreamConfig) -> int:
    """`googlenet dream`: the dreamed image to --out as PNG."""
    from googlenet.insight_io import write_png

    loaded = open_checkpoint(cfg.checkpoint, resolve_device(cfg.device))
    image = decode_rgb(cfg.image)
    start = time.perf_counter()
    out = deep_dream(
        loaded, image, cfg.layer, cfg.octaves, cfg.octave_scale, cfg.steps, cfg.step_size, cfg.jitter, cfg.seed
    )
    write_png(cfg.out, out)
    print(f"googlenet: dream ({cfg.layer}) -> {cfg.out} in {time.perf_counter() - start:.1f} s")
    return 0
