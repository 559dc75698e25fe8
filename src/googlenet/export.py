"""ONNX export with a dynamic batch axis, verified against onnxruntime before it returns."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from googlenet.augment import normalize
from googlenet.files import replacing


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
    preprocess: dict | None = None,
    opset: int = 18,
    check: bool = True,
) -> float:
    """Write ``model`` (eval mode) to ``path`` as ONNX with a dynamic batch axis and check it.

    Args:
        model: the network; exported in eval mode, so the auxiliary heads are not in the graph.
        img_size: height and width of the traced input (the graph keeps them fixed).
        preprocess: with {"mean", "std"}, bake normalisation in: the graph then takes uint8 RGB
            [N, 3, H, W]; without it the graph takes float32 normalised RGB ("input"), as the model does.
        check: run onnxruntime on two batch sizes and compare with PyTorch.

    Returns:
        the largest absolute difference between onnxruntime and PyTorch logits (0.0 when not checked).
    """
    model = model.eval()
    module: nn.Module = model
    example = torch.randn(2, 3, img_size, img_size)
    if preprocess is not None:
        module = WithPreprocessing(model, preprocess["mean"], preprocess["std"]).eval()
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
