"""ONNX export with a dynamic batch axis, verified against onnxruntime before it returns; optionally int8."""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from googlenet.checkpoint import LoadedModel, checkpoint_file, open_checkpoint
from googlenet.config import ConfigError, option
from googlenet.files import check_output, replacing
from googlenet.limits import check_fits
from googlenet.onnx_model import onnx_metadata, write_metadata
from googlenet.preprocessing import Preprocessing, normalize


class WithPreprocessing(nn.Module):
    """Wraps a model so it takes uint8 RGB images [N, 3, H, W] and normalises them itself."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.model, self.mean, self.std = model, tuple(mean), tuple(std)

    def forward(self, images: Tensor) -> Tensor:
        return self.model(normalize(images.float() / 255, self.mean, self.std))


def contiguous_copy(model: nn.Module) -> nn.Module:
    """``model`` itself if its weights are in the default layout, else a copy that is. An ONNX graph has no
    memory layout, but a channels_last model (as checkpoints open for CPU inference) traces its flatten as a
    strided Gather with Shape and Range nodes, about 2.5% of an int8 graph's time at 64 px (docs/deploy.md)."""
    if all(p.is_contiguous() for p in model.parameters()):
        return model
    return copy.deepcopy(model).to(memory_format=torch.contiguous_format)


def export_onnx(
    model: nn.Module,
    path: str | Path,
    img_size: int,
    *,
    preprocessing: Preprocessing | None = None,
    opset: int = 18,
    check: bool = True,
    metadata: dict[str, str] | None = None,
) -> float:
    """Write ``model`` (eval mode) to ``path`` as ONNX with a dynamic batch axis and check it.

    Args:
        model: the network; exported in eval mode, so the auxiliary heads are not in the graph.
        img_size: height and width of the traced input (the graph keeps them fixed).
        preprocessing: where given, its normalisation is baked in: the graph then takes uint8 RGB
            [N, 3, H, W]; without it the graph takes float32 normalised RGB ("input"), as the model does.
        check: run onnxruntime on two batch sizes and compare with PyTorch.
        metadata: written into the file's metadata_props (:func:`googlenet.onnx_model.onnx_metadata`).

    Returns:
        the largest absolute difference between onnxruntime and PyTorch logits (0.0 when not checked).
    """
    model = contiguous_copy(model.eval())
    module: nn.Module = model
    example = torch.randn(2, 3, img_size, img_size)
    if preprocessing is not None:
        module = WithPreprocessing(model, preprocessing.mean, preprocessing.std).eval()
        example = torch.randint(0, 256, (2, 3, img_size, img_size), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with replacing(path) as tmp:
        with torch.no_grad():
            program = torch.onnx.export(
                module,
                (example,),
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=({0: batch},),
                verbose=False,
                opset_version=opset,
                dynamo=True,
                external_data=False,
            )
        program.save(tmp)
        if metadata:
            write_metadata(tmp, metadata)
        return verify_onnx(module, tmp, example) if check else 0.0


def verify_onnx(module: nn.Module, onnx_path: str | Path, example: Tensor, tol: float = 1e-3) -> float:
    """Compare onnxruntime with PyTorch on batches of 1 and 3; raise if they differ by more than ``tol``."""
    import onnxruntime as ort

    runner = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for n in (1, 3):
        x = example[:1].repeat(n, 1, 1, 1)
        x = x + torch.arange(n).view(-1, 1, 1, 1).to(x.dtype)  # distinct samples
        with torch.no_grad():
            expected = module(x).numpy()
        (got,) = runner.run(None, {"input": x.numpy()})
        if got.shape != expected.shape:
            raise RuntimeError(f"onnxruntime output shape {got.shape} != PyTorch {expected.shape}")
        worst = max(worst, float(abs(got - expected).max()))
    scale = max(1.0, float(abs(expected).max()))
    if worst > tol * scale:
        raise RuntimeError(f"onnxruntime logits differ from PyTorch by {worst:.2e} (tolerance {tol * scale:.2e})")
    return worst


DEFAULT_MIN_AGREEMENT = 98.0  # % top-1 agreement of int8 with float on the calibration images


@dataclass
class ExportConfig:
    """What `googlenet export` reads (flags, or a TOML file given with --config)."""

    checkpoint: str = option(help="checkpoint file or run folder", metavar="CKPT")
    onnx: str = option(help="the ONNX file to write", metavar="OUT.onnx")
    img_size: int | None = option(None, "input height/width (default: the checkpoint's)", min=1)
    bake_preprocessing: bool = option(False, "the graph takes uint8 RGB [N, 3, H, W] and normalises it itself")
    int8: bool = option(False, "static int8 quantisation (QDQ, per-channel), calibrated on --calibrate")
    calibrate: str | None = option(
        None, "calibration images for --int8: as eval's --data ('fashion-mnist' calibrates on its training split)"
    )
    calibration_images: int = option(500, "images for calibration and the agreement check", min=1)
    min_agreement: float = option(
        DEFAULT_MIN_AGREEMENT,
        "--int8: the least top-1 agreement with the float model, in %, on the calibration images",
        min=0.0,
        max=100.0,
    )

    def validate(self) -> None:
        if self.int8 and not self.calibrate:
            raise ConfigError("--int8 needs --calibrate DATA (images as eval's --data takes)")
        if self.calibrate and not self.int8:
            raise ConfigError("--calibrate is for --int8 only")
        if self.min_agreement != DEFAULT_MIN_AGREEMENT and not self.int8:
            raise ConfigError("--min-agreement is for --int8 only")


def run_export(cfg: ExportConfig) -> int:
    """`googlenet export`: write and verify the graph, then say what input it expects."""
    check_output(cfg.onnx, [checkpoint_file(cfg.checkpoint)], "--onnx")
    member = open_checkpoint(cfg.checkpoint)
    pre = member.preprocessing
    size = cfg.img_size or pre.img_size
    check_fits(member.model.config.variant, size, 2, torch.device("cpu"))  # the trace runs a batch of 2
    metadata = onnx_metadata(member.class_names, pre, member.model.config.variant, size, cfg.bake_preprocessing)
    if cfg.int8:
        error = _export_int8(member, cfg, size, metadata)
    else:
        baked = pre if cfg.bake_preprocessing else None
        error = export_onnx(member.model, cfg.onnx, size, preprocessing=baked, metadata=metadata)
    expects = (
        "uint8 RGB [N, 3, H, W], normalised inside the graph"
        if cfg.bake_preprocessing
        else f"float32 [N, 3, {size}, {size}] = (RGB / 255 - mean {list(pre.mean)}) / std {list(pre.std)}"
    )
    print(
        f"wrote {cfg.onnx}: input 'input' {expects}; output 'logits' [N, {len(member.class_names)}]; "
        f"onnxruntime max |diff| {error:.2e}" + (" (float graph; int8 checked by agreement)" if cfg.int8 else "")
    )
    return 0


def _export_int8(member: LoadedModel, cfg: ExportConfig, size: int, metadata: dict[str, str]) -> float:
    """Export the float graph to a temporary folder, quantise it into ``cfg.onnx`` and check the agreement
    of the two on the calibration images; below ``cfg.min_agreement`` nothing is written."""
    from googlenet import quantize

    member = replace(member, preprocessing=member.preprocessing.with_img_size(size))
    crops = quantize.calibration_crops(member, cfg.calibrate, cfg.calibration_images)  # data errors come first
    inputs = quantize.graph_inputs(member, crops, cfg.bake_preprocessing)
    with tempfile.TemporaryDirectory() as tmp:
        float_path = Path(tmp) / "float.onnx"
        baked = member.preprocessing if cfg.bake_preprocessing else None
        error = export_onnx(member.model, float_path, size, preprocessing=baked, metadata=metadata)
        with replacing(cfg.onnx) as out:
            quantize.quantize_int8(float_path, out, inputs)
            agreement = quantize.agreement(float_path, out, inputs)
            print(f"int8 top-1 agreement with the float model: {agreement:.2f}% of {len(inputs)} calibration images")
            quantize.check_agreement(agreement, cfg.min_agreement, len(inputs))
            write_metadata(out, metadata)
    return error
