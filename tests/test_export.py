"""torch.compile, torch.export and ONNX (checked with onnxruntime) give the eager logits."""

import os

import onnx
import pytest
import torch

from googlenet import create_model
from googlenet.export import export_onnx, verify_onnx
from googlenet.preprocessing import Preprocessing


@pytest.fixture(params=["googlenet", "googlenet_bn"])
def model(request):
    torch.manual_seed(0)
    return create_model(request.param, num_classes=10).eval()


# Each compile takes over a minute on 2 CPU cores (four for a googlenet_bn training step), so only the paper
# variant is compiled: its LRN is the unusual part; googlenet_bn is torchvision's layer for layer.
@pytest.mark.slow
def test_torch_compile_matches_eager():
    torch.manual_seed(0)
    model = create_model("googlenet", num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        got = torch.compile(model)(x)
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_torch_compile_training_step_with_aux():
    model = create_model("googlenet", num_classes=10).train()
    compiled = torch.compile(model)
    x, y = torch.randn(4, 3, 64, 64), torch.randint(0, 10, (4,))
    out = compiled(x, with_aux=True)
    assert len(out) == 3 and all(t.shape == (4, 10) for t in out)
    loss = sum(torch.nn.functional.cross_entropy(t, y) for t in out)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_torch_export_matches_eager(model):
    x = torch.randn(2, 3, 64, 64)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-4, atol=1e-5)


def test_onnx_export_matches_onnxruntime(model, tmp_path):
    path = tmp_path / "model.onnx"
    error = export_onnx(model, path, img_size=64)
    assert path.is_file() and error < 1e-3
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # what open() gives, not a temporary file's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # nothing temporary left
    # The batch axis is dynamic: another batch size runs and matches too.
    verify_onnx(model, path, torch.randn(5, 3, 64, 64))
    # The paper variant's LRN exports as square roots around a constant band: no general power (slow in
    # onnxruntime's CPU kernels, and left in float by int8 quantisation), no graph that builds the band, and
    # k as the band convolution's bias rather than an Add of its own.
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert not ops & {"Pow", "Range", "Shape", "Add"}, ops


def test_a_channels_last_model_exports_without_strided_gathers_and_keeps_its_layout(tmp_path):
    # Checkpoints open channels_last for the CPU; traced as is, the flatten before the classifier became a
    # strided Gather built from Shape and Range nodes.
    model = create_model("googlenet_bn", num_classes=3).eval().to(memory_format=torch.channels_last)
    export_onnx(model, tmp_path / "model.onnx", img_size=64)  # a 2x2 map before the average pool
    ops = {node.op_type for node in onnx.load(str(tmp_path / "model.onnx")).graph.node}
    assert not ops & {"Gather", "Range", "Shape"}, ops
    assert model.conv1.conv.weight.is_contiguous(memory_format=torch.channels_last)  # the caller's model


def test_onnx_export_with_baked_preprocessing(tmp_path):
    import onnxruntime as ort

    model = create_model("googlenet_bn", num_classes=3).eval()
    path = tmp_path / "baked.onnx"
    export_onnx(model, path, img_size=48, preprocessing=Preprocessing((0.5, 0.4, 0.3), (0.2, 0.25, 0.3)))
    images = torch.randint(0, 256, (2, 3, 48, 48), dtype=torch.uint8)
    (got,) = ort.InferenceSession(str(path)).run(None, {"input": images.numpy()})
    mean = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)
    std = torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model((images.float() / 255 - mean) / std)
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-3, atol=1e-4)
