"""`googlenet visualize` and :func:`visualize_channel`: feature visualisation by optimisation.

As in Olah, Mordvintsev and Schubert 2017, "Feature Visualization" (Distill), and their Lucid library: the
image is parameterised in a decorrelated space (a Fourier spectrum scaled by 1/frequency, so that every
frequency is equally easy to change, and colours through the square root of ImageNet's colour correlation
matrix), mapped to [0, 1] by a sigmoid, randomly padded, shifted, scaled and rotated before every forward
pass (transformation robustness: without it the optimum is high-frequency noise), and optimised with Adam
to maximise a channel's mean activation, one neuron (the channel at the centre position), or a direction
in the layer's activation space. As in Lucid, every ReLU's gradient is redirected while an image's gradient
through it is zero everywhere: a channel that no input of the starting image activates would otherwise get
no gradient and stay the grey start.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import MethodType

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from googlenet.checkpoint import LoadedModel, open_checkpoint
from googlenet.config import ConfigError, option
from googlenet.devices import DEVICE_CHOICES, resolve_device
from googlenet.dream import model_input
from googlenet.files import check_output
from googlenet.layers import layer_output, module_name
from googlenet.model import BasicConv2d
from googlenet.preprocessing import Preprocessing

# Lucid's square root of ImageNet's RGB colour correlation matrix (columns: decorrelated components).
COLOR_CORRELATION_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])

Objective = Callable[[Tensor], Tensor]  # layer activation [N, C, H, W] -> one value per image [N]


def _spectrum_scale(h: int, w: int) -> Tensor:
    """1 / frequency per rfft2 coefficient [H, W // 2 + 1] (the lowest clamped to 1 / max(H, W)), times
    sqrt(H * W), as Lucid's fft_image: white noise in this space is natural-image-like (1/f) noise."""
    fy = torch.fft.fftfreq(h).view(-1, 1)
    fx = torch.fft.rfftfreq(w).view(1, -1)
    freqs = (fx * fx + fy * fy).sqrt()
    return math.sqrt(h * w) / freqs.clamp_min(1.0 / max(h, w))


def fourier_image(spectrum: Tensor, scale: Tensor, size: int) -> Tensor:
    """Parameters [N, 3, H, W//2+1, 2] -> pixels [N, 3, H, W] in [0, 1] (decorrelated colour, sigmoid)."""
    image = torch.fft.irfft2(torch.view_as_complex(spectrum) * scale, s=(size, size)) / 4.0
    colors = COLOR_CORRELATION_SQRT.to(image) / COLOR_CORRELATION_SQRT.norm(dim=0).max()
    image = torch.einsum("nchw,dc->ndhw", image, colors)  # each pixel's colour vector times colors.T
    return torch.sigmoid(image)


def _transform(images: Tensor, g: torch.Generator) -> Tensor:
    """Transformation robustness (Lucid's pad, jitter, scale, rotate): pad with grey, then per image a random
    shift (up to 1/32 of the side), scale (0.9-1.1) and rotation (+-10 degrees) in one bilinear resampling."""
    n, _, size, _ = images.shape
    pad = max(2, size // 16)
    padded = F.pad(images, (pad, pad, pad, pad), value=0.5)
    angle = (torch.rand(n, generator=g) * 20 - 10) * math.pi / 180
    scale = 1 / (0.9 + torch.rand(n, generator=g) * 0.2)  # the grid's scale is the inverse of the image's
    shift = (torch.rand(n, 2, generator=g) * 2 - 1) * (pad / padded.shape[-1])
    cos, sin = angle.cos() * scale, angle.sin() * scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(images), list(padded.shape), align_corners=False)
    return F.grid_sample(padded, grid, mode="bilinear", padding_mode="border", align_corners=False)


class RedirectedReLU(torch.autograd.Function):
    """ReLU whose backward lets the gradient through negative inputs where it would raise them, for each image
    whose ordinary ReLU gradient is zero everywhere (Lucid's ``redirected_relu_grad``). Images with any
    ordinary gradient get exactly the ordinary one, so this only moves images that would otherwise be stuck."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        relu_grad = torch.ops.aten.threshold_backward(grad, x, 0)  # what ReLU's own backward computes
        stuck = relu_grad.flatten(1).abs().amax(dim=1) == 0
        if not stuck.any():  # the usual case once the images respond: nothing more to compute
            return relu_grad
        # The loss is minimised: a positive gradient would push an already negative input lower.
        redirected = grad.masked_fill((x < 0) & (grad > 0), 0)
        return torch.where(stuck.view(-1, *[1] * (x.dim() - 1)), redirected, relu_grad)


def _redirected_forward(self: BasicConv2d, x: Tensor) -> Tensor:
    x = self.conv(x)
    return RedirectedReLU.apply(x if self.bn is None else self.bn(x))


@contextmanager
def image_gradients_only(model: nn.Module) -> Iterator[None]:
    """No weight gradients to compute while only the image is optimised; the weights' flags come back after."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


@contextmanager
def redirected_relus(model: nn.Module) -> Iterator[None]:
    """Every conv layer of ``model`` applies :class:`RedirectedReLU` inside the block (instance-level forward)."""
    convs = [m for m in model.modules() if isinstance(m, BasicConv2d)]
    for m in convs:
        m.forward = MethodType(_redirected_forward, m)
    try:
        yield
    finally:
        for m in convs:
            del m.forward


def optimise_images(
    model: nn.Module,
    pre: Preprocessing,
    layer: str,
    objective: Objective,
    n: int = 1,
    size: int = 128,
    steps: int = 256,
    seed: int = 0,
    lr: float = 0.05,
) -> Tensor:
    """``n`` images [n, 3, size, size] in [0, 1] that maximise ``objective`` of ``layer``'s activation."""
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    spectrum = torch.randn(n, 3, size, size // 2 + 1, 2, generator=g) * 0.01  # Lucid's init sd
    spectrum = spectrum.to(device).requires_grad_(True)
    scale = _spectrum_scale(size, size).to(device)
    optimiser = torch.optim.Adam([spectrum], lr=lr)
    with image_gradients_only(model.eval()), redirected_relus(model):
        for _ in range(steps):
            pixels = _transform(fourier_image(spectrum, scale, size), g)
            act = layer_output(model, layer, model_input(pixels, pre)).float()
            loss = -objective(act if act.dim() == 4 else act[:, :, None, None]).sum()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    with torch.no_grad():
        return fourier_image(spectrum, scale, size)


def channel_objective(channels: list[int]) -> Objective:
    """Image i maximises the mean activation of channel ``channels[i]``."""
    index = torch.tensor(channels)
    return lambda act: act[torch.arange(len(channels)), index.to(act.device)].mean(dim=(1, 2))


def neuron_objective(channels: list[int]) -> Objective:
    """Image i maximises channel ``channels[i]`` at the centre position only (one neuron)."""
    index = torch.tensor(channels)

    def objective(act: Tensor) -> Tensor:
        h, w = act.shape[-2:]
        return act[torch.arange(len(channels)), index.to(act.device), h // 2, w // 2]

    return objective


def direction_objective(direction: Tensor) -> Objective:
    """The dot product of each position's activation vector with ``direction`` [C], averaged over positions."""
    return lambda act: torch.einsum("nchw,c->nhw", act, direction.to(act)).mean(dim=(1, 2))


def _network(model: nn.Module | LoadedModel, preprocessing: Preprocessing | None) -> tuple[nn.Module, Preprocessing]:
    if isinstance(model, LoadedModel):
        return model.model, preprocessing or model.preprocessing
    if preprocessing is None:
        raise ValueError("a bare model needs preprocessing= (open_checkpoint(path).preprocessing)")
    return model, preprocessing


def _channel_count(model: nn.Module, pre: Preprocessing, layer: str) -> int:
    with torch.no_grad():
        probe = torch.zeros(1, 3, 64, 64, device=next(model.parameters()).device) + 0.5
        return layer_output(model.eval(), layer, model_input(probe, pre)).shape[1]


def to_uint8(pixels: Tensor) -> Tensor:
    """Float pixels in [0, 1] -> uint8 on the CPU."""
    return (pixels * 255).round().clamp(0, 255).to(torch.uint8).cpu()


def visualize_channels(
    model: nn.Module | LoadedModel,
    layer: str,
    channels: list[int],
    size: int = 128,
    steps: int = 256,
    seed: int = 0,
    neuron: bool = False,
    preprocessing: Preprocessing | None = None,
) -> Tensor:
    """One optimised image per channel, uint8 [len(channels), 3, size, size], optimised together as a batch.

    ``layer``: a module or Caffe name; ``neuron``: the centre position only instead of the channel's mean.
    Raises ValueError for an unknown layer or a channel the layer does not have.
    """
    net, pre = _network(model, preprocessing)
    layer = module_name(net, layer)
    count = _channel_count(net, pre, layer)
    bad = [c for c in channels if not 0 <= c < count]
    if bad:
        raise ValueError(f"layer {layer} has channels 0-{count - 1}; got {bad[0]}")
    objective = neuron_objective(channels) if neuron else channel_objective(channels)
    return to_uint8(optimise_images(net, pre, layer, objective, len(channels), size, steps, seed))


def visualize_channel(
    model: nn.Module | LoadedModel,
    layer: str,
    channel: int,
    size: int = 128,
    steps: int = 256,
    seed: int = 0,
    neuron: bool = False,
    preprocessing: Preprocessing | None = None,
) -> Tensor:
    """uint8 RGB [3, size, size] that maximises ``channel`` of ``layer`` (:func:`visualize_channels`)."""
    return visualize_channels(model, layer, [channel], size, steps, seed, neuron, preprocessing)[0]


def visualize_direction(
    model: nn.Module | LoadedModel,
    layer: str,
    direction: Tensor,
    size: int = 128,
    steps: int = 256,
    seed: int = 0,
    preprocessing: Preprocessing | None = None,
) -> Tensor:
    """uint8 RGB [3, size, size] that maximises the projection of ``layer``'s activations on ``direction``."""
    net, pre = _network(model, preprocessing)
    layer = module_name(net, layer)
    count = _channel_count(net, pre, layer)
    if direction.shape != (count,):
        raise ValueError(f"layer {layer} has {count} channels; the direction has shape {tuple(direction.shape)}")
    objective = direction_objective(direction.float())
    return to_uint8(optimise_images(net, pre, layer, objective, 1, size, steps, seed))[0]


def parse_channels(text: str) -> list[int]:
    """``0-15``, ``3,7,9`` or a mix (``0-3,8``) -> the channel numbers in order."""
    out: list[int] = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ConfigError(f"--channels {text!r}: expected numbers and ranges such as 0-15 or 3,7,9")
        out.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    if not out:
        raise ConfigError(f"--channels {text!r}: no channel")
    return out


def channel_grid(images: Tensor, channels: list[int], layer: str):
    """A matplotlib figure: one tile per channel, labelled with its number."""
    from googlenet.insight_io import pyplot

    plt = pyplot()
    cols = math.ceil(math.sqrt(len(channels)))
    rows = math.ceil(len(channels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.75 * rows + 0.3), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, channel in zip(axes.flat, images, channels):
        ax.imshow(image.permute(1, 2, 0).numpy())
        ax.set_title(str(channel), fontsize=9)
    fig.suptitle(layer, fontsize=10)
    fig.tight_layout()
    return fig


@dataclass
class VisualizeConfig:
    """What `googlenet visualize` reads (flags, or a TOML file given with --config)."""

    checkpoint: str = option(help="checkpoint file or run folder", metavar="CKPT")
    out: str = option(help="output PNG", metavar="FILE.png")
    layer: str = option("inception4a", "layer: a module name (inception4a) or a Caffe name (inception_4a/output)")
    channel: int | None = option(None, "one channel to visualise (default 0 when neither this nor --channels)")
    channels: str | None = option(None, "several channels as a labelled grid: 0-15 or 3,7,9")
    direction: str | None = option(None, "a .npy vector with one value per channel: visualise that direction")
    neuron: bool = option(False, "maximise the centre position only (one neuron) instead of the channel's mean")
    steps: int = option(256, "Adam steps", min=1)
    size: int = option(128, "image side in pixels", min=32)
    seed: int = option(0, "seed of the initial image and the random transformations")
    device: str = option("auto", "auto, cpu or cuda", choices=list(DEVICE_CHOICES))

    def validate(self) -> None:
        given = [f for f in ("channel", "channels", "direction") if getattr(self, f) is not None]
        if len(given) > 1:
            raise ConfigError(f"give one of --channel, --channels, --direction; got {', '.join(given)}")
        if self.channels is not None:
            parse_channels(self.channels)
        check_output(self.out, [self.checkpoint], flag="--out")


def run_visualize(cfg: VisualizeConfig) -> int:
    """`googlenet visualize`: one image, or a grid for --channels, to --out as PNG."""
    from googlenet.insight_io import save_figure, write_png

    loaded = open_checkpoint(cfg.checkpoint, resolve_device(cfg.device))
    if cfg.direction is not None:
        direction = torch.from_numpy(np.load(cfg.direction, allow_pickle=False)).flatten()
        write_png(cfg.out, visualize_direction(loaded, cfg.layer, direction, cfg.size, cfg.steps, cfg.seed))
        what = f"direction {cfg.direction}"
    elif cfg.channels is not None:
        channels = parse_channels(cfg.channels)
        images = visualize_channels(loaded, cfg.layer, channels, cfg.size, cfg.steps, cfg.seed, cfg.neuron)
        save_figure(cfg.out, channel_grid(images, channels, cfg.layer))
        what = f"channels {cfg.channels}"
    else:
        channel = cfg.channel if cfg.channel is not None else 0
        write_png(cfg.out, visualize_channel(loaded, cfg.layer, channel, cfg.size, cfg.steps, cfg.seed, cfg.neuron))
        what = f"{'neuron' if cfg.neuron else 'channel'} {channel}"
    print(f"googlenet: visualize {cfg.layer} {what} -> {cfg.out}")
    return 0
