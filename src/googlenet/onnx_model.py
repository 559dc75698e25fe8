"""An exported ONNX file (float or int8) used where a checkpoint is: by `eval`, `predict` and `serve`.

Every `googlenet export` writes what a reader needs into the file's metadata (``metadata_props``): the class
names, the :class:`~googlenet.preprocessing.Preprocessing`, the variant, the input size and whether the
normalisation is inside the graph. :func:`open_onnx` reads them back and wraps an onnxruntime runner (CPU)
in a callable with the model's interface: normalised float [N, 3, S, S] in, logits out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from googlenet.checkpoint import CheckpointError, LoadedModel
from googlenet.preprocessing import Preprocessing, PreprocessingError

PREFIX = "googlenet."
METADATA_KEYS = ("class_names", "preprocessing", "variant", "img_size", "preprocessing_baked")


def is_onnx(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".onnx"


def onnx_metadata(
    class_names: list[str], preprocessing: Preprocessing, variant: str, img_size: int, baked: bool
) -> dict[str, str]:
    """The metadata every export writes; values are strings (ONNX's metadata_props hold only strings)."""
    values = {
        "class_names": json.dumps(list(class_names)),
        "preprocessing": json.dumps(preprocessing.with_img_size(img_size).to_dict()),
        "variant": variant,
        "img_size": str(img_size),
        "preprocessing_baked": json.dumps(bool(baked)),
    }
    return {PREFIX + k: v for k, v in values.items()}


def write_metadata(path: str | Path, metadata: dict[str, str]) -> None:
    """Set ``metadata`` on the ONNX file at ``path`` in place (the caller writes to a temporary file)."""
    import onnx

    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key not in metadata]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


@dataclass(frozen=True)
class OnnxConfig:
    """The part of :class:`~googlenet.model.GoogLeNetConfig` that callers read (input-size checks)."""

    variant: str
    num_classes: int


class OnnxModel:
    """An onnxruntime inference runner with the model's interface: normalised float [N, 3, S, S] -> logits [N, K].

    A graph with the normalisation baked in takes uint8 pixels; the input is mapped back to them (exact up
    to rounding, as the normalised values came from uint8 crops).
    """

    def __init__(self, runner: Any, config: OnnxConfig, preprocessing: Preprocessing, baked: bool) -> None:
        self.runner, self.config, self.preprocessing, self.baked = runner, config, preprocessing, baked
        self.input_name = runner.get_inputs()[0].name

    def __call__(self, x: Tensor) -> Tensor:
        size = self.preprocessing.img_size
        if tuple(x.shape[-2:]) != (size, size):  # the graph's height and width are fixed at export
            raise ValueError(f"this ONNX model takes {size} x {size} px input, got {x.shape[-2]} x {x.shape[-1]}")
        x = x.detach().float().cpu()
        if self.baked:
            mean = torch.tensor(self.preprocessing.mean).view(1, -1, 1, 1)
            std = torch.tensor(self.preprocessing.std).view(1, -1, 1, 1)
            x = ((x * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)
        feed = np.ascontiguousarray(x.numpy())
        (logits,) = self.runner.run(None, {self.input_name: feed})
        return torch.from_numpy(logits)


def read_metadata(path: str | Path) -> dict[str, str]:
    """Our metadata of an ONNX file (keys without the prefix); a missing key is a :class:`CheckpointError`."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable ONNX file ({type(e).__name__})") from None
    props = {p.key.removeprefix(PREFIX): p.value for p in model.metadata_props if p.key.startswith(PREFIX)}
    missing = [k for k in METADATA_KEYS if k not in props]
    if missing:
        raise CheckpointError(
            f"{path}: no googlenet metadata ({', '.join(PREFIX + k for k in missing)} missing); "
            "write the file with `googlenet export`"
        )
    return props


def open_onnx(path: str | Path, threads: int = 0) -> LoadedModel:
    """An exported ONNX file as a :class:`LoadedModel` run by onnxruntime on the CPU.

    ``threads``: onnxruntime's intra-op threads (0: its default, one per core).
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ONNX file not found: {path}")
    meta = read_metadata(path)
    try:
        names = json.loads(meta["class_names"])
        pre = Preprocessing.from_dict(json.loads(meta["preprocessing"]))
        baked = bool(json.loads(meta["preprocessing_baked"]))
    except (ValueError, PreprocessingError) as e:
        raise CheckpointError(f"{path}: unusable googlenet metadata ({e})") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    try:
        runner = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise CheckpointError(f"{path}: onnxruntime cannot load it ({' '.join(str(e).split())[:200]})") from None
    model = OnnxModel(runner, OnnxConfig(meta["variant"], len(names)), pre, baked)
    return LoadedModel(model, list(names), pre, path)  # type: ignore[arg-type]
