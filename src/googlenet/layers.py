"""Layer names for looking inside the network: module names and the paper's (Caffe's) blob names.

``inception4c`` and ``inception_4c/output`` name the same tensor, as do ``inception4c.branch2`` and
``inception_4c/3x3``: bvlc_googlenet's blob names (Szegedy et al. 2015, "Going Deeper with Convolutions",
as released with Caffe) are what DeepDream and feature-visualisation write-ups use, the module names are
what ``model.named_modules()`` prints. Both resolve to the module whose output is the layer; the module
names also serve ``googlenet features`` (:func:`googlenet.features.hook_target`).
"""

from __future__ import annotations

from functools import cache

from torch import Tensor, nn

from googlenet.features import POOL5, forward_to, hook_target
from googlenet.weights import caffe_layer_map

# Blobs of bvlc_googlenet that hold no weights, so caffe_layer_map does not list them.
_CAFFE_EXTRA = {
    "pool1/3x3_s2": "maxpool1",
    "pool1/norm1": "lrn1",
    "conv2/norm2": "lrn2",
    "pool2/3x3_s2": "maxpool2",
    "pool3/3x3_s2": "maxpool3",
    "pool4/3x3_s2": "maxpool4",
    "pool5/7x7_s1": POOL5,
}
_BLOCKS = ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b")


@cache
def caffe_names() -> dict[str, str]:
    """Caffe blob name -> module name (the module whose output the blob is), for every named blob."""
    names = dict(_CAFFE_EXTRA)
    for caffe, prefix in caffe_layer_map().items():
        # A conv layer's blob is its output after the in-place ReLU: the BasicConv2d around the conv.
        names[caffe] = prefix.removesuffix(".conv")
    for block in _BLOCKS:
        names[f"inception_{block}/output"] = f"inception{block}"
        # The last conv of a branch is the branch's output: name the branch, as users write it.
        names[f"inception_{block}/3x3"] = f"inception{block}.branch2"
        names[f"inception_{block}/5x5"] = f"inception{block}.branch3"
        names[f"inception_{block}/pool"] = f"inception{block}.branch4.0"
        names[f"inception_{block}/pool_proj"] = f"inception{block}.branch4"
    return names


def module_name(model: nn.Module, layer: str) -> str:
    """The module name (or ``pool5`` / ``aux1`` / ``aux2``) for ``layer`` in either naming.

    Raises:
        ValueError: an unknown layer; the one-line message lists the valid names.
    """
    if "/" in layer:
        name = caffe_names().get(layer)
        if name is None:
            blocks = ", ".join(n for n in caffe_names() if not n.startswith("inception_") or "/output" in n)
            raise ValueError(
                f"unknown layer {layer!r}; valid Caffe names: {blocks}, and inception_XX/1x1, /3x3_reduce, "
                "/3x3, /5x5_reduce, /5x5, /pool, /pool_proj for each block; or a module name such as inception4c"
            )
        layer = name
    try:
        hook_target(model, layer)
    except ValueError as e:
        raise ValueError(f"{e}; or a Caffe name such as inception_4c/output") from None
    return layer


def resolve_layer(model: nn.Module, layer: str) -> tuple[nn.Module, bool]:
    """The module whose output ``layer`` is and whether the auxiliary heads must run to reach it."""
    return hook_target(model, module_name(model, layer))


def layer_output(model: nn.Module, layer: str, x: Tensor) -> Tensor:
    """The output of ``layer`` for input ``x``, with gradients when ``x`` has them; pool5 as [N, 1024].

    The forward pass stops at the layer, so the layers after it cost nothing (DeepDream and feature
    visualisation run it hundreds of times).
    """
    target, with_aux = resolve_layer(model, layer)
    output = forward_to(model, target, with_aux, x)
    return output.flatten(1) if module_name(model, layer) == POOL5 else output
