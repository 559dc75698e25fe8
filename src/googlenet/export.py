"""ONNX export with a dynamic batch axis, verified against onnxruntime before it returns."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from googlenet.checkpoint import open_checkpoint
from googlenet.config import option
from googlenet.files import replacing
from googlenet.preprocessing import Preprocessing, normalize


class WithPreprocessing(nn.Module):
    """Wraps a model so it takes uint8 RGB images [N, 3, H, W] and normalises them itself."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.model, self.mean, self.std = model, tuple(mean), tuple(std)

    def forward(self, images: Tensor) -> Tensor:
        return self.model(normalize(images.float() / 255, self.mean, self.std))


def export_onnx(
    model: nn.Module,
    path: str | Path,
    img_size: int,
    *,
    preprocessing: Preprocessing | None = None,
    opset: int = 18,
    check: bool = True,
) -> float:
    """Write ``model`` (eval mode) to ``path`` as ONNX with a dynamic batch axis and check it.

    Args:
        model: the network; exported in eval mode, so the auxiliary heads are not in the graph.
        img_size: height and width of the traced input (the graph keeps them fixed).
        preprocessing: where given, its normalisation is baked in: the graph then takes uint8 RGB
            [N, 3, H, W]; without it the graph takes float32 normalised RGB ("input"), as the model does.
        check: run onnxruntime on two batch sizes and compare with PyTorch.

    Returns:
        the largest absolute difference between onnxruntime and PyTorch logits (0.0 when not checked).
    """
    model = model.eval()
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
        return verify_onnx(module, tmp, example) if check else 0.0


def verify_onnx(module: nn.Module, onnx_path: str | Path, example: Tensor, tol: float = 1e-3) -> float:
    """Compare onnxruntime with PyTorch on batches of 1 and 3; raise if they differ by more than ``tol``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for n in (1, 3):
        x = example[:1].repeat(n, 1, 1, 1)
        x = x + torch.arange(n).view(-1, 1, 1, 1).to(x.dtype)  # distinct samples
        with torch.no_grad():
            expected = module(x).numpy()
        (got,) = session.run(None, {"input": x.numpy()})
        if got.shape != expected.shape:
            raise RuntimeError(f"onnxruntime output shape {got.shape} != PyTorch {expected.shape}")
        worst = max(worst, float(abs(got - expected).max()))
    scale = max(1.0, float(abs(expected).max()))
    if worst > tol * scale:
        raise RuntimeError(f"onnxruntime logits differ from PyTorch by {worst:.2e} (tolerance {tol * scale:.2e})")
    return worst


@dataclass
class ExportConfig:
    """What `googlenet export` reads (flags, or a TOML file given with --config)."""

    checkpoint: str = option(help="checkpoint file or run folder", metavar="CKPT")
    onnx: str = option(help="the ONNX file to write", metavar="OUT.onnx")
    img_size: int | None = option(None, "input height/width (default: the checkpoint's)", min=1)
    bake_preprocessing: bool = option(False, "the graph takes uint8 RGB [N, 3, H, W] and normalises it itself")


def run_export(cfg: ExportConfig) -> int:
    """`googlenet export`: write and verify the graph, then say what input it expects."""
    member = open_checkpoint(cfg.checkpoint)
    pre = member.preprocessing
    size = cfg.img_size or pre.img_size
    error = export_onnx(member.model, cfg.onnx, size, preprocessing=pre if cfg.bake_preprocessing else None)
    expects = (
        "uint8 RGB [N, 3, H, W], normalised inside the graph"
        if cfg.bake_preprocessing
        else f"float32 [N, 3, {size}, {size}] = (RGB / 255 - mean {list(pre.mean)}) / std {list(pre.std)}"
    )
    print(
        f"wrote {cfg.onnx}: input 'input' {expects}; output 'logits' [N, {len(member.class_names)}]; "
        f"onnxruntime max |diff| {error:.2e}"
    )
    return 0
