"""eval (1/10/144 crops, ensembles), predict, export and import of published weights."""

import json
import struct
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torchvision

from googlenet import cli, create_model, open_checkpoint
from googlenet.checkpoint import CheckpointError, LoadedModel, save_checkpoint
from googlenet.evaluate import eval_dataset, evaluate_ensemble, multi_crop
from googlenet.weights import caffe_layer_map, import_caffe, import_torchvision

from .conftest import write_image


def coordinate_image(h, w):
    """Float image whose channel 0 holds each pixel's x and channel 1 its y."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    return torch.stack([xs, ys, xs * 0 + 7])


def top_left(crop):
    return int(crop[0, 0, 0]), int(crop[1, 0, 0])


def test_one_and_ten_crops_cut_the_documented_boxes():
    img = coordinate_image(64, 80)  # shorter side already 64 = 56 * 256/224: no resizing
    one = multi_crop(img, 1, crop_size=56)
    assert one.shape == (1, 3, 56, 56) and top_left(one[0]) == (12, 4)
    ten = multi_crop(img, 10, crop_size=56)
    assert ten.shape == (10, 3, 56, 56)
    expected = [(0, 0), (24, 0), (0, 8), (24, 8), (12, 4)]
    assert [top_left(c) for c in ten[:5]] == expected
    for plain, mirrored in zip(ten[:5], ten[5:]):
        assert torch.equal(mirrored, plain.flip(-1))


@pytest.mark.parametrize("portrait", [False, True])
def test_144_crops_follow_the_paper_protocol(portrait):
    h, w = (256, 400)
    img = coordinate_image(h, w)
    if portrait:
        img = coordinate_image(w, h)
    crops = multi_crop(img, 144, crop_size=224)
    assert crops.shape == (144, 3, 224, 224)
    along = 1 if portrait else 0  # the channel holding the coordinate along the longer side
    # Scale 256 needs no resizing: squares start at 0, 72, 144 along the longer side.
    for square, start in enumerate((0, 72, 144)):
        base = (0 * 3 + square) * 6 * 2
        five = [crops[base + 2 * c] for c in range(5)]
        corners = [(0, 0), (32, 0), (0, 32), (32, 32), (16, 16)]
        for crop, (dx, dy) in zip(five, corners):
            x0, y0 = top_left(crop)
            if portrait:
                assert (x0, y0) == (dx, start + dy)
            else:
                assert (x0, y0) == (start + dx, dy)
        whole = crops[base + 2 * 5]
        # The whole 256 square resized to 224 spans the square's coordinates.
        assert whole[along].min() == pytest.approx(start, abs=1.0)
        assert whole[along].max() == pytest.approx(start + 255, abs=1.0)
        for c in range(6):
            assert torch.equal(crops[base + 2 * c + 1], crops[base + 2 * c].flip(-1))
    # Scale 352: the image is enlarged 352/256; the centre square's centre crop still maps to the centre.
    centre = crops[((3 * 3 + 1) * 6 + 4) * 2]
    assert centre[along].mean() == pytest.approx(199.5, abs=1.0)
    assert centre[1 - along].mean() == pytest.approx(127.5, abs=1.0)


def test_multi_crop_accepts_uint8_and_rejects_bad_counts():
    import googlenet

    img = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8)
    assert googlenet.multi_crop(img, 10, 32).dtype == torch.uint8
    with pytest.raises(ValueError, match="1, 10, 144"):
        multi_crop(img, 5, 32)


# --------------------------------------------------------------------------------------- checkpoints


def make_checkpoint(path, classes, img_size=32, seed=0, variant="googlenet_bn"):
    torch.manual_seed(seed)
    model = create_model(variant, num_classes=len(classes), aux_logits=False)
    save_checkpoint(
        path,
        {
            "model_config": model.config.to_dict(),
            "class_names": classes,
            "model": model.state_dict(),
            "preprocess": {
                "mean": [0.5] * 3,
                "std": [0.25] * 3,
                "grayscale": False,
                "resize_ratio": 256 / 224,
                "img_size": img_size,
            },
        },
    )
    return path


def test_eval_single_crop_equals_a_manual_computation(image_folder, tmp_path):
    classes = ["class_0", "class_1", "class_2"]
    member = open_checkpoint(make_checkpoint(tmp_path / "a.pt", classes))
    dataset = eval_dataset(str(image_folder), classes)
    result = evaluate_ensemble([member], dataset, n_crops=1, workers=0)
    correct = 0
    for i in range(len(dataset)):
        img, label, _ = dataset[i]
        x = (multi_crop(img, 1, 32).float() / 255 - 0.5) / 0.25
        correct += int(member.model(x).argmax(1).item() == label)
    assert result.images == 12 and result.top1 == pytest.approx(100 * correct / 12)
    assert result.top5 == 100.0  # 3 classes
    assert set(result.per_class) == set(classes)


class FixedLogits(torch.nn.Module):
    """A stand-in model that gives every image the same logits."""

    def __init__(self, probabilities):
        super().__init__()
        self.logits = torch.tensor(probabilities).log()

    def forward(self, x):
        return self.logits.expand(len(x), -1)


def test_ensemble_top1_is_that_of_the_averaged_softmax_not_of_a_member(image_folder, tmp_path):
    # Alone, member a picks class 0 and member b class 2; averaged, the ensemble picks class 1. An ensemble
    # that used one member, or voted, would score differently on class_1's images.
    classes = ["class_0", "class_1", "class_2"]
    loaded = open_checkpoint(make_checkpoint(tmp_path / "a.pt", classes))
    a = LoadedModel(FixedLogits([0.5, 0.45, 0.05]), classes, loaded.preprocessing, tmp_path / "a.pt")
    b = LoadedModel(FixedLogits([0.05, 0.45, 0.5]), classes, loaded.preprocessing, tmp_path / "b.pt")
    dataset = eval_dataset(str(image_folder), classes)
    assert evaluate_ensemble([a], dataset, 1, workers=0).per_class == {"class_0": 100, "class_1": 0, "class_2": 0}
    assert evaluate_ensemble([b], dataset, 1, workers=0).per_class == {"class_0": 0, "class_1": 0, "class_2": 100}
    both = evaluate_ensemble([a, b], dataset, 1, workers=0)
    assert both.per_class == {"class_0": 0, "class_1": 100, "class_2": 0} and both.models == 2


def test_ensemble_averages_softmax_and_checks_classes(image_folder, tmp_path):
    classes = ["class_0", "class_1", "class_2"]
    a = open_checkpoint(make_checkpoint(tmp_path / "a.pt", classes, seed=1))
    b = open_checkpoint(make_checkpoint(tmp_path / "b.pt", classes, seed=2))
    dataset = eval_dataset(str(image_folder), classes)
    same = evaluate_ensemble([a, a], dataset, 10, workers=0)
    assert same.top1 == evaluate_ensemble([a], dataset, 10, workers=0).top1
    both = evaluate_ensemble([a, b], dataset, 10, workers=0)
    assert both.models == 2 and both.crops == 10
    other = open_checkpoint(make_checkpoint(tmp_path / "c.pt", ["x", "y", "z"]))
    with pytest.raises(CheckpointError, match="disagree on the classes"):
        evaluate_ensemble([a, other], dataset, 1, workers=0)


class RecordingModel(torch.nn.Module):
    """Wraps a model and records the batch size of every forward pass."""

    def __init__(self, model):
        super().__init__()
        self.model, self.batches = model, []

    def forward(self, x):
        self.batches.append(len(x))
        return self.model(x)


def test_batch_size_bounds_the_crops_per_forward_without_changing_results(image_folder, tmp_path):
    classes = ["class_0", "class_1", "class_2"]
    dataset = eval_dataset(str(image_folder), classes)
    member = open_checkpoint(make_checkpoint(tmp_path / "a.pt", classes, seed=3))
    whole = evaluate_ensemble([member], dataset, 10, batch_size=10 * len(dataset), workers=0)
    member.model = RecordingModel(member.model)
    chunked = evaluate_ensemble([member], dataset, 10, batch_size=7, workers=0)
    # 7 // 10 crops -> one image per step, its 10 crops in passes of 7 and 3.
    assert member.model.batches == [7, 3] * len(dataset)
    assert chunked.top1 == whole.top1 and chunked.top5 == whole.top5
    assert torch.equal(chunked.confusion, whole.confusion)


def test_eval_img_size_replaces_every_members_crop_size(image_folder, tmp_path, monkeypatch):
    import googlenet.evaluate

    classes = ["class_0", "class_1", "class_2"]
    members = [make_checkpoint(tmp_path / f"{n}.pt", classes, img_size=n) for n in (32, 48)]
    seen, forward = [], googlenet.evaluate._softmax_in_chunks
    monkeypatch.setattr(
        googlenet.evaluate, "_softmax_in_chunks", lambda m, c, *a: seen.append(c.shape[-1]) or forward(m, c, *a)
    )
    out = tmp_path / "eval.json"
    args = ["eval", "--checkpoint", str(members[0]), "--checkpoint", str(members[1]), "--data", str(image_folder)]
    assert cli.main([*args, "--img-size", "40", "--workers", "0", "--json", str(out)]) == 0
    assert set(seen) == {40} and json.loads(out.read_text())["img_sizes"] == [40, 40]
    seen.clear()
    assert cli.main([*args, "--workers", "0", "--json", str(out)]) == 0  # without the flag: each its own
    assert set(seen) == {32, 48} and json.loads(out.read_text())["img_sizes"] == [32, 48]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "googlenet", *args], capture_output=True, text=True, timeout=600)


def test_eval_cli_144_crops_writes_json_and_confusion(image_folder, tmp_path):
    ckpt = make_checkpoint(tmp_path / "a.pt", ["class_0", "class_1", "class_2"])
    out = tmp_path / "eval.json"
    result = run_cli(
        "eval",
        "--checkpoint",
        str(ckpt),
        "--data",
        str(image_folder),
        "--crops",
        "144",
        "--json",
        str(out),
        "--workers",
        "0",
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert (data["crops"], data["images"], data["models"]) == (144, 12, 1)
    assert out.with_suffix(".confusion.png").stat().st_size > 1000


def test_eval_cli_writes_its_files_even_when_stdout_is_closed(image_folder, tmp_path):
    # As `googlenet eval ... | head -n 1` can leave it: the reader is gone before the first print.
    ckpt = make_checkpoint(tmp_path / "a.pt", ["class_0", "class_1", "class_2"])
    out = tmp_path / "eval.json"
    cmd = [sys.executable, "-m", "googlenet", "eval", "--checkpoint", str(ckpt), "--data", str(image_folder)]
    proc = subprocess.Popen([*cmd, "--json", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # our read end: every write of the child now fails with EPIPE
    stderr = proc.communicate(timeout=600)[1]
    assert json.loads(out.read_text())["images"] == 12
    assert proc.returncode == 1 and "Traceback" not in stderr, stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--checkpoint", "missing.pt"], "checkpoint not found"),
        (["--checkpoint", "{corrupt}"], "not a readable PyTorch file (damaged or truncated)"),
        (["--checkpoint", "{ckpt}", "--data", "{other_classes}"], "class folders not in the training classes"),
        (["--checkpoint", "{ckpt}", "--img-size", "8"], "--img-size 8 is outside googlenet_bn's range 15-4096 px"),
    ],
)
def test_eval_cli_errors_are_one_line(image_folder, tmp_path, args, message):
    ckpt = make_checkpoint(tmp_path / "a.pt", ["class_0", "class_1", "class_2"])
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(ckpt.read_bytes()[:5000])  # truncated
    other = tmp_path / "other" / "val" / "dog"
    write_image(other / "x.JPEG", torch.zeros(3, 20, 20, dtype=torch.uint8))
    fill = {"ckpt": ckpt, "corrupt": corrupt, "other_classes": tmp_path / "other"}
    result = run_cli("eval", "--workers", "0", "--data", str(image_folder), *[a.format(**fill) for a in args])
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("googlenet: error:") and message in lines[0], result.stderr


def test_unknown_crop_count_is_a_usage_error(tmp_path):
    result = run_cli("eval", "--checkpoint", "x.pt", "--crops", "7")
    assert result.returncode == 2 and "invalid choice: 7" in result.stderr


@pytest.mark.parametrize("device, expected", [("cpu", 32), ("cuda", 256)])
def test_eval_batch_size_defaults_to_the_device(device, expected):
    from googlenet.evaluate import default_batch_size

    assert default_batch_size(torch.device(device)) == expected


def test_eval_batch_size_flag_wins_over_the_default(monkeypatch):
    import googlenet.evaluate as evaluate

    seen = {}

    def stop_at_evaluation(members, dataset, crops, batch_size, workers, device):
        seen["batch_size"] = batch_size
        raise SystemExit(0)

    member = SimpleNamespace(
        class_names=None, model=SimpleNamespace(config=SimpleNamespace(variant="googlenet")), preprocessing=None
    )
    member.preprocessing = SimpleNamespace(img_size=32)
    monkeypatch.setattr(evaluate, "open_checkpoint", lambda *a, **k: member)
    monkeypatch.setattr(evaluate, "eval_dataset", lambda *a, **k: None)
    monkeypatch.setattr(evaluate, "evaluate_ensemble", stop_at_evaluation)
    with pytest.raises(SystemExit):
        cli.main(["eval", "--checkpoint", "x.pt", "--batch-size", "8", "--device", "cpu"])
    assert seen["batch_size"] == 8


@pytest.mark.parametrize(
    "command", [[], ["summary"], ["train"], ["prepare"], ["eval"], ["predict"], ["export"], ["import"]]
)
def test_every_help_page_prints(command, capsys):
    # `train --help` once crashed: argparse %-formats help text and a field's help said "75% of epochs".
    with pytest.raises(SystemExit) as done:
        cli.main([*command, "--help"])
    assert done.value.code == 0 and "usage: googlenet" in capsys.readouterr().out


def test_the_top_help_describes_every_command():
    description = cli.build_parser().description  # the usage line lists them all anyway; this is the prose
    assert all(name in description for name in cli.COMMANDS), description


@pytest.mark.parametrize(
    "args, message",
    [
        (["eval", "--checkpoint", "x.pt", "--batch-size", "0"], "--batch-size: must be at least 1, got 0"),
        (["eval", "--checkpoint", "x.pt", "--workers", "-1"], "--workers: must be at least 0, got -1"),
        (["export", "--checkpoint", "x.pt", "--onnx", "y.onnx", "--min-agreement", "150"], "most 100.0, got 150.0"),
        (["predict", "--checkpoint", "x.pt", "a.png", "--top-k", "0"], "--top-k: must be at least 1, got 0"),
        (["export", "--checkpoint", "x.pt", "--onnx", "x.onnx", "--img-size", "ten"], "'ten' is not a whole number"),
        (["prepare", "src", "--out", "o", "--short-side", "-5"], "--short-side: must be at least 0, got -5"),
        (["prepare", "src", "--out", "o", "--quality", "101"], "--quality: must be at most 100, got 101"),
    ],
)
def test_counts_below_their_minimum_are_usage_errors(args, message):
    # Before: --batch-size 0 was quietly read as 1 image per step; a usage error names the flag instead.
    result = run_cli(*args)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_predict_cli_reports_bad_files_and_predicts_the_rest(image_folder, tmp_path):
    ckpt = make_checkpoint(tmp_path / "a.pt", ["class_0", "class_1", "class_2"])
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    good = sorted((image_folder / "val" / "class_1").iterdir())[0]
    result = run_cli(
        "predict",
        "--checkpoint",
        str(ckpt),
        str(good),
        str(bad),
        str(image_folder / "val" / "class_2"),
        "--top-k",
        "2",
        "--json",
    )
    assert result.returncode == 1
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 1 + 4 and rows[0]["path"] == str(good)
    assert all(len(r["top_k"]) == 2 and r["top_k"][0]["probability"] >= r["top_k"][1]["probability"] for r in rows)
    assert result.stderr.count("\n") == 1 and "broken.jpg" in result.stderr


def test_paths_after_options_join_the_paths_and_unknown_options_are_still_refused(image_folder, tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "a.pt", ["class_0", "class_1", "class_2"])
    first, second = sorted((image_folder / "val" / "class_1").iterdir())[:2]
    assert cli.main(["predict", "--checkpoint", str(ckpt), str(first), "--top-k", "1", str(second)]) == 0
    assert [ln.split(":")[0] for ln in capsys.readouterr().out.splitlines()] == [str(first), str(second)]
    with pytest.raises(SystemExit) as refused:
        cli.main(["predict", "--checkpoint", str(ckpt), str(first), "--top-k", "1", str(second), "--bogus"])
    assert refused.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_export_cli_writes_a_checked_onnx(tmp_path):
    ckpt = make_checkpoint(tmp_path / "a.pt", ["a", "b"], img_size=40)
    result = run_cli("export", "--checkpoint", str(ckpt), "--onnx", str(tmp_path / "m.onnx"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m.onnx").is_file() and "onnxruntime max |diff|" in result.stdout


# ------------------------------------------------------------------------------------------- imports


def test_import_torchvision_weights_behaves_like_torchvision(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True, transform_input=True)
    for m in tv.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 1.5)
            m.running_mean.normal_(0, 0.1)
    torch.save(tv.state_dict(), tmp_path / "googlenet-1378be20.pth")
    result = run_cli(
        "import", "torchvision", str(tmp_path / "googlenet-1378be20.pth"), "--out", str(tmp_path / "tv.pt")
    )
    assert result.returncode == 0, result.stderr
    member = open_checkpoint(tmp_path / "tv.pt")
    assert member.model.config.transform_input and member.model.config.variant == "googlenet_bn"
    assert member.class_names[0] == "tench" and len(member.class_names) == 1000
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(member.model(x), tv.eval()(x), rtol=1e-4, atol=1e-5)


def test_import_rejects_files_that_are_not_weights(tmp_path):
    (tmp_path / "x.pth").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable PyTorch file"):
        import_torchvision(tmp_path / "x.pth", tmp_path / "out.pt")
    torch.save({"a": torch.ones(1)}, tmp_path / "y.pth")
    with pytest.raises(CheckpointError, match="not a torchvision googlenet"):
        import_torchvision(tmp_path / "y.pth", tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


# A minimal protobuf writer, enough to build caffemodels in both encodings.
def _varint(n):
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num, wire, payload):
    key = _varint(num << 3 | wire)
    return key + (_varint(len(payload)) + payload if wire == 2 else payload)


def _blob(t, modern):
    if modern:  # BlobShape (7) with packed dims, packed float data (5)
        shape = _field(1, 2, b"".join(_varint(d) for d in t.shape))
        return _field(7, 2, shape) + _field(5, 2, struct.pack(f"<{t.numel()}f", *t.flatten().tolist()))
    # V1 style: num/channels/height/width, floats not packed
    dims = [1] * (4 - t.dim()) + list(t.shape)
    head = b"".join(_field(i + 1, 0, _varint(d)) for i, d in enumerate(dims))
    return head + b"".join(_field(5, 5, struct.pack("<f", v)) for v in t.flatten().tolist())


def write_caffemodel(path, blobs, modern):
    layers = b""
    for name, tensors in blobs.items():
        if modern:
            body = _field(1, 2, name.encode()) + _field(2, 2, b"Convolution")
            body += b"".join(_field(7, 2, _blob(t, True)) for t in tensors)
            layers += _field(100, 2, body)
        else:
            body = _field(4, 2, name.encode()) + _field(5, 0, _varint(4))
            body += b"".join(_field(6, 2, _blob(t, False)) for t in tensors)
            layers += _field(2, 2, body)
    path.write_bytes(_field(1, 2, b"GoogleNet") + layers)


def random_caffe_blobs(num_classes=1000):
    shapes = create_model("googlenet", num_classes=num_classes).state_dict()
    g = torch.Generator().manual_seed(0)
    return {
        name: [
            torch.randn(shapes[f"{prefix}.weight"].shape, generator=g) * 0.05,
            torch.randn(shapes[f"{prefix}.bias"].shape, generator=g) * 0.05,
        ]
        for name, prefix in caffe_layer_map().items()
    }


@pytest.mark.parametrize("modern", [True, False])
def test_import_caffe_places_every_blob_and_handles_bgr_and_mean(tmp_path, modern):
    blobs = random_caffe_blobs(num_classes=10 if not modern else 1000)
    write_caffemodel(tmp_path / "bvlc_googlenet.caffemodel", blobs, modern)
    model = import_caffe(tmp_path / "bvlc_googlenet.caffemodel", tmp_path / "caffe.pt")
    state = model.state_dict()
    for name, prefix in caffe_layer_map().items():
        assert torch.equal(state[f"{prefix}.weight"], blobs[name][0].reshape(state[f"{prefix}.weight"].shape)), name
        assert torch.equal(state[f"{prefix}.bias"], blobs[name][1]), name
    member = open_checkpoint(tmp_path / "caffe.pt")
    assert member.model.config.variant == "googlenet" and member.model.config.caffe_input
    # Oracle: the same weights fed Caffe's own input (BGR, 0-255, minus 104/117/123) without the remap.
    plain = create_model("googlenet", num_classes=len(member.class_names), caffe_input=False).eval()
    plain.load_state_dict(state)
    rgb01 = torch.rand(2, 3, 224, 224)
    mean, std = (
        torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
    )
    caffe_in = rgb01.flip(1) * 255 - torch.tensor([104.0, 117.0, 123.0]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(member.model((rgb01 - mean) / std), plain(caffe_in), rtol=1e-3, atol=1e-3)


def test_import_caffe_rejects_other_networks(tmp_path):
    write_caffemodel(tmp_path / "x.caffemodel", {"conv1": [torch.ones(2, 3, 1, 1), torch.ones(2)]}, True)
    with pytest.raises(CheckpointError, match="missing layers"):
        import_caffe(tmp_path / "x.caffemodel", tmp_path / "out.pt")
    (tmp_path / "y.caffemodel").write_bytes(b"\xff\xff\xff")
    with pytest.raises(CheckpointError, match="x.caffemodel|y.caffemodel"):
        import_caffe(tmp_path / "y.caffemodel", tmp_path / "out.pt")
