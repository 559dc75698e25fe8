"""`googlenet explain` and :func:`explain`: which pixels a prediction rests on.

Three attribution methods, from maintained libraries (the optional extra ``explain``):

- ``gradcam``: Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
  Localization", on inception5b by default (``pytorch_grad_cam``);
- ``integrated-gradients``: Sundararajan, Taly and Yan 2017, "Axiomatic Attribution for Deep Networks", from a
  black image (``captum``);
- ``saliency``: Simonyan, Vedaldi and Zisserman 2014, "Deep Inside Convolutional Networks", the absolute
  input gradient (``captum``).

The map covers the evaluation crop the model sees, and is scaled to [0, 1]. Written here: the figure
(the crop, the map over it, the top-5 classes with their probabilities).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from googlenet.checkpoint import LoadedModel, open_checkpoint
from googlenet.config import ConfigError, option
from googlenet.devices import DEVICE_CHOICES, resolve_device
from googlenet.files import check_output
from googlenet.image_decode import decode_rgb
from googlenet.layers import layer_output, resolve_layer

METHODS = ("gradcam", "integrated-gradients", "saliency")
GRADCAM_LAYER = "inception5b"


def require_extra() -> None:
    """A one-line error when the optional libraries are not installed."""
    missing = [m for m in ("pytorch_grad_cam", "captum") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"explain needs {' and '.join(missing)}: pip install -e '.[explain]'")


def _scaled(attribution: Tensor) -> Tensor:
    """[1, 3, H, W] attribution -> [H, W] in [0, 1]: |value| summed over colour, over its 99th percentile."""
    heat = attribution.detach().abs().sum(dim=1)[0].float()
    top = torch.quantile(heat.flatten(), 0.99).clamp_min(1e-12)  # one extreme pixel should not blank the rest
    return (heat / top).clamp(0, 1).cpu()


def attribution_map(
    model: nn.Module,
    x: Tensor,
    method: str,
    target: int,
    layer: str = GRADCAM_LAYER,
    baseline: Tensor | None = None,
) -> Tensor:
    """float [H, W] in [0, 1] for the model input ``x`` [1, 3, H, W] and class ``target``.

    ``baseline``: integrated gradients' starting input (the model input of a black image; zeros if None).
    """
    require_extra()
    if method == "gradcam":
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        with torch.no_grad():
            maps = layer_output(model, layer, x)
        if maps.dim() != 4 or min(maps.shape[-2:]) < 2:  # a 1 x 1 map can only paint the image one colour
            raise ConfigError(
                f"--layer {layer}: Grad-CAM needs spatial maps, and its output is {list(maps.shape)} at this input "
                "size; choose an earlier layer (inception4e, inception3b)"
            )
        module, _ = resolve_layer(model, layer)
        with GradCAM(model=model, target_layers=[module]) as cam:
            heat = cam(input_tensor=x, targets=[ClassifierOutputTarget(target)])  # [1, H, W], scaled to [0, 1]
        return torch.from_numpy(heat[0]).float().clamp(0, 1)
    if method == "integrated-gradients":
        from captum.attr import IntegratedGradients

        baseline = torch.zeros_like(x) if baseline is None else baseline
        return _scaled(IntegratedGradients(model).attribute(x, baselines=baseline, target=target, n_steps=32))
    if method == "saliency":
        from captum.attr import Saliency

        return _scaled(Saliency(model).attribute(x.clone().requires_grad_(True), target=target, abs=True))
    raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")


def explain(
    loaded: LoadedModel, image: Tensor, method: str = "gradcam", target: int | None = None, layer: str = GRADCAM_LAYER
) -> tuple[Tensor, list[tuple[str, float]]]:
    """The map for ``image`` (uint8 RGB [3, H, W]) and the top-5 (class name, probability).

    ``target``: the class index to explain; None: the top class. ``layer``: Grad-CAM's layer (module or Caffe
    name). The map is [S, S] over the checkpoint's evaluation crop (``loaded.preprocessing.crop(image)``).
    """
    model, pre = loaded.model.eval(), loaded.preprocessing
    device = next(model.parameters()).device
    x = pre.to_input(pre.crop(image).unsqueeze(0).to(device))
    with torch.no_grad():
        probs = model(x).float().softmax(dim=1)[0]
    top = probs.topk(min(5, probs.numel()))
    top5 = [(loaded.class_names[i], p) for p, i in zip(top.values.tolist(), top.indices.tolist())]
    if target is None:
        target = int(top.indices[0])
    if not 0 <= target < probs.numel():
        raise ValueError(f"--target {target}: the model has classes 0-{probs.numel() - 1}")
    black = pre.to_input(torch.zeros(1, 3, *x.shape[-2:], dtype=torch.uint8, device=device))
    return attribution_map(model, x, method, target, layer, black), top5


def explain_figure(crop: Tensor, heat: Tensor, top5: list[tuple[str, float]], title: str):
    """A matplotlib figure: the crop, the map over it (jet, half transparent), the top-5 probabilities."""
    from googlenet.insight_io import pyplot

    plt = pyplot()
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(11, 3.6), gridspec_kw={"width_ratios": [1, 1, 1.2]})
    pixels = crop.permute(1, 2, 0).cpu().numpy()
    a.imshow(pixels)
    a.set_title("input (evaluation crop)", fontsize=10)
    b.imshow(pixels)
    b.imshow(heat.numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
    b.set_title(title, fontsize=10)
    for ax in (a, b):
        ax.axis("off")
    names = [name for name, _ in top5][::-1]
    c.barh(range(len(top5)), [100 * p for _, p in top5][::-1], color="tab:blue")
    c.set_yticks(range(len(top5)), names, fontsize=9)
    c.set_xlim(0, 100)
    c.set_xlabel("probability (%)")
    c.set_title("top-5 classes", fontsize=10)
    for i, (_, p) in enumerate(top5[::-1]):
        c.text(min(100 * p + 1, 85), i, f"{100 * p:.1f}%", va="center", fontsize=8)
    fig.tight_layout()
    return fig


@dataclass
class ExplainConfig:
    """What `googlenet explain` reads (flags, or a TOML file given with --config)."""

    image: str = option(help="the image to explain", positional=True, metavar="IMAGE")
    checkpoint: str = option(help="checkpoint file or run folder", metavar="CKPT")
    out: str = option(help="output PNG: the image, the map over it and the top-5 classes", metavar="FILE.png")
    method: str = option("gradcam", "attribution method", choices=list(METHODS))
    target: str | None = option(None, "class to explain, by index or name (default: the top class)")
    layer: str = option(GRADCAM_LAYER, "Grad-CAM's layer (a module or Caffe name)")
    device: str = option("auto", "auto, cpu or cuda", choices=list(DEVICE_CHOICES))

    def validate(self) -> None:
        require_extra()
        if self.method != "gradcam" and self.layer != GRADCAM_LAYER:
            raise ConfigError(f"--layer is Grad-CAM's; --method {self.method} attributes to the input pixels")
        check_output(self.out, [self.image, self.checkpoint], flag="--out")


def class_index(target: str | None, class_names: list[str]) -> int | None:
    """``--target`` as an index: a class name, or a number."""
    if target is None:
        return None
    if target in class_names:
        return class_names.index(target)
    if target.isdigit():
        return int(target)
    raise ConfigError(f"--target {target!r}: neither a class name nor an index")


def run_explain(cfg: ExplainConfig) -> int:
    """`googlenet explain`: the figure to --out as PNG, the top class and the method on stdout."""
    from googlenet.insight_io import save_figure

    loaded = open_checkpoint(cfg.checkpoint, resolve_device(cfg.device))
    image = decode_rgb(cfg.image)
    target = class_index(cfg.target, loaded.class_names)
    heat, top5 = explain(loaded, image, cfg.method, target, cfg.layer)
    name = loaded.class_names[target] if target is not None else top5[0][0]
    save_figure(cfg.out, explain_figure(loaded.preprocessing.crop(image), heat, top5, f"{cfg.method}: {name}"))
    print(f"googlenet: explain {cfg.method} for {name} -> {cfg.out}")
    return 0
