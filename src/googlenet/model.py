"""GoogLeNet / Inception v1 ("Going Deeper with Convolutions", Szegedy et al., CVPR 2015, arXiv 1409.4842).

Two variants share one class, :class:`GoogLeNet`:

* ``"googlenet"``: the paper's network as published (Table 1 and Figure 3): LRN, true 5x5 branches,
  3x3/2 ceil-mode max-pools, ReLU after every convolution, biases, no BatchNorm, dropout 0.4, and the two
  auxiliary classifiers on 4a and 4d. 6,998,552 parameters, 13,378,280 with the auxiliary heads (equal to
  Caffe's ``bvlc_googlenet``).
* ``"googlenet_bn"``: torchvision's ``googlenet``, layer for layer, so its state_dict loads with
  ``strict=True`` and gives the same logits. It deviates from the paper where torchvision does (BatchNorm,
  3x3 in the "5x5" branch, a 2x2 fourth max-pool, dropout 0.2, adaptive 4x4 aux pooling, 2048->1024 aux FC).

Module names follow torchvision (conv1, maxpool1, conv2, conv3, maxpool2, inception3a ... inception5b,
aux1 on 4a, aux2 on 4d, avgpool, dropout, fc) in both variants so tools and weights carry across.

How the auxiliary logits leave ``forward``: the return type depends on an explicit argument, never on
``model.training``. ``model(x)`` returns the logits tensor; ``model(x, with_aux=True)`` returns
:class:`GoogLeNetOutputs` ``(logits, aux_4a, aux_4d)``. ``torch.compile`` and ``DistributedDataParallel``
only see ``forward`` and pass the keyword through, so a training step reads
``logits, aux_4a, aux_4d = model(x, with_aux=True)`` everywhere, eager, compiled or wrapped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import fuse_conv_bn_eval

from googlenet.preprocessing import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "MIN_INPUT_SIZE",
    "GoogLeNet",
    "GoogLeNetConfig",
    "GoogLeNetOutputs",
    "create_model",
    "list_models",
]

# Smallest height/width each variant accepts, found by trying every size (tests check both edges). The
# paper's fourth pool is 3x3/2 and needs a 2x2 map, which needs 31 px; torchvision's 2x2/2 pool takes a
# 1x1 map, hence its documented 15 px.
MIN_INPUT_SIZE = {"googlenet": 31, "googlenet_bn": 15}

# torchvision's weights were ported from TF-slim, which expects inputs in [-1, 1]. With
# transform_input=True the model takes ImageNet mean/std-normalised input and remaps it to that range.
# bvlc_googlenet's training-set means in BGR order (its deploy preprocessing).
_CAFFE_BGR_MEAN = (104.0, 117.0, 123.0)


class GoogLeNetOutputs(NamedTuple):
    """Returned by ``forward(x, with_aux=True)``: main logits and the heads on 4a and 4d."""

    logits: Tensor
    aux_4a: Tensor
    aux_4d: Tensor


@dataclass(frozen=True)
class GoogLeNetConfig:
    """Everything needed to rebuild a model; saved inside every checkpoint.

    Attributes:
        variant: "googlenet" (paper) or "googlenet_bn" (torchvision-compatible).
        num_classes: size of the classifier output.
        aux_logits: build the two auxiliary classifiers (training-time only in the paper).
        dropout: main-head dropout; None picks the variant's (paper 0.4, torchvision 0.2).
        aux_dropout: auxiliary-head dropout (0.7 in both).
        transform_input: remap ImageNet-normalised input to [-1, 1] (torchvision weights expect it).
        caffe_input: remap ImageNet-normalised RGB to Caffe's input, BGR in 0-255 minus the means
            104/117/123 (weights imported from bvlc_googlenet expect it); exact, also at the padded borders.
    """

    variant: str = "googlenet"
    num_classes: int = 1000
    aux_logits: bool = True
    dropout: float | None = None
    aux_dropout: float = 0.7
    transform_input: bool = False
    caffe_input: bool = False

    @property
    def paper(self) -> bool:
        return self.variant == "googlenet"

    def to_dict(self) -> dict:
        return asdict(self)


class BasicConv2d(nn.Module):
    """Conv + ReLU (paper: with bias) or Conv + BN + ReLU (torchvision: no bias, BN eps 1e-3)."""

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool, **conv_kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=not batch_norm, **conv_kwargs)
        # eps 1e-3 is TF-slim's, which torchvision kept for its ported weights.
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001) if batch_norm else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x, inplace=True)


def divide_by_power(x: Tensor, base: Tensor, beta: float) -> Tensor:
    """``x / base ** beta``; for the paper's beta of 0.75 as x / (sqrt(base) * sqrt(sqrt(base))). Square roots
    are vectorised everywhere, a general power is not: in onnxruntime's CPU kernels Pow took a fifth of the
    int8 paper variant's time (docs/deploy.md). One division, not a reciprocal and a product: one pass less."""
    if beta == 0.75:
        root = base.sqrt()
        return x / (root * root.sqrt())
    return x * base.pow(-beta)


class LocalResponseNorm(nn.Module):
    """Cross-channel LRN exactly as Caffe and ``nn.LocalResponseNorm`` define it, computed faster.

    b_c = a_c / (k + alpha / size * sum of a_j^2 over the ``size`` channels j centred on c) ^ beta.
    ``nn.LocalResponseNorm`` forms the window sum with a 3-D average pool over a padded copy, about a quarter
    of the paper variant's CPU training step and a format change under channels_last. Here the whole
    denominator's base is one 1x1 convolution of the squares: a fixed band matrix holding alpha / size (a
    small GEMM; memory format kept) with k as its bias, so an exported graph has no separate scale and add
    (one int8 operator and its quantise nodes fewer). Computed in float32 even under autocast. No parameters:
    state_dicts are unchanged.
    """

    def __init__(
        self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0, channels: int | None = None
    ) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k
        # With the channel count known the band is built once (not saved in checkpoints), so an exported
        # graph holds it as a constant instead of the shape, range and comparison nodes that build it.
        band, bias = (None, None) if channels is None else self._band_and_bias(channels, torch.empty(0))
        self.register_buffer("band", band, persistent=False)
        self.register_buffer("bias", bias, persistent=False)

    def _band_and_bias(self, channels: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """A 0/1 band (exact in any dtype; alpha / size joins it in forward) and the bias k: output channel c
        sums input channels c - size//2 ... c + (size-1)//2, as nn.LocalResponseNorm pads."""
        idx = torch.arange(channels, device=like.device)
        offset = idx.view(1, -1) - idx.view(-1, 1)
        band = (offset >= -(self.size // 2)) & (offset <= (self.size - 1) // 2)
        bias = torch.full((channels,), self.k, dtype=like.dtype, device=like.device)
        return band.to(like.dtype).view(channels, channels, 1, 1), bias

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
            built = self.band is not None and len(self.band) == x.shape[1]
            band, bias = (self.band, self.bias) if built else self._band_and_bias(x.shape[1], xf)
            base = F.conv2d(xf * xf, band.to(xf.dtype) * (self.alpha / self.size), bias.to(xf.dtype))
            y = divide_by_power(xf, base, self.beta)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


class Inception(nn.Module):
    """An Inception module: four branches concatenated as 1x1, 3x3, 5x5, pool-proj (Figure 2b).

    Argument names are the column names of Table 1.
    """

    def __init__(
        self,
        in_channels: int,
        ch1x1: int,
        ch3x3red: int,
        ch3x3: int,
        ch5x5red: int,
        ch5x5: int,
        pool_proj: int,
        batch_norm: bool,
        true_5x5: bool,
    ) -> None:
        super().__init__()
        bn = batch_norm
        self.branch1 = BasicConv2d(in_channels, ch1x1, bn, kernel_size=1)
        self.branch2 = nn.Sequential(
            BasicConv2d(in_channels, ch3x3red, bn, kernel_size=1),
            BasicConv2d(ch3x3red, ch3x3, bn, kernel_size=3, padding=1),
        )
        # torchvision's "5x5" branch is a 3x3 conv (vision issue #906, kept for its weights).
        k5 = 5 if true_5x5 else 3
        self.branch3 = nn.Sequential(
            BasicConv2d(in_channels, ch5x5red, bn, kernel_size=1),
            BasicConv2d(ch5x5red, ch5x5, bn, kernel_size=k5, padding=k5 // 2),
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
            BasicConv2d(in_channels, pool_proj, bn, kernel_size=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], dim=1)


class InceptionAux(nn.Module):
    """Auxiliary classifier (paper section 5): avg-pool 5x5/3, 1x1 conv 128, FC 1024, dropout 0.7, linear.

    The paper's 5x5/3 pool maps the 14x14 map of a 224 px input to 4x4. At other input sizes the pool
    becomes adaptive to 4x4 so the FC keeps its 2048 inputs (our choice; the paper only used 224 px).
    torchvision always pools adaptively, which differs from 5x5/3 even at 14x14.
    """

    def __init__(self, in_channels: int, num_classes: int, batch_norm: bool, dropout: float, paper_pool: bool) -> None:
        super().__init__()
        self.paper_pool = paper_pool
        self.conv = BasicConv2d(in_channels, 128, batch_norm, kernel_size=1)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: Tensor) -> Tensor:
        if self.paper_pool and x.shape[-2:] == (14, 14):
            x = F.avg_pool2d(x, kernel_size=5, stride=3)  # N x C x 4 x 4
        else:
            x = F.adaptive_avg_pool2d(x, (4, 4))
        x = self.conv(x)  # N x 128 x 4 x 4
        x = torch.flatten(x, 1)  # N x 2048
        x = F.relu(self.fc1(x), inplace=True)  # N x 1024
        x = self.dropout(x)
        return self.fc2(x)  # N x num_classes


# Table 1, rows inception 3a..5b: (in, #1x1, #3x3red, #3x3, #5x5red, #5x5, poolproj).
INCEPTION_SPECS: dict[str, tuple[int, int, int, int, int, int, int]] = {
    "inception3a": (192, 64, 96, 128, 16, 32, 32),
    "inception3b": (256, 128, 128, 192, 32, 96, 64),
    "inception4a": (480, 192, 96, 208, 16, 48, 64),
    "inception4b": (512, 160, 112, 224, 24, 64, 64),
    "inception4c": (512, 128, 128, 256, 24, 64, 64),
    "inception4d": (512, 112, 144, 288, 32, 64, 64),
    "inception4e": (528, 256, 160, 320, 32, 128, 128),
    "inception5a": (832, 256, 160, 320, 32, 128, 128),
    "inception5b": (832, 384, 192, 384, 48, 128, 128),
}


class GoogLeNet(nn.Module):
    """GoogLeNet in either variant; build it with :func:`create_model`."""

    def __init__(self, config: GoogLeNetConfig) -> None:
        super().__init__()
        if config.variant not in _VARIANTS:
            raise ValueError(f"unknown variant {config.variant!r}; expected one of {sorted(_VARIANTS)}")
        self.config = config
        self.batchnorm_folded = False  # set by fold_batchnorm()
        paper, bn = config.paper, not config.paper
        dropout = config.dropout if config.dropout is not None else (0.4 if paper else 0.2)

        self.conv1 = BasicConv2d(3, 64, bn, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        # Figure 3: LocalRespNorm after the first max-pool and after conv3. The paper gives no settings;
        # these are Caffe's (PyTorch's alpha is divided by size, as Caffe's is). torchvision has no LRN.
        self.lrn1 = LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0, channels=64) if paper else nn.Identity()
        self.conv2 = BasicConv2d(64, 64, bn, kernel_size=1)
        self.conv3 = BasicConv2d(64, 192, bn, kernel_size=3, padding=1)
        self.lrn2 = LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0, channels=192) if paper else nn.Identity()
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)

        def inception(name: str) -> Inception:
            return Inception(*INCEPTION_SPECS[name], batch_norm=bn, true_5x5=paper)

        self.inception3a = inception("inception3a")
        self.inception3b = inception("inception3b")
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a = inception("inception4a")
        self.inception4b = inception("inception4b")
        self.inception4c = inception("inception4c")
        self.inception4d = inception("inception4d")
        self.inception4e = inception("inception4e")
        # The paper's fourth pool is 3x3/2 like the others; torchvision (from TF-slim) uses 2x2/2.
        self.maxpool4 = (
            nn.MaxPool2d(3, stride=2, ceil_mode=True) if paper else nn.MaxPool2d(2, stride=2, ceil_mode=True)
        )
        self.inception5a = inception("inception5a")
        self.inception5b = inception("inception5b")

        if config.aux_logits:
            self.aux1 = InceptionAux(512, config.num_classes, bn, config.aux_dropout, paper_pool=paper)  # on 4a
            self.aux2 = InceptionAux(528, config.num_classes, bn, config.aux_dropout, paper_pool=paper)  # on 4d
        else:
            self.aux1 = self.aux2 = None

        # Paper: avg-pool 7x7/1 at 224 px; adaptive pooling is identical there and serves any input size.
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(1024, config.num_classes)
        if config.transform_input or config.caffe_input:
            # Constants of the input remap, as non-persistent buffers: they follow .to(device) and leave
            # state_dicts unchanged. (Built per forward with new_tensor, each was a blocking host-to-device
            # copy on a GPU.)
            for name, values in (
                ("input_mean", IMAGENET_MEAN),
                ("input_std", IMAGENET_STD),
                ("caffe_bgr_mean", _CAFFE_BGR_MEAN),
            ):
                self.register_buffer(name, torch.tensor(values).view(1, 3, 1, 1), persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                if self.config.paper:
                    # He init keeps the activation variance through 22 ReLU layers without BN. Caffe's
                    # "xavier" (variance 1/fan_in) halves it at every layer, one cause of the loss-6.9
                    # stalls users of that recipe report (docs/paper.md#initialisation).
                    if isinstance(m, nn.Conv2d):
                        nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                    else:
                        nn.init.normal_(m.weight, std=0.01)
                    nn.init.zeros_(m.bias)
                else:  # torchvision's init, so a fresh googlenet_bn starts where torchvision's does.
                    nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"expected a 4-D input [N, 3, H, W], got shape {tuple(x.shape)}")
        if x.shape[1] != 3:
            raise ValueError(f"expected 3 input channels (RGB), got {x.shape[1]} in shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"expected a floating-point input (normalised RGB), got dtype {x.dtype}")
        min_size = MIN_INPUT_SIZE[self.config.variant]
        if min(x.shape[-2:]) < min_size:
            raise ValueError(f"{self.config.variant} expects height and width >= {min_size}, got {tuple(x.shape[-2:])}")

    def _transform_input(self, x: Tensor) -> Tensor:
        if not (self.config.transform_input or self.config.caffe_input):
            return x
        mean, std = self.input_mean, self.input_std
        if self.config.transform_input:
            # Per channel: undo mean/std normalisation, then map [0, 1] to [-1, 1] (torchvision's formula).
            x = x * (std / 0.5) + (mean - 0.5) / 0.5
        if self.config.caffe_input:
            # Back to 0-255 RGB, reorder to BGR, subtract Caffe's per-channel means (docs/paper.md#preprocessing).
            x = (x * std + mean) * 255.0
            x = x.flip(1) - self.caffe_bgr_mean
        return x

    def forward_stem(self, x: Tensor) -> Tensor:
        """Stem: image to the input of inception3a (N x 192 x 28 x 28 at 224 px)."""
        x = self.conv1(x)  # N x 64 x 112 x 112
        x = self.lrn1(self.maxpool1(x))  # N x 64 x 56 x 56
        x = self.conv2(x)  # N x 64 x 56 x 56
        x = self.lrn2(self.conv3(x))  # N x 192 x 56 x 56
        return self.maxpool2(x)  # N x 192 x 28 x 28

    def forward_features(self, x: Tensor, with_aux: bool = False) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Feature map of inception5b (N x 1024 x 7 x 7 at 224 px) and, if asked, the aux logits."""
        self._check_input(x)
        x = self.forward_stem(self._transform_input(x))
        x = self.inception3a(x)  # N x 256 x 28 x 28
        x = self.inception3b(x)  # N x 480 x 28 x 28
        x = self.maxpool3(x)  # N x 480 x 14 x 14
        x = self.inception4a(x)  # N x 512 x 14 x 14
        aux_4a = self.aux1(x) if with_aux else None
        x = self.inception4b(x)  # N x 512 x 14 x 14
        x = self.inception4c(x)  # N x 512 x 14 x 14
        x = self.inception4d(x)  # N x 528 x 14 x 14
        aux_4d = self.aux2(x) if with_aux else None
        x = self.inception4e(x)  # N x 832 x 14 x 14
        x = self.maxpool4(x)  # N x 832 x 7 x 7
        x = self.inception5a(x)  # N x 832 x 7 x 7
        x = self.inception5b(x)  # N x 1024 x 7 x 7
        return x, aux_4a, aux_4d

    def forward_head(self, x: Tensor) -> Tensor:
        """Feature map to logits: global average pool, dropout, linear."""
        x = torch.flatten(self.avgpool(x), 1)  # N x 1024
        return self.fc(self.dropout(x))  # N x num_classes

    def forward(self, x: Tensor, with_aux: bool = False) -> Tensor | GoogLeNetOutputs:
        """Logits for a batch of normalised RGB images [N, 3, H, W], H and W >= ``MIN_INPUT_SIZE[variant]``.

        Args:
            x: float input.
            with_aux: also run the auxiliary heads and return ``GoogLeNetOutputs(logits, aux_4a, aux_4d)``.
                Independent of train/eval mode, so the return type is always what the caller asked for.
        """
        if with_aux and self.aux1 is None:
            raise ValueError("with_aux=True needs a model built with aux_logits=True")
        features, aux_4a, aux_4d = self.forward_features(x, with_aux)
        logits = self.forward_head(features)
        if with_aux:
            return GoogLeNetOutputs(logits, aux_4a, aux_4d)
        return logits

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the main and auxiliary classifiers for ``num_classes`` outputs (fine-tuning)."""
        self.config = GoogLeNetConfig(**{**self.config.to_dict(), "num_classes": num_classes})
        ref = self.fc.weight
        self.fc = nn.Linear(1024, num_classes, device=ref.device, dtype=ref.dtype)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)
        for aux in (self.aux1, self.aux2):
            if aux is not None:
                aux.fc2 = nn.Linear(1024, num_classes, device=ref.device, dtype=ref.dtype)
                nn.init.normal_(aux.fc2.weight, std=0.01)
                nn.init.zeros_(aux.fc2.bias)

    def fold_batchnorm(self) -> GoogLeNet:
        """Fold each BatchNorm into the convolution before it, for inference only; returns the model in eval mode.

        In eval mode BN is a per-channel affine map, so conv then BN is one convolution with a bias: each layer
        skips a pass over its output (googlenet_bn predicts 1.08-1.19x faster on a CPU, ``bench/cpu_speed.py``).
        The paper variant has no BatchNorm: nothing changes. A model with folded BatchNorm refuses
        ``train()``, since it would train without normalisation.
        """
        for m in self.modules():
            if isinstance(m, BasicConv2d) and m.bn is not None:
                m.conv = fuse_conv_bn_eval(m.conv.eval(), m.bn.eval())
                m.bn = None
                self.batchnorm_folded = True
        return self.eval()

    def train(self, mode: bool = True) -> GoogLeNet:
        if mode and self.batchnorm_folded:
            raise RuntimeError(
                "this model's BatchNorm is folded into its convolutions (inference only); "
                "load the checkpoint again to train it"
            )
        return super().train(mode)


_VARIANTS = {
    "googlenet": "the paper's network: LRN, true 5x5, 3x3/2 pools, no BN, dropout 0.4 (13.4M params with aux)",
    "googlenet_bn": "torchvision-compatible: BatchNorm, 3x3 '5x5' branch, 2x2 fourth pool, dropout 0.2",
}


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(_VARIANTS)


def create_model(name: str, *, num_classes: int = 1000, aux_logits: bool = True, **options) -> GoogLeNet:
    """Build a GoogLeNet.

    Args:
        name: "googlenet" (paper-faithful) or "googlenet_bn" (torchvision-compatible).
        num_classes: classifier outputs.
        aux_logits: build the auxiliary classifiers on 4a and 4d.
        **options: ``dropout``, ``aux_dropout``, ``transform_input``, ``caffe_input``; anything else is an error.

    Raises:
        ValueError: for an unknown model name or option.
    """
    if name not in _VARIANTS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(list_models())}")
    allowed = {"dropout", "aux_dropout", "transform_input", "caffe_input"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for {name!r}; valid options: {sorted(allowed)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return GoogLeNet(GoogLeNetConfig(variant=name, num_classes=num_classes, aux_logits=aux_logits, **options))


def model_from_config(config: dict) -> GoogLeNet:
    """Rebuild a model from ``GoogLeNetConfig.to_dict()`` (as stored in checkpoints); unknown keys fail."""
    known = set(GoogLeNetConfig.__dataclass_fields__)
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"unknown model config key(s) {unknown}; expected {sorted(known)}")
    cfg = dict(config)
    name = cfg.pop("variant", "googlenet")
    return create_model(name, **cfg)
