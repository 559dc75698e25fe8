"""Training: it learns, resumes exactly, survives bad data, and reads configs strictly."""

import json
import math
import os
import re
import signal

import pytest
import torch

from googlenet import config as C
from googlenet import create_model, devices, load_checkpoint, loop, schedule, train
from googlenet.checkpoint import CheckpointError, link_checkpoint, read_checkpoint, save_checkpoint
from googlenet.data import DataError
from googlenet.ema import EMA
from googlenet.loop import TrainingDiverged
from googlenet.progress import Progress

from .conftest import small_config


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_small_model_overfits_a_small_set():
    torch.manual_seed(0)
    model = create_model("googlenet", num_classes=4, dropout=0.0, aux_dropout=0.0)
    x, y = torch.randn(16, 3, 32, 32), torch.arange(16) % 4
    opt = torch.optim.SGD(model.parameters(), lr=0.002, momentum=0.9)
    for _ in range(50):
        loss = loop.googlenet_loss(model.train()(x, with_aux=True), y, aux_weight=0.3, smoothing=0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        logits = model.eval()(x)
    assert (logits.argmax(1) == y).all()
    assert torch.nn.functional.cross_entropy(logits, y).item() < 0.05


def test_ema_averages_weights_and_batchnorm_statistics_alike():
    torch.manual_seed(0)
    live = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).train()
    ema = EMA(live, decay=0.9)
    before = {k: v.clone() for k, v in ema.model.state_dict().items()}
    with torch.no_grad():
        live[0].weight.add_(1.0)
    live(torch.randn(8, 3, 6, 6) * 3 + 2)  # moves running_mean / running_var, counts one batch
    ema.update(live)
    d = min(0.9, 2 / 11)  # the warm-up decay after one update
    now, src = ema.model.state_dict(), live.state_dict()
    for key in ("0.weight", "1.running_mean", "1.running_var"):
        assert not torch.equal(src[key], before[key])
        torch.testing.assert_close(now[key], d * before[key] + (1 - d) * src[key])
    assert int(now["1.num_batches_tracked"]) == 1


def test_run_folder_contents_and_checkpoint_round_trip(image_folder, tmp_path):
    out = tmp_path / "run"
    metrics = train.run(small_config(image_folder, out, model="googlenet_bn", ema=True))
    for name in ("config.json", "metrics.jsonl", "checkpoint_last.pt", "checkpoint_best.pt", "curves.png"):
        assert (out / name).is_file(), name
    rows = read_metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("epoch", "lr", "train_loss", "val_loss", "val_top1", "val_top5", "images_per_s", "seconds", "wall_s"):
        assert key in rows[-1]
    assert json.loads((out / "config.json").read_text())["model"] == "googlenet_bn"
    ckpt = read_checkpoint(out / "checkpoint_last.pt")
    assert ckpt["class_names"] == ["class_0", "class_1", "class_2"]
    # load_checkpoint returns the evaluated (EMA) model, in eval mode, giving the logged accuracy.
    model = load_checkpoint(out / "checkpoint_last.pt")
    assert not model.training and model.config.num_classes == 3
    assert metrics["val_top1"] == rows[-1]["val_top1"]


@pytest.mark.parametrize("native", [True, False])
def test_bf16_by_default_only_where_native_and_forced_with_a_warning(
    image_folder, tmp_path, monkeypatch, caplog, native
):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert devices.cpu_has_native_bf16() is native
    on_cpu = dict(epochs=1, model="googlenet", device="cpu")  # the probes above are the CPU's
    with caplog.at_level("INFO", logger="googlenet"):
        train.run(small_config(image_folder, tmp_path / "default", bf16=None, **on_cpu))
    # The choice is recorded, so that a resumed run trains in the same precision on any machine.
    assert json.loads((tmp_path / "default" / "config.json").read_text())["bf16"] is native
    assert ("training in float32" in caplog.text) is not native
    caplog.clear()
    with caplog.at_level("WARNING", logger="googlenet"):
        metrics = train.run(small_config(image_folder, tmp_path / "forced", bf16=True, **on_cpu))
    assert math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["val_loss"])
    assert json.loads((tmp_path / "forced" / "config.json").read_text())["bf16"] is True
    assert ("emulated" in caplog.text) is not native


def test_cpu_bf16_probe_survives_a_torch_without_it(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert devices.cpu_has_native_bf16() is False


def test_resume_reproduces_uninterrupted_run(image_folder, tmp_path, monkeypatch):
    kw = dict(epochs=3, ema=True, model="googlenet")
    train.run(small_config(image_folder, tmp_path / "full", **kw))
    full = read_metrics(tmp_path / "full")

    # Interrupt in the middle of epoch 2 by SIGTERM, as a preempted job would be.
    calls = {"n": 0}
    original = Progress.__call__

    def progress_then_sigterm(self, steps, samples, loss_sum):
        calls["n"] += 1
        if calls["n"] == 4 + 1:  # epoch 1 has 3 steps (24 images / 8); stop after epoch 2's 2nd step
            signal.raise_signal(signal.SIGTERM)
        return original(self, steps, samples, loss_sum)

    monkeypatch.setattr(Progress, "__call__", progress_then_sigterm)
    with pytest.raises(SystemExit) as stopped:
        train.run(small_config(image_folder, tmp_path / "split", **kw))
    assert stopped.value.code == 128 + signal.SIGTERM
    state = read_checkpoint(tmp_path / "split" / "checkpoint_last.pt")["train_state"]
    assert (state["epoch"], state["step"]) == (1, 2)
    monkeypatch.setattr(Progress, "__call__", original)

    cfg = C.resolve(train.TrainConfig, None, train.resume_config(str(tmp_path / "split"), {}))
    train.run(cfg)
    resumed = read_metrics(tmp_path / "split")
    assert [r["epoch"] for r in resumed] == [1, 2, 3]
    for a, b in zip(full, resumed):
        for key in ("train_loss", "val_loss", "val_top1", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["epoch"], key)


def test_nan_loss_stops_with_a_clear_message(image_folder, tmp_path):
    out = tmp_path / "run"
    train.run(small_config(image_folder, out, epochs=1))
    before = (out / "checkpoint_last.pt").read_bytes()
    with pytest.raises(TrainingDiverged, match="lower --lr"):
        train.run(small_config(image_folder, out, epochs=1, lr=1e12, model="googlenet", overwrite=True))
    # --overwrite cleared the old run first: nothing of it is left to disagree with the new config.
    assert before and not (out / "checkpoint_last.pt").exists()
    assert json.loads((out / "config.json").read_text())["lr"] == 1e12


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(2)}})

    def broken_save(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(path, {"model": {"w": torch.zeros(2)}})
    assert torch.equal(read_checkpoint(path)["model"]["w"], torch.ones(2))
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    monkeypatch.undo()
    old_umask = os.umask(0o027)
    try:
        save_checkpoint(path, {"model": {"w": torch.ones(2)}})
    finally:
        os.umask(old_umask)
    assert path.stat().st_mode & 0o777 == 0o640  # the umask's permissions, not mkstemp's 0600


@pytest.mark.parametrize("hard_links", [True, False])
def test_best_checkpoint_keeps_its_epoch_when_last_moves_on(tmp_path, monkeypatch, hard_links):
    if not hard_links:  # a filesystem without them: the copy fallback

        def no_link(*args):
            raise OSError("hard links not supported")

        monkeypatch.setattr(os, "link", no_link)
    last, best = tmp_path / "checkpoint_last.pt", tmp_path / "checkpoint_best.pt"
    save_checkpoint(last, {"model": {"w": torch.ones(2)}})
    link_checkpoint(last, best)
    assert os.path.samefile(last, best) == hard_links
    save_checkpoint(last, {"model": {"w": torch.zeros(2)}})  # a later, worse epoch
    assert torch.equal(read_checkpoint(best)["model"]["w"], torch.ones(2))
    assert torch.equal(read_checkpoint(last)["model"]["w"], torch.zeros(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == [best.name, last.name]  # no temporary file left


def test_corrupt_and_missing_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x02garbage")
    with pytest.raises(CheckpointError, match="not a readable PyTorch file"):
        read_checkpoint(bad)


def test_missing_or_empty_data_folder_fails_before_training(tmp_path):
    with pytest.raises(DataError, match="not 'fashion-mnist' and not a folder"):
        train.run(small_config(tmp_path / "missing", tmp_path / "out"))
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "val" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no image files"):
        train.run(small_config(tmp_path / "empty", tmp_path / "out"))
    assert not (tmp_path / "out" / "checkpoint_last.pt").exists()


# ------------------------------------------------------------------------------------------- configs


def test_config_precedence_defaults_recipe_flags(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('epochs = 7\nlr = 1\nmodel = "googlenet_bn"\n')
    cfg = C.resolve(train.TrainConfig, str(recipe), {"lr": 0.5})
    assert (cfg.epochs, cfg.lr, cfg.model, cfg.momentum) == (7, 0.5, "googlenet_bn", 0.9)
    assert isinstance(cfg.lr, float)


def test_unknown_or_mistyped_config_keys_are_errors(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text("epocs = 7\n")
    with pytest.raises(C.ConfigError, match="unknown config key 'epocs'"):
        C.resolve(train.TrainConfig, str(recipe))
    recipe.write_text('epochs = "seven"\n')
    with pytest.raises(C.ConfigError, match="epochs must be of type int"):
        C.resolve(train.TrainConfig, str(recipe))
    with pytest.raises(C.ConfigError, match="no recipe file or shipped recipe"):
        C.resolve(train.TrainConfig, "no-such-recipe")
    recipe.write_text('schedule = "cosin"\n')
    with pytest.raises(C.ConfigError, match="schedule must be one of step, cosine, linear"):
        C.resolve(train.TrainConfig, str(recipe))
    with pytest.raises(C.ConfigError, match="outside googlenet's range 31-4096"):
        C.resolve(train.TrainConfig, None, {"img_size": 28})


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"workers": -1}, "workers must be >= 0"),
        ({"warmup_epochs": -1.0}, "warmup_epochs must be >= 0"),
        ({"label_smoothing": 1.0}, "label_smoothing must be in [0, 1)"),
        ({"grad_clip": 0.0}, "grad_clip must be > 0"),
        ({"dropout": 1.0}, "dropout probabilities must be in [0, 1)"),
        ({"step_gamma": 0.0}, "step_gamma in (0, 1]"),
        ({"train_subset": 0}, "subsets must be >= 1 image"),
        ({"time_budget": 0.0}, "time_budget must be > 0 minutes"),
        ({"time_budget": 5.0, "schedule": "step"}, "use --schedule cosine or linear"),
    ],
)
def test_out_of_range_settings_are_errors_before_any_work(flags, message):
    # --workers -1 used to start training regardless (Fashion-MNIST ignores workers); ranges are checked first.
    with pytest.raises(C.ConfigError, match=re.escape(message)):
        C.resolve(train.TrainConfig, None, flags)


@pytest.mark.parametrize("name", C.list_recipes())
def test_shipped_recipes_resolve(name):
    # Each recipe's file is what resolves: every key it sets reaches the config, and nothing else moves.
    cfg = C.to_dict(C.resolve(train.TrainConfig, name))
    defaults = C.to_dict(train.TrainConfig())
    written = C.load_toml(C.recipe_path(name))
    assert written, name
    for key, value in written.items():
        assert cfg[key] == pytest.approx(value) if isinstance(value, float) else cfg[key] == value, (name, key)
    assert {k for k in cfg if cfg[k] != defaults[k]} <= set(written), name


def test_cpu_fashion_mnist_recipe_changes_only_what_its_comment_lists():
    gpu = C.to_dict(C.resolve(train.TrainConfig, "fashion-mnist"))
    cpu = C.to_dict(C.resolve(train.TrainConfig, "fashion-mnist-cpu"))
    changed = {key for key in gpu if gpu[key] != cpu[key]}
    assert changed == {"device", "epochs", "batch_size", "lr", "warmup_epochs", "compile"}
    # the same learning rate per image
    assert cpu["lr"] / cpu["batch_size"] == gpu["lr"] / gpu["batch_size"]


def test_paper_recipe_matches_the_paper():
    cfg = C.resolve(train.TrainConfig, "paper")
    assert (cfg.model, cfg.momentum, cfg.schedule, cfg.aux_weight, cfg.aux_logits, cfg.ema) == (
        "googlenet",
        0.9,
        "step",
        0.3,
        True,
        True,
    )
    # "decreasing the learning rate by 4% every 8 epochs"
    steps = 100
    after_warmup = [schedule.lr_factor(int(e * steps), steps, cfg) for e in (2, 7.99, 8, 15.99, 16, 24)]
    assert after_warmup == pytest.approx([1, 1, 0.96, 0.96, 0.96**2, 0.96**3])
    # crops of 8%-100% of the area, aspect ratio in [3/4, 4/3]
    aug = cfg.augmentation()
    assert aug.crop_scale == (0.08, 1.0)
    assert aug.crop_ratio == pytest.approx((3 / 4, 4 / 3))
    assert aug.photometric > 0 and aug.random_interpolation


def test_cosine_schedule_with_warmup():
    cfg = C.resolve(train.TrainConfig, None, {"epochs": 10, "warmup_epochs": 2.0, "schedule": "cosine"})
    assert schedule.lr_factor(0, 10, cfg) == pytest.approx(0.05)
    assert schedule.lr_factor(19, 10, cfg) == pytest.approx(1.0)
    assert schedule.lr_factor(60, 10, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert schedule.lr_factor(100, 10, cfg) == pytest.approx(0.0, abs=1e-12)


def test_progressive_resizing_ramps_to_the_final_size():
    cfg = C.resolve(train.TrainConfig, None, {"epochs": 8, "img_size_start": 160, "img_size": 192})
    sizes = [schedule.img_size_at(e, cfg) for e in range(8)]
    assert sizes[0] == 160 and sizes[-1] == 192 and sizes == sorted(sizes)
    assert all(s % 8 == 0 for s in sizes)


@pytest.mark.parametrize("recipe", ["paper", "fast"])
def test_imagenet_recipes_run_end_to_end_on_a_small_folder(image_folder, tmp_path, recipe):
    # Photometric distortions, random interpolation, progressive resizing and EMA all take part.
    overrides = dict(
        data=str(image_folder),
        out=str(tmp_path / recipe),
        epochs=2,
        batch_size=8,
        img_size=32,
        workers=0,
        log_every=1000,
        compile=False,
        bf16=False,
        channels_last=False,
    )
    if recipe == "fast":
        overrides.update(img_size_start=32, img_size=40, eval_img_size=48)
    metrics = train.run(C.resolve(train.TrainConfig, recipe, overrides))
    assert metrics["epoch"] == 2 and math.isfinite(metrics["train_loss"])
    assert metrics["img_size"] == (40 if recipe == "fast" else 32)


def test_compile_mode_reaches_torch_compile(image_folder, tmp_path, monkeypatch):
    # Compiling itself takes minutes on this CPU; what is tested is that the recipe's mode gets there.
    seen = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: seen.append(kw) or model)
    flags = dict(data=str(image_folder), out=str(tmp_path / "r"), epochs=1, batch_size=8, img_size=32, workers=0)
    cfg = C.resolve(train.TrainConfig, None, {**flags, "compile": True, "compile_mode": "reduce-overhead"})
    train.run(cfg)
    assert seen == [{"mode": "reduce-overhead"}]
    with pytest.raises(C.ConfigError, match="compile_mode must be one of default, reduce-overhead"):
        C.resolve(train.TrainConfig, None, {"compile_mode": "fast"})


def test_topk_correct_counts_hits_and_caps_k_at_the_class_count():
    logits = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.1, 0.4], [0.1, 0.5, 0.4]])
    labels = torch.tensor([1, 2, 0])  # ranks 1, 2 and 3
    assert loop.topk_correct(logits, labels, (1, 2, 5)).tolist() == [1, 2, 3]
