"""Checkpoints: the one module that builds, writes (atomically) and reads them (weights_only, never code).

A checkpoint is a plain dict of tensors, numbers, strings and lists, so ``torch.load(weights_only=True)``
reads it. Every checkpoint, from training, from ``googlenet import`` or from a test, has this layout
(:func:`build_checkpoint`):

- ``format``: ``"googlenet-checkpoint/1"``;
- ``model_config``: the :class:`~googlenet.model.GoogLeNetConfig` as a dict; ``model``: its weights (the
  EMA / Polyak average where training kept one);
- ``class_names``: one per output; ``preprocess``: the :class:`~googlenet.preprocessing.Preprocessing`;
- ``config``: the training config (or ``{"imported_from": ...}``); ``metrics``: the last epoch's;
- ``train_state``: what ``--resume`` needs (live weights, optimizer, EMA count, position, RNG), or None.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from googlenet.files import replacing
from googlenet.model import GoogLeNet, model_from_config
from googlenet.preprocessing import Preprocessing, PreprocessingError

FORMAT = "googlenet-checkpoint/1"
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or not one of ours; the message names the file."""


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside ``DistributedDataParallel`` and ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def strip_wrapper_prefixes(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Remove the ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes from state_dict keys."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        out[key] = value
    return out


def build_checkpoint(
    model: GoogLeNet,
    class_names: list[str],
    preprocessing: Preprocessing,
    *,
    weights: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    train_state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint dict for ``model`` (``weights``: another state_dict of it, such as the EMA's)."""
    if len(class_names) != model.config.num_classes:
        raise ValueError(f"{len(class_names)} class names for a {model.config.num_classes}-class model")
    return {
        "format": FORMAT,
        "model_config": model.config.to_dict(),
        "class_names": list(class_names),
        "preprocess": preprocessing.to_dict(),
        "model": weights if weights is not None else model.state_dict(),
        "config": config,
        "metrics": metrics,
        "train_state": train_state,
    }


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically: a temporary file in the same folder, fsync, rename
    (:func:`~googlenet.files.replacing`).

    A crash or kill mid-write leaves the previous checkpoint intact, never a half-written one.
    """
    with replacing(path) as tmp, open(tmp, "wb") as f:
        torch.save({"format": FORMAT, **payload}, f)


def link_checkpoint(src: str | Path, dst: str | Path) -> None:
    """Make ``dst`` hold what ``src`` holds now, atomically, without writing it a second time.

    A hard link where the filesystem has them (a copy otherwise), then a rename over ``dst``. The run writes
    ``checkpoint_last.pt`` by rename, never in place, so a later epoch gives last a new file and leaves the
    linked best one as it was.
    """
    with replacing(dst) as tmp:
        try:
            os.link(src, tmp)
        except OSError:  # no hard links here (some network and FUSE filesystems)
            shutil.copyfile(src, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())


def checkpoint_file(path: str | Path, in_run_folder: str = "checkpoint_best.pt") -> Path:
    """``path`` itself, or for a run folder the checkpoint named ``in_run_folder`` inside it."""
    path = Path(path)
    return path / in_run_folder if path.is_dir() else path


def load_data(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)``, with a one-line reason when it refuses or fails.

    torch's own message for a refused file advises loading it again with ``weights_only=False``, which would
    run whatever code the file names; that advice must not reach a user of a file they did not make.
    """
    try:
        with warnings.catch_warnings():  # torch warns about old pickle protocols on the way to refusing them
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: {load_failure(e, starts_as_zip(path))}") from None


def starts_as_zip(path: str | Path) -> bool:
    """Whether the file begins as torch.save's zip archives do; False where it cannot be read at all."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def load_failure(e: Exception, zipped: bool) -> str:
    """Why torch could not load a file as data, in words that name the file's problem; ``zipped``: the file
    starts as torch.save's zip archives do."""
    code = re.search(r"\bGLOBAL ([\w.]+)", str(e))  # torch names the callable it refused to import
    if code:
        return f"refused: it names Python code ({code[1]}) to run while loading; files are read as data only"
    if zipped:  # miniz reports a cut archive in several ways, an OSError among them
        return "not a readable PyTorch file (damaged or truncated)"
    return "not a readable PyTorch file"


def state_dict_mismatch(model: nn.Module, state: dict[str, Any]) -> str:
    """What keeps ``state`` from loading into ``model`` strictly: missing and unexpected keys, wrong shapes."""
    expected = model.state_dict()
    wrong_shape = [
        f"{k} {list(v.shape)} (model {list(expected[k].shape)})"
        for k, v in state.items()
        if k in expected and isinstance(v, torch.Tensor) and v.shape != expected[k].shape
    ]
    found = (
        ("missing", [k for k in expected if k not in state]),
        ("unexpected", [k for k in state if k not in expected]),
        ("other shape", wrong_shape),
    )
    return "; ".join(
        f"{len(keys)} {label}: {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}" for label, keys in found if keys
    )


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict with ``weights_only=True``; clear errors for missing or corrupt files."""
    path = checkpoint_file(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix.lower() == ".onnx":
        raise CheckpointError(f"{path} is an exported ONNX file; this command takes a checkpoint (.pt)")
    ckpt = load_data(path, map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "model" not in ckpt:
        raise CheckpointError(
            f"{path}: not a googlenet checkpoint (no {FORMAT!r} format tag); "
            "convert published weights with `googlenet import`"
        )
    return ckpt


@dataclass
class LoadedModel:
    """A model ready for inference with what is needed to feed it and name its outputs."""

    model: GoogLeNet
    class_names: list[str]
    preprocessing: Preprocessing
    path: Path


def open_checkpoint(path: str | Path, device: str | torch.device = "cpu", fold_batchnorm: bool = False) -> LoadedModel:
    """Rebuild the model of a checkpoint, in eval mode on ``device``, with its class names and preprocessing.

    The model is in channels_last memory format: the same outputs, and on a CPU 1.5-1.9x the inference
    speed of the default layout (oneDNN's blocked convolutions; measured in ``bench/cpu_speed.py``).
    ``fold_batchnorm``: fold BatchNorm into the convolutions (:meth:`GoogLeNet.fold_batchnorm`), for
    inference only, as ``googlenet predict`` and ``googlenet eval`` do.
    """
    ckpt = read_checkpoint(path)
    try:
        model = model_from_config(ckpt["model_config"])
        state = strip_wrapper_prefixes(ckpt["model"])
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: not a valid model config and weights ({e})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:
        mismatch = state_dict_mismatch(model, state)
        raise CheckpointError(f"{path}: weights do not fit the stored model config ({mismatch})") from None
    num_classes = model.config.num_classes
    names = list(ckpt.get("class_names") or [str(i) for i in range(num_classes)])
    if len(names) != num_classes:
        raise CheckpointError(f"{path}: {len(names)} class names for a {num_classes}-class model")
    try:
        preprocessing = Preprocessing.from_dict(ckpt.get("preprocess"))
    except PreprocessingError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if fold_batchnorm:
        model.fold_batchnorm()
    model = model.to(device, memory_format=torch.channels_last).eval()
    return LoadedModel(model, names, preprocessing, Path(path))


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> GoogLeNet:
    """The model stored in a checkpoint (the EMA / Polyak-averaged weights where training kept them), in eval mode."""
    return open_checkpoint(path, device).model
