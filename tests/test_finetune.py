"""Fine-tuning with `train --init`: what loads, what is made anew, what travels, what stays frozen, resume."""

import json
import math
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from googlenet import cli, create_model, finetune, train
from googlenet import config as C
from googlenet.checkpoint import build_checkpoint, read_checkpoint, save_checkpoint
from googlenet.distributed import DistInfo
from googlenet.preprocessing import Preprocessing
from googlenet.progress import Progress
from googlenet.weights import import_caffe, import_torchvision

from .conftest import make_image_folder, small_config
from .test_tools import random_caffe_blobs, write_caffemodel

FOLDER_CLASSES = ["class_0", "class_1", "class_2"]
# Constants unlike the folder data's own (ImageNet's), so that where they arrive shows where they came from.
SOURCE_MEAN, SOURCE_STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def source_checkpoint(path, variant="googlenet_bn", classes=("a", "b", "c", "d", "e"), aux=True, seed=0):
    """A checkpoint as a training run writes it: trained auxiliary heads, BN statistics away from 0 and 1."""
    torch.manual_seed(seed)
    model = create_model(variant, num_classes=len(classes), aux_logits=aux)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    pre = Preprocessing(SOURCE_MEAN, SOURCE_STD, 224)
    save_checkpoint(path, build_checkpoint(model, list(classes), pre, config={"model": variant, "aux_weight": 0.3}))
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("finetune") / "data")


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """`googlenet import` outputs of both formats, 10 classes each (a quicker stand-in for ImageNet's 1000)."""
    root = tmp_path_factory.mktemp("imported")
    torch.manual_seed(0)
    tv = torchvision.models.googlenet(
        weights=None, num_classes=10, aux_logits=True, init_weights=True, transform_input=True
    )
    torch.save(tv.state_dict(), root / "tv.pth")
    import_torchvision(root / "tv.pth", root / "torchvision.pt")
    write_caffemodel(root / "bvlc.caffemodel", random_caffe_blobs(num_classes=10), modern=True)
    import_caffe(root / "bvlc.caffemodel", root / "caffe.pt")
    return {"torchvision": root / "torchvision.pt", "caffe": root / "caffe.pt"}


def trainer(folder, out, **kw):
    return train.Trainer(small_config(folder, out, **kw), DistInfo())


def tensors_equal(a, b, keys):
    return [k for k in keys if not torch.equal(a[k], b[k])]


def test_forward_order_names_every_module_of_both_variants():
    for variant in ("googlenet", "googlenet_bn"):
        names = {name for name, _ in create_model(variant).named_children()}
        assert names == set(finetune.FORWARD_ORDER) | set(finetune.AUX_HANGS_ON), variant


# ------------------------------------------------------------------------------------------- loading


def test_new_classes_make_a_new_classifier_and_the_backbone_loads(folder, tmp_path, caplog):
    src = source_checkpoint(tmp_path / "src.pt")
    source = read_checkpoint(src)["model"]
    with caplog.at_level("INFO", logger="googlenet"):
        t = trainer(folder, tmp_path / "run", init=str(src), model="googlenet_bn")
    state = t.model.state_dict()
    assert t.model.fc.out_features == 3 and t.model.aux1.fc2.out_features == 3
    new = ("fc.", "aux1.fc2.", "aux2.fc2.")
    kept = [k for k in source if not k.startswith(new)]
    assert len(kept) > 300 and tensors_equal(state, source, kept) == []  # trained aux heads kept too
    assert t.new_modules == ["fc", "aux1.fc2", "aux2.fc2"]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("init:")]
    assert lines == [
        f"init: loaded {len(kept)} tensors from {src}",
        "init: made anew 6 tensors (aux1.fc2, aux2.fc2, fc): 3 classes here, 5 in the source",
        "init: dropped 6 tensors (aux1.fc2, aux2.fc2, fc)",
    ]


def test_the_same_class_list_keeps_the_classifier(folder, tmp_path):
    src = source_checkpoint(tmp_path / "src.pt", classes=FOLDER_CLASSES)
    source = read_checkpoint(src)["model"]
    t = trainer(folder, tmp_path / "run", init=str(src), model="googlenet_bn")
    assert t.new_modules == [] and tensors_equal(t.model.state_dict(), source, list(source)) == []
    # Other names in the same number: a new classifier all the same.
    src = source_checkpoint(tmp_path / "other.pt", classes=("x", "y", "z"))
    t = trainer(folder, tmp_path / "run2", init=str(src), model="googlenet_bn")
    assert t.new_modules == ["fc", "aux1.fc2", "aux2.fc2"]
    assert not torch.equal(t.model.fc.weight, read_checkpoint(src)["model"]["fc.weight"])


def test_another_variant_is_a_one_line_cli_error(folder, tmp_path):
    src = source_checkpoint(tmp_path / "src.pt", variant="googlenet_bn")
    cmd = [sys.executable, "-m", "googlenet", "train", "--init", str(src), "--model", "googlenet"]
    cmd += ["--data", str(folder), "--out", str(tmp_path / "run"), "--workers", "0"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("googlenet: error:"), result.stderr
    assert "googlenet_bn" in lines[0] and "--model googlenet_bn" in lines[0]


# -------------------------------------------------------------------------------- what travels along


@pytest.mark.parametrize("kind", ["torchvision", "caffe", "trained"])
def test_preprocessing_and_input_remapping_travel_with_the_weights(folder, imported, tmp_path, kind):
    src = imported.get(kind) or source_checkpoint(tmp_path / "src.pt")
    source = read_checkpoint(src)
    variant = source["model_config"]["variant"]
    out = tmp_path / "run"
    train.run(small_config(folder, out, init=str(src), model=variant, epochs=1))
    ckpt = read_checkpoint(out / "checkpoint_last.pt")
    for key in ("mean", "std"):
        assert ckpt["preprocess"][key] == source["preprocess"][key], key
    for flag in ("transform_input", "caffe_input"):
        assert ckpt["model_config"][flag] == source["model_config"][flag], flag
    assert ckpt["model_config"]["transform_input"] == (kind == "torchvision")
    assert ckpt["model_config"]["caffe_input"] == (kind == "caffe")
    assert ckpt["class_names"] == FOLDER_CLASSES and ckpt["preprocess"]["img_size"] == 32  # img_size: the run's


def test_training_batches_are_normalised_with_the_source_constants(folder, tmp_path):
    src = source_checkpoint(tmp_path / "src.pt")
    t = trainer(folder, tmp_path / "run", init=str(src), model="googlenet_bn")
    for source in (t.data.train, t.data.val):
        torch.testing.assert_close(source.mean.flatten(), torch.tensor(SOURCE_MEAN))
        torch.testing.assert_close(source.std.flatten(), torch.tensor(SOURCE_STD))


def test_torchvision_weights_drop_the_aux_heads_unless_asked(folder, imported, tmp_path, caplog):
    with caplog.at_level("INFO", logger="googlenet"):
        t = trainer(folder, tmp_path / "a", init=str(imported["torchvision"]), model="googlenet_bn")
    assert t.model.aux1 is None and t.model.aux2 is None and t.cfg.aux_logits is False
    assert f"auxiliary heads dropped: {imported['torchvision']} has none" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="googlenet"):
        t = trainer(folder, tmp_path / "b", init=str(imported["torchvision"]), model="googlenet_bn", aux_logits=True)
    assert t.model.aux1 is not None and t.new_modules == ["fc", "aux1", "aux2"]
    assert "auxiliary heads dropped" not in caplog.text
    assert re.search(r"init: made anew \d+ tensors \(aux1, aux2, fc\)", caplog.text)


def test_untrained_aux_heads_are_not_kept(folder, tmp_path, caplog):
    src = tmp_path / "src.pt"
    source_checkpoint(src)
    ckpt = read_checkpoint(src)
    save_checkpoint(src, {**ckpt, "config": {**ckpt["config"], "aux_weight": 0.0}})
    with caplog.at_level("INFO", logger="googlenet"):
        t = trainer(folder, tmp_path / "run", init=str(src), model="googlenet_bn")
    assert t.model.aux1 is None and "were never trained" in caplog.text
    assert re.search(r"init: dropped \d+ tensors \(aux1, aux2, fc\)", caplog.text)


# ------------------------------------------------------------------------------------------- freezing


def test_freeze_features_trains_only_the_classifier(folder, tmp_path, caplog):
    src = source_checkpoint(tmp_path / "src.pt")
    source = read_checkpoint(src)["model"]
    cfg = small_config(folder, tmp_path / "run", init=str(src), model="googlenet_bn", epochs=1, freeze="features")
    with caplog.at_level("INFO", logger="googlenet"):
        train.run(cfg)
    assert "auxiliary heads dropped: --freeze features" in caplog.text
    ckpt = read_checkpoint(tmp_path / "run" / "checkpoint_last.pt")
    after = ckpt["model"]
    backbone = [k for k in after if not k.startswith("fc.")]
    assert set(after) == {k for k in source if not k.startswith(("aux1.", "aux2."))}
    assert tensors_equal(after, source, backbone) == []  # weights and BN statistics alike
    opt = ckpt["train_state"]["optimizer"]
    assert sum(len(g["params"]) for g in opt["param_groups"]) == 2  # fc.weight and fc.bias, nothing else
    assert len(opt["state"]) == 2
    t = trainer(folder, tmp_path / "probe", init=str(src), model="googlenet_bn", freeze="features")
    in_optimizer = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(t.model.fc.weight), id(t.model.fc.bias)}
    assert not torch.equal(after["fc.weight"], t.model.fc.weight.detach())  # it trained


@pytest.fixture(scope="module")
def frozen_4e(folder, tmp_path_factory):
    """One epoch of googlenet_bn fine-tuning with inception4e and below fixed and the new heads at 5x lr."""
    root = tmp_path_factory.mktemp("frozen_4e")
    src = source_checkpoint(root / "src.pt")
    kw = dict(init=str(src), model="googlenet_bn", epochs=1, freeze="inception4e", head_lr_mult=5.0)
    train.run(small_config(folder, root / "run", **kw))
    t = train.Trainer(small_config(folder, root / "again", **kw), DistInfo())
    return read_checkpoint(src)["model"], read_checkpoint(root / "run" / "checkpoint_last.pt"), t


def test_frozen_batchnorm_statistics_do_not_move(frozen_4e):
    source, ckpt, _ = frozen_4e
    after = ckpt["model"]
    for stat in ("running_mean", "running_var", "num_batches_tracked"):
        frozen = f"inception4e.branch1.bn.{stat}"
        assert torch.equal(after[frozen], source[frozen]), frozen
    trained = "inception5a.branch1.bn.running_mean"
    assert not torch.equal(after[trained], source[trained])
    assert int(after["inception5a.branch1.bn.num_batches_tracked"]) > 0


def test_freeze_a_layer_fixes_it_and_all_below(frozen_4e):
    source, ckpt, t = frozen_4e
    after = ckpt["model"]
    frozen = [k for k in after if k.split(".")[0] in finetune.frozen_modules("inception4e")]
    assert any(k.startswith("conv1.") for k in frozen) and any(k.startswith("inception4e.") for k in frozen)
    assert tensors_equal(after, source, frozen) == []
    for name, p in t.model.named_parameters():
        top = name.split(".")[0]
        assert p.requires_grad == (top in ("inception5a", "inception5b", "fc")), name
    assert not torch.equal(after["inception5a.branch1.conv.weight"], source["inception5a.branch1.conv.weight"])


def test_head_lr_mult_scales_the_new_heads_at_every_step(frozen_4e):
    _, ckpt, t = frozen_4e
    groups = ckpt["train_state"]["optimizer"]["param_groups"]
    loaded = [g for g in groups if g["lr_mult"] == 1.0]
    heads = [g for g in groups if g["lr_mult"] == 5.0]
    assert len(loaded) == 2 and len(heads) == 2 and loaded[0]["lr"] > 0
    for g in heads:
        assert g["lr"] == pytest.approx(5 * loaded[0]["lr"])
    assert ckpt["metrics"]["lr"] == pytest.approx(loaded[0]["lr"])  # the schedule's rate, not the heads'
    new = {id(p) for g in t.optimizer.param_groups if g["lr_mult"] == 5.0 for p in g["params"]}
    assert new == {id(p) for p in t.model.fc.parameters()}  # aux heads dropped: they hang on frozen layers


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"init": "x.pt", "freeze": "inception9z"}, "valid: none, features, conv1, conv2, conv3, inception3a"),
        ({"freeze": "features"}, "--freeze keeps pretrained layers fixed; it needs --init"),
        ({"init": "x.pt", "head_lr_mult": 0.0}, "head_lr_mult must be > 0"),
    ],
)
def test_freeze_and_head_lr_settings_are_checked(flags, message):
    with pytest.raises(C.ConfigError, match=message):
        C.resolve(train.TrainConfig, None, flags)


# --------------------------------------------------------------------------------------------- resume


def test_a_fine_tuning_run_resumes_without_its_source(folder, tmp_path, monkeypatch):
    src = source_checkpoint(tmp_path / "src.pt")
    kw = dict(init=str(src), model="googlenet_bn", freeze="inception4b", head_lr_mult=3.0)
    train.run(small_config(folder, tmp_path / "full", **kw))
    full = read_checkpoint(tmp_path / "full" / "checkpoint_last.pt")

    calls = {"n": 0}
    original = Progress.__call__

    def progress_then_sigterm(self, steps, samples, loss_sum):
        calls["n"] += 1
        if calls["n"] == 3 + 1:  # epoch 1 has 3 steps: stop after the first of epoch 2
            signal.raise_signal(signal.SIGTERM)
        return original(self, steps, samples, loss_sum)

    monkeypatch.setattr(Progress, "__call__", progress_then_sigterm)
    with pytest.raises(SystemExit):
        train.run(small_config(folder, tmp_path / "split", **kw))
    monkeypatch.setattr(Progress, "__call__", original)
    with pytest.raises(C.ConfigError, match="drop --init"):
        train.resume_config(str(tmp_path / "split"), {"init": str(src)})
    src.rename(tmp_path / "moved.pt")  # the resumed run needs only its own checkpoint
    train.run(C.resolve(train.TrainConfig, None, train.resume_config(str(tmp_path / "split"), {})))
    resumed = read_checkpoint(tmp_path / "split" / "checkpoint_last.pt")
    assert resumed["preprocess"] == full["preprocess"] and resumed["model_config"] == full["model_config"]
    for key, value in full["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    groups = resumed["train_state"]["optimizer"]["param_groups"]
    assert [g["lr_mult"] for g in groups] == [1.0, 1.0, 3.0, 3.0]


def test_finetune_recipe_runs_with_init(folder, tmp_path):
    src = source_checkpoint(tmp_path / "src.pt")
    flags = dict(data=str(folder), out=str(tmp_path / "run"), init=str(src), model="googlenet_bn", epochs=1)
    flags.update(batch_size=8, img_size=32, workers=0, log_every=1000)
    metrics = train.run(C.resolve(train.TrainConfig, "finetune", flags))
    assert metrics["epoch"] == 1 and math.isfinite(metrics["train_loss"])
    ckpt = read_checkpoint(tmp_path / "run" / "checkpoint_last.pt")
    assert [g["lr_mult"] for g in ckpt["train_state"]["optimizer"]["param_groups"]] == [1.0, 1.0, 10.0, 10.0]


def _source_with_live_activations(kind, tmp_path):
    """An imported checkpoint whose activations neither vanish nor explode (random weights at their default
    scale shrink a 224 px signal to ~1e-11 by pool5, which would hide any input mistake): He-scaled Caffe
    blobs; torchvision's weights with BatchNorm statistics measured on random input."""
    torch.manual_seed(0)
    if kind == "caffe":
        blobs = {
            name: [torch.randn_like(w) * math.sqrt(2 / w[0].numel()), torch.zeros_like(b)]
            for name, (w, b) in random_caffe_blobs(num_classes=10).items()
        }
        write_caffemodel(tmp_path / "bvlc.caffemodel", blobs, modern=True)
        import_caffe(tmp_path / "bvlc.caffemodel", tmp_path / "src.pt")
        return tmp_path / "src.pt"
    tv = torchvision.models.googlenet(
        weights=None, num_classes=10, aux_logits=True, init_weights=True, transform_input=True
    )
    for m in tv.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # a cumulative average over the batches below
    with torch.no_grad():
        tv.train()
        for _ in range(3):
            tv(torch.randn(8, 3, 64, 64))
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    import_torchvision(tmp_path / "tv.pth", tmp_path / "src.pt")
    return tmp_path / "src.pt"


def _by_hand(path, size):
    """The image as a user would prepare it for ImageNet weights, with libraries only: PIL, torchvision's
    resize and crop, and ImageNet's published mean and standard deviation typed in."""
    from PIL import Image
    from torchvision.transforms.v2 import functional as TF

    with Image.open(path) as im:
        x = TF.pil_to_tensor(im.convert("RGB"))
    x = TF.center_crop(TF.resize(x, [round(size * 256 / 224)], antialias=True), [size, size]).float() / 255
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    return ((x - mean.view(3, 1, 1)) / std.view(3, 1, 1)).unsqueeze(0)


@pytest.mark.parametrize(
    "kind, variant, flags",
    [("torchvision", "googlenet_bn", {"transform_input": True}), ("caffe", "googlenet", {"caffe_input": True})],
)
def test_imported_weights_see_the_same_input_at_every_step(folder, tmp_path, capsys, kind, variant, flags):
    """import -> train --init --freeze features -> predict, eval, export, features: each step's output equals
    the reference model (built by hand with the source's input remapping) fed by hand."""
    run, size = tmp_path / "run", 64
    source = _source_with_live_activations(kind, tmp_path)
    assert cli.main(["train", "--init", str(source), "--model", variant, "--freeze", "features",
                     "--data", str(folder), "--out", str(run), "--epochs", "1", "--img-size", str(size),
                     "--batch-size", "8", "--workers", "0", "--lr", "0.01"]) == 0  # fmt: skip
    ckpt = run / "checkpoint_last.pt"
    reference = create_model(variant, num_classes=3, aux_logits=False, **flags).eval()
    weights = read_checkpoint(ckpt)["model"]
    reference.load_state_dict({k: v for k, v in weights.items() if not k.startswith(("aux1.", "aux2."))})
    images = sorted((folder / "val").rglob("*.JPEG"))
    with torch.no_grad():
        x = torch.cat([_by_hand(p, size) for p in images])
        logits = reference(x)
        pooled = torch.flatten(reference.avgpool(reference.forward_features(x[:1], False)[0]), 1)
    capsys.readouterr()

    _predict_gives(ckpt, images[0], logits[0].softmax(0), capsys)
    labels = torch.tensor([int(p.parent.name[-1]) for p in images])
    _eval_gives(ckpt, folder, 100 * float((logits.argmax(1) == labels).float().mean()), tmp_path / "e.json")
    _onnx_export_gives(ckpt, x, logits, tmp_path / "m.onnx")
    assert pooled.abs().max() > 0.1  # activations that carry the input, so a wrong remapping shows
    _features_give(ckpt, images[0], pooled, tmp_path / "f.npz")


def _predict_gives(ckpt, image, probabilities, capsys):
    assert cli.main(["predict", "--checkpoint", str(ckpt), str(image), "--json", "--top-k", "3"]) == 0
    for item in json.loads(capsys.readouterr().out)["top_k"]:
        expected = probabilities[["class_0", "class_1", "class_2"].index(item["class"])]
        assert item["probability"] == pytest.approx(float(expected), abs=2e-3)


def _eval_gives(ckpt, folder, top1, report):
    flags = ["--checkpoint", str(ckpt), "--data", str(folder), "--workers", "0", "--json", str(report)]
    assert cli.main(["eval", *flags]) == 0
    assert json.loads(report.read_text())["top1"] == pytest.approx(top1)


def _onnx_export_gives(ckpt, x, logits, onnx_file):
    import onnxruntime as ort

    assert cli.main(["export", "--checkpoint", str(ckpt), "--onnx", str(onnx_file)]) == 0
    (onnx_logits,) = ort.InferenceSession(str(onnx_file)).run(None, {"input": x.numpy()})
    np.testing.assert_allclose(onnx_logits, logits.numpy(), rtol=1e-3, atol=1e-3)


def _features_give(ckpt, image, pooled, npz):
    assert cli.main(["features", "--checkpoint", str(ckpt), str(image), "--out", str(npz)]) == 0
    np.testing.assert_allclose(np.load(npz)["features"], pooled.numpy(), rtol=1e-3, atol=1e-3)
