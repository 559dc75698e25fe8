"""`googlenet features` and :func:`extract_features`: one vector per image from any layer of the network.

For retrieval, linear probes, clustering or video summarisation. A layer's output is averaged over height and
width (global average pooling), so every layer gives one vector per image whatever the input size; ``pool5``
is the 1024 values the classifier reads (after avgpool, before dropout), ``aux1`` / ``aux2`` the inputs of
the auxiliary heads (the outputs of inception4a / 4d). The network always runs in eval mode (no dropout,
BatchNorm on its running statistics), without gradients, fed as the checkpoint's :class:`Preprocessing`
says, so an image gives the same vector every time and the one the classifier saw in evaluation.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from googlenet.checkpoint import LoadedModel, open_checkpoint, unwrap
from googlenet.config import ConfigError, option
from googlenet.data import IMAGE_EXTENSIONS, DataError, scan_split
from googlenet.devices import DEVICE_CHOICES, resolve_device
from googlenet.evaluate import multi_crop
from googlenet.files import check_output, replacing
from googlenet.image_decode import decode_rgb
from googlenet.predict import expand_paths
from googlenet.preprocessing import Preprocessing, to_grey_rgb

POOL5 = "pool5"
# The auxiliary heads run only when their logits are asked for; their input is the output of the module
# they sit on, which every forward pass computes.
AUX_INPUTS = {"aux1": "inception4a", "aux2": "inception4d"}
CROP_CHOICES = (1, 10)
OUTPUT_FORMATS = {".npz": "npz", ".safetensors": "safetensors", ".h5": "h5", ".hdf5": "h5"}
# HDF5 1.8's file format stores attributes over 64 KiB (the frame names of a long video) densely.
H5_LIBVER = ("v108", "latest")

Image = str | Path | Tensor


# ------------------------------------------------------------------------------------------------ layers


def _named_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if name}


def _unknown_layer(model: nn.Module, layer: str) -> ValueError:
    """The error for an unknown layer, listing the valid names at the level where ``layer`` went wrong."""
    names = _named_modules(model)
    parts = layer.split(".")
    parent = next((p for p in (".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)) if p in names), None)
    children = [n for n in names if parent and n.rpartition(".")[0] == parent]
    if children:
        return ValueError(f"unknown layer {layer!r}; valid layers in {parent}: {', '.join(children)}")
    top = [POOL5, *(n for n in names if "." not in n)]
    return ValueError(
        f"unknown layer {layer!r}; valid layers: {', '.join(top)}, or a module inside one (such as inception4c.branch2)"
    )


def hook_target(model: nn.Module, layer: str) -> tuple[nn.Module, bool]:
    """The module whose output ``layer`` is, and whether the forward pass must run the auxiliary heads.

    Raises:
        ValueError: an unknown layer; the message lists the valid names.
    """
    names = _named_modules(model)
    # pool5 is avgpool's output flattened, which averaging over H and W (1 x 1 here) does.
    name = {POOL5: "avgpool", **AUX_INPUTS}.get(layer, layer)
    if name not in names:
        raise _unknown_layer(model, layer)
    inside_aux = "." in layer and layer.split(".")[0] in AUX_INPUTS
    return names[name], inside_aux


class _Reached(Exception):
    """Raised by the hook once the layer's output is kept: the rest of the network is not computed."""


def forward_to(model: nn.Module, target: nn.Module, with_aux: bool, x: Tensor) -> Tensor:
    """The output of ``target`` (a module of ``model``) for input ``x``; the forward pass stops there, so the
    layers after it cost nothing. Gradients flow where ``x`` has them."""
    kept: list[Tensor] = []

    def keep(_module: nn.Module, _inputs: object, output: Tensor) -> None:
        kept.append(output)
        raise _Reached  # also keeps later in-place ReLUs from changing the kept tensor

    handle = target.register_forward_hook(keep)
    try:
        model(x, with_aux=True) if with_aux else model(x)
    except _Reached:
        pass
    finally:
        handle.remove()
    if not kept:
        raise ValueError("the layer did not run in the forward pass")
    return kept[0]


def _layer_vectors(model: nn.Module, target: nn.Module, with_aux: bool, x: Tensor) -> Tensor:
    """The target's output for input ``x``, averaged over H and W: float32 [N, D] on the input's device."""
    out = forward_to(model, target, with_aux, x).float()
    return out.mean(dim=(2, 3)) if out.dim() == 4 else out.flatten(1)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the block, then every submodule's own mode back: a caller's model may be mid-training."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training  # not train(): that also resets submodules the caller set apart


# ---------------------------------------------------------------------------------------------- extraction


@dataclass(frozen=True)
class Extraction:
    """How vectors are taken: the network, its preprocessing, the layer and crops, the batch and device."""

    model: nn.Module
    preprocessing: Preprocessing
    layer: str = POOL5
    crops: int = 1
    batch_size: int = 32
    device: torch.device = torch.device("cpu")

    def crops_of(self, image: Tensor) -> Tensor:
        """uint8 RGB [3, H, W] -> uint8 [crops, 3, S, S], as evaluation crops them."""
        pre = self.preprocessing
        if self.crops == 1:
            return pre.crop(image).unsqueeze(0)
        if pre.grayscale:
            image = to_grey_rgb(image)
        return multi_crop(image, self.crops, pre.img_size, pre.resize_ratio)

    def vectors(self, crops: list[Tensor]) -> np.ndarray:
        """float32 [len(crops), D]: each image's crops through the network (at most batch_size per pass),
        their vectors averaged."""
        target, with_aux = hook_target(self.model, self.layer)
        dtype = next(self.model.parameters()).dtype
        out = []
        with _eval_mode(self.model), torch.inference_mode():
            for part in torch.cat(crops).split(self.batch_size):
                part = part.to(self.device, memory_format=torch.channels_last)
                x = self.preprocessing.to_input(part).to(dtype)
                out.append(_layer_vectors(self.model, target, with_aux, x).cpu())
        return torch.cat(out).view(len(crops), self.crops, -1).mean(dim=1).numpy()


def _read(image: Image) -> Tensor:
    """A path's decoded pixels, or a tensor checked to be what a decoded image is (uint8 RGB [3, H, W])."""
    if not isinstance(image, Tensor):
        return decode_rgb(image)
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a uint8 RGB image [3, H, W], got {image.dtype} {tuple(image.shape)}")
    return image.cpu()


def feature_rows(ex: Extraction, images: Iterable[Image]) -> Iterator[tuple[int, np.ndarray | None, str | None]]:
    """(position, vector, None) per image, or (position, None, error) for one that cannot be read.

    Images are read and cropped one at a time and run batch_size at a time, so memory holds one batch, not
    the input; rows come in input order, an error as soon as it is found.
    """
    pending: list[tuple[int, Tensor]] = []
    for i, image in enumerate(images):
        try:
            pending.append((i, ex.crops_of(_read(image))))
        except (OSError, ValueError) as e:
            yield i, None, str(e).removeprefix(f"{image}: ")
            continue
        if len(pending) >= ex.batch_size:
            yield from _flush(ex, pending)
    if pending:
        yield from _flush(ex, pending)


def _flush(ex: Extraction, pending: list[tuple[int, Tensor]]) -> Iterator[tuple[int, np.ndarray, None]]:
    rows = ex.vectors([c for _, c in pending])
    positions = [i for i, _ in pending]
    pending.clear()
    for i, row in zip(positions, rows):
        yield i, row, None


# ------------------------------------------------------------------------------------------------- the API


def _network(
    model: nn.Module | LoadedModel | str | Path, preprocessing: Preprocessing | None, device: str | None
) -> tuple[nn.Module, Preprocessing]:
    """The module to run and its preprocessing, from a module, a LoadedModel or a checkpoint path."""
    if isinstance(model, str | Path):
        model = open_checkpoint(model, device or "cpu")
    if isinstance(model, LoadedModel):
        return model.model, preprocessing or model.preprocessing
    if preprocessing is None:
        raise ValueError(
            "a bare model needs preprocessing= (the Preprocessing it was trained with, such as "
            "open_checkpoint(path).preprocessing); or pass the LoadedModel or the checkpoint path"
        )
    return unwrap(model), preprocessing


def extract_features(
    model: nn.Module | LoadedModel | str | Path,
    images: Image | Iterable[Image],
    layer: str = POOL5,
    preprocessing: Preprocessing | None = None,
    crops: int = 1,
    batch_size: int = 32,
    device: str | torch.device | None = None,
) -> Tensor:
    """One vector per image: the output of ``layer`` averaged over height and width.

    Args:
        model: a GoogLeNet (then ``preprocessing`` is required), a :class:`LoadedModel` from
            :func:`open_checkpoint` (its preprocessing is used), or a checkpoint path or run folder.
        images: image file paths or uint8 RGB tensors [3, H, W] (as decoded, uncropped), or one of them; a
            uint8 tensor [N, 3, H, W] counts as N images.
        layer: ``pool5`` (the classifier's 1024 inputs), ``aux1`` / ``aux2`` (the auxiliary heads' inputs),
            or any name from ``model.named_modules()`` such as ``inception4c`` or ``inception4c.branch2``.
        preprocessing: crop and normalisation; overrides a LoadedModel's own.
        crops: 1 (the centre crop) or 10 (corners, centre and their mirror images; vectors averaged).
        batch_size: images per forward pass; with 10 crops, crops per pass.
        device: where to run; None: where the model's weights are (the CPU for a checkpoint path). A module
            on another device is moved there and stays there, as ``model.to`` does.

    Returns:
        float32 tensor [N, D] on the CPU, rows in input order (``.numpy()`` shares its memory); [0, 0] for
        no images. The model runs in eval mode without gradients whatever its mode; its mode is restored.

    Raises:
        ValueError: an unknown layer (the message lists the valid ones), or an image that cannot be read
            (the message names it).
    """
    if crops not in CROP_CHOICES:
        raise ValueError(f"crops must be one of {CROP_CHOICES}, got {crops}")
    net, pre = _network(model, preprocessing, str(device) if device is not None else None)
    if device is not None:
        net.to(device)
    hook_target(net, layer)  # an unknown layer fails before any image is read
    run_on = torch.device(device) if device is not None else next(net.parameters()).device
    ex = Extraction(net, pre, layer, crops, batch_size, run_on)
    if isinstance(images, str | Path) or (isinstance(images, Tensor) and images.dim() == 3):
        images = [images]
    images = list(images)  # paths or tensors already in memory: the list adds only references
    rows = []
    for i, row, error in feature_rows(ex, images):
        if error is not None:
            name = f"image {i}" if isinstance(images[i], Tensor) else str(images[i])
            raise ValueError(f"{name}: {error}")
        rows.append(row)
    return torch.from_numpy(np.stack(rows)) if rows else torch.empty(0, 0)


# ------------------------------------------------------------------------------------------------- inputs


@dataclass
class Inputs:
    """The image files to read in order; labels and class names when the input is a class folder."""

    files: list[str]
    missing: list[str]
    labels: list[int] | None = None
    class_names: list[str] | None = None


def _is_class_folder(path: Path) -> bool:
    """A folder holding class sub-folders and no images of its own (those would have no label)."""
    if not path.is_dir():
        return False
    entries = list(path.iterdir())
    has_classes = any(e.is_dir() and not e.name.startswith(".") for e in entries)
    return has_classes and not any(e.is_file() and e.suffix.lower() in IMAGE_EXTENSIONS for e in entries)


def list_inputs(paths: list[str], labelled: bool = True) -> Inputs:
    """Every image under ``paths``, sorted per PATH; labelled when every PATH is a class folder of the
    same classes (sub-folders = classes, as training reads them)."""
    if labelled and paths and all(_is_class_folder(Path(p)) for p in paths):
        indexes = [scan_split(Path(p)) for p in paths]
        if all(ix.classes == indexes[0].classes for ix in indexes):
            files = [f for ix in indexes for f in ix.files]
            return Inputs(files, [], [y for ix in indexes for y in ix.labels], indexes[0].classes)
    inputs = Inputs([], [])
    for path, error in expand_paths(paths):
        (inputs.missing if error else inputs.files).append(path)
    return inputs


def group_by_folder(files: list[str]) -> dict[str, list[str]]:
    """Files per folder name (a video's frames), each in file-name order; two folders of one name are an error."""
    groups: dict[str, list[str]] = {}
    folders: dict[str, Path] = {}
    for f in files:
        folder = Path(f).resolve().parent
        if folders.setdefault(folder.name, folder) != folder:
            raise DataError(
                f"two folders are both named {folder.name!r} ({folders[folder.name]} and {folder}); "
                "--per-folder keys each by its name"
            )
        groups.setdefault(folder.name, []).append(f)
    return {key: sorted(group, key=lambda f: Path(f).name) for key, group in sorted(groups.items())}


# ------------------------------------------------------------------------------------------------ outputs


def output_format(path: str | Path) -> str:
    """``npz``, ``safetensors`` or ``h5`` from the file's suffix; an unknown suffix is a ConfigError."""
    fmt = OUTPUT_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise ConfigError(f"--out {path}: unknown format; use {', '.join(OUTPUT_FORMATS)}")
    if fmt == "h5" and importlib.util.find_spec("h5py") is None:
        raise ConfigError(f"--out {path}: writing HDF5 needs h5py (pip install h5py)")
    return fmt


def _write_npz(tmp: Path, arrays: dict[str, np.ndarray], strings: dict[str, list[str]]) -> None:
    # Strings as fixed-width unicode arrays: np.load reads them without allow_pickle.
    with open(tmp, "wb") as f:
        np.savez(f, **arrays, **{k: np.array(v, dtype=str) for k, v in strings.items()})


def _write_safetensors(tmp: Path, arrays: dict[str, np.ndarray], strings: dict[str, list[str]]) -> None:
    from safetensors.numpy import save_file

    # safetensors holds only tensors; the strings go in its header's metadata, each a JSON list.
    save_file(arrays, str(tmp), metadata={k: json.dumps(v) for k, v in strings.items()})


def _write_h5(tmp: Path, arrays: dict[str, np.ndarray], strings: dict[str, list[str]]) -> None:
    import h5py

    with h5py.File(tmp, "w", libver=H5_LIBVER) as f:
        for key, a in arrays.items():
            f.create_dataset(key, data=a)
        for key, values in strings.items():
            f.create_dataset(key, data=values, dtype=h5py.string_dtype())


WRITERS = {"npz": _write_npz, "safetensors": _write_safetensors, "h5": _write_h5}


def write_features(
    path: str | Path,
    features: np.ndarray,
    paths: list[str],
    labels: list[int] | None = None,
    class_names: list[str] | None = None,
) -> None:
    """Arrays ``features`` float32 [N, D] and ``paths``, with ``labels`` int64 and ``class_names`` when given;
    written whole or not at all."""
    arrays = {"features": np.ascontiguousarray(features, dtype=np.float32)}
    strings = {"paths": list(paths)}
    if labels is not None:
        arrays["labels"] = np.asarray(labels, dtype=np.int64)
        strings["class_names"] = list(class_names or [])
    with replacing(path) as tmp:
        WRITERS[output_format(path)](tmp, arrays, strings)


def write_per_folder(path: str | Path, groups: dict[str, tuple[list[str], np.ndarray]]) -> None:
    """HDF5 as video-summarisation code reads it: per folder a dataset [n_frames, D] keyed by the folder's
    name, rows in frame-name order, its attribute ``frames`` holding the frame file names."""
    import h5py

    with replacing(path) as tmp, h5py.File(tmp, "w", libver=H5_LIBVER) as f:
        for key, (names, rows) in groups.items():
            ds = f.create_dataset(key, data=np.ascontiguousarray(rows, dtype=np.float32))
            ds.attrs.create("frames", names, dtype=h5py.string_dtype())


# ---------------------------------------------------------------------------------------------- the command


@dataclass
class FeaturesConfig:
    """What `googlenet features` reads (flags, or a TOML file given with --config)."""

    checkpoint: str = option(help="checkpoint file or run folder", metavar="CKPT")
    paths: list[str] = option(
        help="image files and folders of images; a folder of class folders also stores labels and class_names",
        positional=True,
        metavar="PATH",
    )
    out: str = option(help="output file: .npz, .safetensors, or .h5 / .hdf5 (needs h5py)", metavar="FILE")
    layer: str = option(
        POOL5,
        "pool5 (the classifier's 1024 inputs), aux1 / aux2 (the auxiliary heads' inputs) or a module name such "
        "as inception4c or inception4c.branch2; its output is averaged over height and width",
    )
    crops: int = option(
        1, "1: the centre crop; 10: corners, centre and their mirror images, the 10 vectors averaged", choices=[1, 10]
    )
    batch_size: int = option(32, "images per forward pass (with --crops 10: crops per pass)", min=1)
    per_folder: bool = option(
        False, "HDF5 only: one dataset per folder (a video's frames, in name order), keyed by the folder's name"
    )
    device: str = option("auto", "auto, cpu or cuda", choices=list(DEVICE_CHOICES))

    def validate(self) -> None:
        fmt = output_format(self.out)
        if self.per_folder and fmt != "h5":
            raise ConfigError(f"--per-folder writes HDF5; give --out a .h5 or .hdf5 name, not {self.out}")
        check_output(self.out, [self.checkpoint, *self.paths], flag="--out")


def _inference_model(member: LoadedModel, layer: str) -> nn.Module:
    """The checkpoint's model with BatchNorm folded (faster), unless the layer is a convolution or BatchNorm
    whose output folding would change."""
    target, _ = hook_target(member.model, layer)
    if not isinstance(target, nn.Conv2d | nn.BatchNorm2d) and hasattr(member.model, "fold_batchnorm"):
        member.model.fold_batchnorm()
        member.model.to(memory_format=torch.channels_last)
    return member.model


def _extract_all(ex: Extraction, files: list[str]) -> tuple[list[int], list[np.ndarray], int]:
    """Positions kept, their rows, and the count skipped; a progress bar with images/s and ETA on a terminal."""
    from tqdm import tqdm

    kept, rows, skipped = [], [], 0
    with tqdm(total=len(files), unit="img", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:
        for i, row, error in feature_rows(ex, files):
            if error is not None:
                skipped += 1
                tqdm.write(f"googlenet: cannot read {files[i]}: {error}", file=sys.stderr)
            else:
                kept.append(i)
                rows.append(row)
            bar.update(1)
    return kept, rows, skipped


def _write_output(cfg: FeaturesConfig, inputs: Inputs, kept: list[int], rows: list[np.ndarray]) -> None:
    if cfg.per_folder:
        row_of = dict(zip(kept, rows))
        position = {f: i for i, f in enumerate(inputs.files)}
        groups = {}
        for key, files in group_by_folder([inputs.files[i] for i in kept]).items():
            groups[key] = ([Path(f).name for f in files], np.stack([row_of[position[f]] for f in files]))
        write_per_folder(cfg.out, groups)
        return
    labels = [inputs.labels[i] for i in kept] if inputs.labels is not None else None
    write_features(cfg.out, np.stack(rows), [inputs.files[i] for i in kept], labels, inputs.class_names)


def run_features(cfg: FeaturesConfig) -> int:
    """`googlenet features`: one row per readable image; unreadable files named, skipped, then exit status 1."""
    device = resolve_device(cfg.device)
    member = open_checkpoint(cfg.checkpoint, device)
    model = _inference_model(member, cfg.layer)
    inputs = list_inputs(cfg.paths, labelled=not cfg.per_folder)
    if cfg.per_folder:  # frames in name order per folder; a clash of folder names fails before any work
        inputs.files = [f for group in group_by_folder(inputs.files).values() for f in group]
    for path in inputs.missing:
        print(f"googlenet: cannot read {path}: no such file or folder", file=sys.stderr)
    start = time.perf_counter()
    ex = Extraction(model, member.preprocessing, cfg.layer, cfg.crops, cfg.batch_size, device)
    kept, rows, skipped = _extract_all(ex, inputs.files)
    skipped += len(inputs.missing)
    if not rows:
        raise DataError(f"no image could be read ({skipped} skipped); {cfg.out} not written")
    _write_output(cfg, inputs, kept, rows)
    seconds = time.perf_counter() - start
    print(
        f"googlenet: {len(rows)} images x {rows[0].size} values ({cfg.layer}, {cfg.crops} crop(s)) -> {cfg.out} "
        f"in {seconds:.1f} s ({len(rows) / max(seconds, 1e-9):.1f} images/s); {skipped} skipped",
        file=sys.stderr,
    )
    return 1 if skipped else 0
