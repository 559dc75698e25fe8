"""Published weights into our checkpoints: torchvision's googlenet .pth and Caffe's bvlc_googlenet.caffemodel.

Both readers treat the files as data: the .pth goes through ``torch.load(weights_only=True)`` and the
caffemodel through a small protobuf wire-format reader (no Caffe, no protobuf package, no code execution).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from googlenet.checkpoint import (
    CheckpointError,
    build_checkpoint,
    load_data,
    save_checkpoint,
    state_dict_mismatch,
    strip_wrapper_prefixes,
)
from googlenet.config import option
from googlenet.files import check_output
from googlenet.model import GoogLeNet, create_model
from googlenet.preprocessing import imagenet_preprocessing


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet-1k class names in index order, as torchvision ships them (offline)."""
    from torchvision.models import GoogLeNet_Weights

    return list(GoogLeNet_Weights.IMAGENET1K_V1.meta["categories"])


def _class_names(num_classes: int) -> list[str]:
    return imagenet_categories() if num_classes == 1000 else [str(i) for i in range(num_classes)]


def _save_imported(model: GoogLeNet, out: str | Path, source: str) -> None:
    classes = _class_names(model.config.num_classes)
    # Whether the auxiliary heads carry trained weights, which `train --init` reads (torchvision ships
    # untrained ones, left out on import; bvlc_googlenet's were trained with the network).
    config = {"imported_from": source, "aux_trained": model.config.aux_logits}
    save_checkpoint(out, build_checkpoint(model, classes, imagenet_preprocessing(), config=config))


# ------------------------------------------------------------------------------------------ torchvision


def torchvision_to_model(state_dict: dict[str, Tensor]) -> GoogLeNet:
    """A ``googlenet_bn`` holding torchvision's weights, with ``transform_input`` on as torchvision sets it.

    torchvision's file also holds auxiliary heads that were never trained; they are dropped.
    """
    state = strip_wrapper_prefixes(state_dict)
    if "fc.weight" not in state or "conv1.conv.weight" not in state:
        raise CheckpointError("not a torchvision googlenet state_dict (no conv1.conv.weight / fc.weight)")
    num_classes = state["fc.weight"].shape[0]
    main = {k: v for k, v in state.items() if not k.startswith(("aux1.", "aux2."))}
    model = create_model("googlenet_bn", num_classes=num_classes, aux_logits=False, transform_input=True)
    try:
        model.load_state_dict(main, strict=True)
    except RuntimeError:
        mismatch = state_dict_mismatch(model, main)
        raise CheckpointError(f"torchvision weights do not fit googlenet_bn: {mismatch}") from None
    return model.eval()


def import_torchvision(path: str | Path, out: str | Path) -> GoogLeNet:
    """Convert torchvision's ``googlenet-1378be20.pth`` (or any state_dict of that layout) to a checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"file not found: {path}")
    state = load_data(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a state_dict")
    model = torchvision_to_model(state)
    _save_imported(model, out, f"torchvision:{path.name}")
    return model


# ------------------------------------------------------------------------------------------------ Caffe


def caffe_layer_map() -> dict[str, str]:
    """Caffe layer name -> our parameter prefix, for bvlc_googlenet's names (its train_val.prototxt)."""
    names = {
        "conv1/7x7_s2": "conv1.conv",
        "conv2/3x3_reduce": "conv2.conv",
        "conv2/3x3": "conv3.conv",
        "loss3/classifier": "fc",
    }
    branches = {
        "1x1": "branch1.conv",
        "3x3_reduce": "branch2.0.conv",
        "3x3": "branch2.1.conv",
        "5x5_reduce": "branch3.0.conv",
        "5x5": "branch3.1.conv",
        "pool_proj": "branch4.1.conv",
    }
    for block in ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b"):
        for caffe, ours in branches.items():
            names[f"inception_{block}/{caffe}"] = f"inception{block}.{ours}"
    for loss, aux in (("loss1", "aux1"), ("loss2", "aux2")):  # loss1 hangs on 4a, loss2 on 4d
        names.update(
            {f"{loss}/conv": f"{aux}.conv.conv", f"{loss}/fc": f"{aux}.fc1", f"{loss}/classifier": f"{aux}.fc2"}
        )
    return names


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise CheckpointError("truncated protobuf (varint runs past the end)")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of one protobuf message; length-delimited values as bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise CheckpointError(f"unsupported protobuf wire type {wire}: not a caffemodel?")
        if pos > len(buf):
            raise CheckpointError("truncated protobuf (a field runs past the end)")
        yield field, wire, value


def _parse_blob(buf: bytes) -> Tensor:
    """BlobProto: data (5, float, packed or not) or double_data (8); shape (7) or num/channels/height/width."""
    data: list[float] = []
    legacy = {1: 0, 2: 0, 3: 0, 4: 0}
    shape: list[int] | None = None
    for field, wire, value in _fields(buf):
        if field == 5:
            data.extend(struct.unpack(f"<{len(value) // 4}f", value) if wire == 2 else struct.unpack("<f", value))
        elif field == 8:
            data.extend(struct.unpack(f"<{len(value) // 8}d", value) if wire == 2 else struct.unpack("<d", value))
        elif field == 7:
            shape = []
            for f, w, v in _fields(value):
                if f == 1 and w == 2:  # packed int64 dims
                    pos = 0
                    while pos < len(v):
                        d, pos = _varint(v, pos)
                        shape.append(d)
                elif f == 1:
                    shape.append(v)
        elif field in legacy and wire == 0:
            legacy[field] = value
    if shape is None:  # old blobs: num x channels x height x width (FC weights as 1 x 1 x out x in)
        dims = [legacy[1], legacy[2], legacy[3], legacy[4]]
        shape = dims if all(d > 0 for d in dims) else [len(data)]
    tensor = torch.tensor(data, dtype=torch.float32)
    numel = 1
    for d in shape:
        numel *= d
    if numel != tensor.numel():
        raise CheckpointError(f"caffe blob of shape {shape} holds {tensor.numel()} values")
    return tensor.reshape(shape)


def read_caffemodel(path: str | Path) -> dict[str, list[Tensor]]:
    """Blobs per layer name of a caffemodel, from ``layer`` (100) or the old V1 ``layers`` (2) encoding."""
    buf = Path(path).read_bytes()
    layers: dict[str, list[Tensor]] = {}
    for field, wire, value in _fields(buf):
        if wire != 2 or field not in (100, 2):
            continue
        name_field, blob_field = (1, 7) if field == 100 else (4, 6)
        name, blobs = None, []
        for f, w, v in _fields(value):
            if f == name_field and w == 2:
                name = v.decode("utf-8", errors="replace")
            elif f == blob_field and w == 2:
                blobs.append(_parse_blob(v))
        if name is not None and blobs:
            layers[name] = blobs
    return layers


def caffe_to_model(layers: dict[str, list[Tensor]]) -> GoogLeNet:
    """The paper variant holding bvlc_googlenet's weights; ``caffe_input`` makes it take ImageNet-normalised RGB."""
    mapping = caffe_layer_map()
    missing = [name for name in mapping if name not in layers and not name.startswith(("loss1", "loss2"))]
    if missing:
        raise CheckpointError(f"not a bvlc_googlenet caffemodel: missing layers {missing[:4]}")
    has_aux = all(name in layers for name in mapping if name.startswith(("loss1", "loss2")))
    num_classes = layers["loss3/classifier"][0].numel() // 1024  # [out, 1024], or 1 x 1 x out x 1024 in V1
    model = create_model("googlenet", num_classes=num_classes, aux_logits=has_aux, caffe_input=True)
    state = model.state_dict()
    loaded = set()
    for caffe_name, prefix in mapping.items():
        if prefix.startswith("aux") and not has_aux:
            continue
        blobs = layers[caffe_name]
        if len(blobs) != 2:
            raise CheckpointError(f"caffe layer {caffe_name}: expected weight and bias blobs, found {len(blobs)}")
        for suffix, blob in zip(("weight", "bias"), blobs):
            key = f"{prefix}.{suffix}"
            if blob.numel() != state[key].numel():
                raise CheckpointError(
                    f"caffe layer {caffe_name} {suffix}: shape {tuple(blob.shape)} does not fit "
                    f"{key} {tuple(state[key].shape)}"
                )
            state[key] = blob.reshape(state[key].shape)
            loaded.add(key)
    unfilled = sorted(set(state) - loaded)
    if unfilled:
        raise CheckpointError(f"caffemodel left parameters unset: {unfilled[:4]}")
    model.load_state_dict(state, strict=True)
    return model.eval()


def import_caffe(path: str | Path, out: str | Path) -> GoogLeNet:
    """Convert BVLC ``bvlc_googlenet.caffemodel`` into a checkpoint of the paper variant."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"file not found: {path}")
    try:
        layers = read_caffemodel(path)
        model = caffe_to_model(layers)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except (struct.error, TypeError, KeyError, IndexError, ValueError, UnicodeDecodeError, RuntimeError) as e:
        # A crafted or damaged file: its fields have the wrong types, sizes or shapes for the parser.
        raise CheckpointError(f"{path}: not a readable Caffe GoogLeNet ({type(e).__name__}: {e})") from None
    _save_imported(model, out, f"caffe:{path.name}")
    return model


IMPORTERS = {"torchvision": import_torchvision, "caffe": import_caffe}


@dataclass
class ImportConfig:
    """What `googlenet import` reads (flags, or a TOML file given with --config)."""

    source: str = option(help="the weights' format", positional=True, choices=list(IMPORTERS))
    file: str = option(help="torchvision .pth or Caffe .caffemodel", positional=True, metavar="FILE")
    out: str = option(help="the checkpoint to write", metavar="CKPT")


def run_import(cfg: ImportConfig) -> int:
    check_output(cfg.out, [cfg.file], "--out")
    model = IMPORTERS[cfg.source](cfg.file, cfg.out)
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {cfg.out}: {model.config.variant}, {model.config.num_classes} classes, {params:,} parameters")
    return 0
