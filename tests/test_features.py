"""`googlenet features` and extract_features: eval mode, the checkpoint's preprocessing, layers, outputs."""

import json

import numpy as np
import pytest
import torch

from googlenet import cli, create_model, extract_features, open_checkpoint
from googlenet.checkpoint import build_checkpoint, save_checkpoint
from googlenet.image_decode import decode_rgb
from googlenet.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, eval_crop

from .conftest import class_image, write_image

SIZE = 32
MEAN, STD = (0.2, 0.3, 0.4), (0.5, 0.6, 0.7)  # not ImageNet's: a hard-coded constant shows


def lively(model, seed=0):
    """Weights and BatchNorm statistics that keep activations near 1 through every layer, so comparisons of
    features are not comparisons of numbers close to 0; and BatchNorm in eval mode differs from train mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            fan_in = m.weight[0].numel()
            m.weight.data = torch.randn(m.weight.shape, generator=g) * (2 / fan_in) ** 0.5
        elif isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data = torch.rand(m.num_features, generator=g) * 0.2
    return model


def model_and_preprocessing(variant="googlenet_bn"):
    torch.manual_seed(0)
    model = lively(create_model(variant, num_classes=3, aux_logits=True)).eval()
    return model, Preprocessing(MEAN, STD, img_size=SIZE)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model, pre = model_and_preprocessing()
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, build_checkpoint(model, ["a", "b", "c"], pre))
    return path


def images(folder, n=3, suffix=".png", start=0):
    return [write_image(folder / f"img_{i}{suffix}", class_image(i % 3, i, (36 + 4 * i, 44))) for i in range(start, n)]


def by_hand(model, path, mean=MEAN, std=STD):
    """pool5 as the model computes it: eval mode, the evaluation crop, (x / 255 - mean) / std, up to avgpool."""
    model.eval()
    crop = eval_crop(decode_rgb(path), SIZE).float() / 255
    x = ((crop - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)).unsqueeze(0)
    with torch.no_grad():
        features, _, _ = model.forward_features(x)
        return torch.flatten(model.avgpool(features), 1)[0]


def features_cli(*args):
    return cli.main(["features", *map(str, args), "--device", "cpu"])


def test_pool5_equals_the_hand_computation(checkpoint, tmp_path):
    files = images(tmp_path / "imgs")
    model = open_checkpoint(checkpoint).model
    expected = torch.stack([by_hand(model, f) for f in files])
    assert expected.shape == (3, 1024) and expected.abs().mean() > 0.05
    api = extract_features(checkpoint, files)
    assert torch.allclose(api, expected, rtol=1e-4, atol=1e-5)
    out = tmp_path / "f.npz"
    assert features_cli("--checkpoint", checkpoint, tmp_path / "imgs", "--out", out, "--batch-size", "2") == 0
    saved = np.load(out)
    assert saved["features"].dtype == np.float32 and list(saved["paths"]) == [str(f) for f in files]
    # The command folds BatchNorm into the convolutions: the same numbers up to rounding.
    assert torch.allclose(torch.from_numpy(saved["features"]), expected, rtol=1e-4, atol=1e-4)
    assert "labels" not in saved


def test_a_model_in_train_mode_gives_eval_features_and_keeps_its_mode(tmp_path):
    model, pre = model_and_preprocessing()
    files = images(tmp_path)
    expected = extract_features(model, files, preprocessing=pre)
    model.train()
    model.aux1.eval()  # a caller's own mix of modes comes back as it was
    stats = model.conv1.bn.running_mean.clone()
    first = extract_features(model, files, preprocessing=pre, batch_size=2)
    second = extract_features(model, files, preprocessing=pre)
    assert torch.equal(second, expected)  # the same batches: the same numbers
    assert torch.allclose(first, expected, rtol=1e-5, atol=1e-5)  # other batches: rounding only
    assert model.training and model.conv1.bn.training and not model.aux1.training and not model.aux1.fc1.training
    assert torch.equal(model.conv1.bn.running_mean, stats)  # no BatchNorm statistics updated
    assert torch.allclose(expected[0], by_hand(model, files[0]), rtol=1e-4, atol=1e-5)


def test_the_checkpoints_own_normalisation_is_used(checkpoint, tmp_path):
    files = images(tmp_path, n=1)
    model = open_checkpoint(checkpoint).model
    got = extract_features(open_checkpoint(checkpoint), files)[0]
    assert torch.allclose(got, by_hand(model, files[0], MEAN, STD), rtol=1e-4, atol=1e-5)
    imagenet = by_hand(model, files[0], IMAGENET_MEAN, IMAGENET_STD)
    assert not torch.allclose(got, imagenet, rtol=1e-2, atol=1e-3)


def test_module_layers_are_their_output_averaged_and_unknown_ones_list_names(checkpoint, tmp_path, capsys):
    model, pre = model_and_preprocessing()
    files = images(tmp_path, n=2)
    kept = {}
    for name in ("inception4c", "inception4a"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: kept.__setitem__(name, o.clone()))
    with torch.no_grad():
        model(torch.stack([pre(decode_rgb(f)) for f in files]))
    got = extract_features(model, files, "inception4c", preprocessing=pre)
    assert got.shape == (2, 512)
    assert torch.allclose(got, kept["inception4c"].mean(dim=(2, 3)), rtol=1e-4, atol=1e-5)
    aux1 = extract_features(model, files, "aux1", preprocessing=pre)  # the input of the head on 4a
    assert torch.allclose(aux1, kept["inception4a"].mean(dim=(2, 3)), rtol=1e-4, atol=1e-5)
    assert extract_features(model, files, "inception4c.branch2", preprocessing=pre).shape == (2, 256)
    with pytest.raises(ValueError, match=r"unknown layer 'pool6'; valid layers: pool5, conv1, .*inception4c"):
        extract_features(model, files, "pool6", preprocessing=pre)
    with pytest.raises(ValueError, match=r"valid layers in inception4c: inception4c.branch1, inception4c.branch2"):
        extract_features(model, files, "inception4c.branch9", preprocessing=pre)
    out = tmp_path / "f.npz"
    assert features_cli("--checkpoint", checkpoint, *files, "--out", out, "--layer", "pool6") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown layer 'pool6'" in err[0] and "inception4c" in err[0]
    assert not out.exists()


def test_class_folder_labels_and_safetensors_round_trip(checkpoint, tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import load_file

    for c, name in enumerate(("cat", "dog")):
        for i in range(2):
            write_image(tmp_path / "data" / name / f"{i}.png", class_image(c, i))
    npz, st = tmp_path / "f.npz", tmp_path / "f.safetensors"
    assert features_cli("--checkpoint", checkpoint, tmp_path / "data", "--out", npz) == 0
    assert features_cli("--checkpoint", checkpoint, tmp_path / "data", "--out", st) == 0
    saved = np.load(npz)
    assert list(saved["labels"]) == [0, 0, 1, 1] and saved["labels"].dtype == np.int64
    assert list(saved["class_names"]) == ["cat", "dog"]
    tensors = load_file(st)
    with safe_open(st, "np") as f:
        meta = f.metadata()
    assert np.array_equal(tensors["features"], saved["features"]) and np.array_equal(tensors["labels"], saved["labels"])
    assert json.loads(meta["paths"]) == list(saved["paths"]) and json.loads(meta["class_names"]) == ["cat", "dog"]


def test_unreadable_files_are_named_skipped_and_fail_the_run(checkpoint, tmp_path, capsys):
    good = images(tmp_path / "imgs", n=2)
    bad = tmp_path / "imgs" / "x.jpg"
    bad.write_bytes(np.random.default_rng(0).bytes(300))
    out = tmp_path / "f.npz"
    assert features_cli("--checkpoint", checkpoint, tmp_path / "imgs", "--out", out, "--batch-size", "1") == 1
    err = capsys.readouterr().err
    assert f"cannot read {bad}" in err and "1 skipped" in err
    saved = np.load(out)
    assert list(saved["paths"]) == [str(f) for f in good]
    expected = extract_features(checkpoint, good)
    assert torch.allclose(torch.from_numpy(saved["features"]), expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="x.jpg"):
        extract_features(checkpoint, [good[0], bad])


def test_per_folder_h5_keys_each_video_and_orders_its_frames(checkpoint, tmp_path):
    h5py = pytest.importorskip("h5py")
    videos = tmp_path / "videos"
    for v in ("v1", "v2"):
        for i in (2, 0, 1):  # written out of order: rows must follow names
            write_image(videos / v / f"frame_{i}.png", class_image(i, int(v[1])))
    out = tmp_path / "f.h5"
    assert features_cli("--checkpoint", checkpoint, videos, "--out", out, "--per-folder") == 0
    with h5py.File(out) as f:
        assert sorted(f) == ["v1", "v2"]
        for v in ("v1", "v2"):
            names = [n.decode() if isinstance(n, bytes) else n for n in f[v].attrs["frames"]]
            assert names == ["frame_0.png", "frame_1.png", "frame_2.png"] and f[v].shape == (3, 1024)
            expected = extract_features(checkpoint, [videos / v / n for n in names])
            assert torch.allclose(torch.from_numpy(f[v][()]), expected, rtol=1e-4, atol=1e-4)
    assert features_cli("--checkpoint", checkpoint, videos, "--out", tmp_path / "f.npz", "--per-folder") == 1


def test_a_failed_run_leaves_no_output(checkpoint, tmp_path, capsys, monkeypatch):
    import googlenet.features as F

    files = images(tmp_path / "imgs", n=3)
    out = tmp_path / "f.npz"
    assert features_cli("--checkpoint", checkpoint, *files, "--out", tmp_path / "f.csv") == 1
    assert "unknown format" in capsys.readouterr().err and not (tmp_path / "f.csv").exists()
    out.write_bytes(b"previous")
    calls, vectors = [], F.Extraction.vectors

    def fail_on_second_batch(self, crops):
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("injected failure")
        return vectors(self, crops)

    monkeypatch.setattr(F.Extraction, "vectors", fail_on_second_batch)
    assert features_cli("--checkpoint", checkpoint, *files, "--out", out, "--batch-size", "1") == 1
    assert "injected failure" in capsys.readouterr().err
    monkeypatch.setitem(F.WRITERS, "npz", lambda tmp, *a: tmp.write_bytes(b"half") and 1 / 0)
    with pytest.raises(ZeroDivisionError):
        F.write_features(out, np.zeros((1, 4)), ["a"])
    assert out.read_bytes() == b"previous" and sorted(p.name for p in tmp_path.iterdir()) == ["f.npz", "imgs"]
