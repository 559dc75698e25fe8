"""Hostile files and careless commands: nothing crashes, nothing is lost, every refusal is one line."""

import gzip
import io
import json
import os
import re
import shutil
import signal
import stat
import struct
import subprocess
import sys
import zlib

import pytest
import torch
from PIL import Image

from googlenet import cli, train
from googlenet.batches import decode_batch
from googlenet.checkpoint import CheckpointError, load_data, read_checkpoint
from googlenet.config import ConfigError
from googlenet.data import IMAGE_EXTENSIONS, DataError, _read_idx, scan_split
from googlenet.files import remove_stale_temporaries, replacing
from googlenet.image_decode import ImageRefused, decode_rgb, decode_rgb_bytes
from googlenet.model import create_model
from googlenet.pack import _TRAILER, MAGIC, open_pack, pack_path, prepare
from googlenet.progress import Progress
from googlenet.run_folder import RunFolder

from .conftest import class_image, make_image_folder, small_config, write_image
from .test_tools import make_checkpoint

# ------------------------------------------------------------------------------------------ crafted files


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def short_png(width: int = 64, height: int = 64) -> bytes:
    """A well-formed PNG (valid chunks and CRCs) whose image data holds half the rows its header declares:
    the file that takes torchvision's PNG decoder down with a segmentation fault."""
    rows = b"".join(b"\x00" + bytes((x * 7 + y) % 256 for x in range(width * 3)) for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = zlib.compress(rows[: len(rows) // 2])
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def bomb_jpeg(side: int = 30000) -> bytes:
    """A JPEG of a few hundred bytes whose header declares side x side pixels (its frame header patched)."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", side, side)
    return bytes(data)


def plant_hostile_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "short.png").write_bytes(short_png())
    (folder / "bomb.jpg").write_bytes(bomb_jpeg())
    return ["short.png", "bomb.jpg"]


def test_the_crafted_png_really_is_short_and_the_bomb_really_declares_its_size():
    # The crafted files must be what they claim, or the tests below prove nothing.
    data = bomb_jpeg()
    sof = data.index(b"\xff\xc0")
    assert struct.unpack(">HH", data[sof + 5 : sof + 9]) == (30000, 30000) and len(data) < 1000
    with Image.open(io.BytesIO(short_png())) as im:
        assert im.size == (64, 64)
    png = short_png()
    (idat_length,) = struct.unpack(">I", png[33:37])
    assert png[37:41] == b"IDAT" and len(zlib.decompress(png[41 : 41 + idat_length])) < 64 * (1 + 64 * 3)


def test_a_short_png_decodes_without_crashing_and_a_bomb_is_refused_by_its_header():
    img = decode_rgb_bytes(short_png(), "short.png")
    assert img.shape == (3, 64, 64) and img.dtype == torch.uint8
    with pytest.raises(ImageRefused, match=r"bomb\.jpg: declares 30000 x 30000"):
        decode_rgb_bytes(bomb_jpeg(), "bomb.jpg")


def test_the_pixel_limit_is_configurable(monkeypatch, tmp_path):
    path = write_image(tmp_path / "a.png", class_image(0, 0))  # 40 x 48
    monkeypatch.setenv("GOOGLENET_MAX_PIXELS", str(40 * 48 - 1))
    with pytest.raises(ImageRefused, match="over the limit of 1,919"):
        decode_rgb(path)
    monkeypatch.setenv("GOOGLENET_MAX_PIXELS", str(40 * 48))
    assert decode_rgb(path).shape == (3, 40, 48)


def test_mutated_images_never_crash_the_decoder():
    # Truncations and byte flips of every format; each must decode or be refused, never kill the process.
    g = torch.Generator().manual_seed(0)
    sources = []
    for fmt in ("JPEG", "PNG", "GIF", "WEBP", "BMP"):
        buf = io.BytesIO()
        Image.fromarray(class_image(1, 2).permute(1, 2, 0).numpy()).save(buf, format=fmt)
        sources.append(buf.getvalue())
    sources.append(short_png())
    outcomes = {"decoded": 0, "refused": 0}
    for data in sources:
        for trial in range(40):
            mutated = bytearray(data)
            if trial % 2:
                mutated = mutated[: int(torch.randint(1, len(data), (1,), generator=g))]
            else:
                for pos in torch.randint(0, len(data), (4,), generator=g).tolist():
                    mutated[pos] = int(torch.randint(0, 256, (1,), generator=g))
            try:
                decode_rgb_bytes(bytes(mutated), "mutated")
                outcomes["decoded"] += 1
            except ImageRefused:
                outcomes["refused"] += 1
    assert sum(outcomes.values()) == 240 and outcomes["refused"] > 0


def test_predict_names_hostile_files_and_predicts_the_rest(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "m.pt", ["a", "b"])
    plant_hostile_files(tmp_path / "imgs")
    write_image(tmp_path / "imgs" / "good.png", class_image(0, 0))
    assert cli.main(["predict", "--checkpoint", str(ckpt), str(tmp_path / "imgs")]) == 1
    out, err = capsys.readouterr()
    assert "good.png:" in out and "short.png:" in out  # the short PNG decodes what it holds
    assert "cannot read" in err and "bomb.jpg: declares 30000 x 30000" in err


def test_eval_skips_hostile_files(tmp_path, capsys):
    make_image_folder(tmp_path / "data", classes=2, train_per_class=1, val_per_class=2)
    plant_hostile_files(tmp_path / "data" / "val" / "class_0")
    ckpt = make_checkpoint(tmp_path / "m.pt", ["class_0", "class_1"])
    assert cli.main(["eval", "--checkpoint", str(ckpt), "--data", str(tmp_path / "data"), "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "images 5" in out and "skipped 1" in out


@pytest.mark.parametrize("decode_on_device", [False, True])
def test_training_workers_skip_hostile_files(tmp_path, decode_on_device):
    data = make_image_folder(tmp_path / "data", classes=2)
    plant_hostile_files(data / "train" / "class_1")
    cfg = small_config(data, tmp_path / "run", epochs=1, workers=2, decode_on_device=decode_on_device)
    train.run(cfg)
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["bad_files"] == 1  # the bomb; the short PNG decodes


def test_device_decoding_checks_every_header_first():
    good = io.BytesIO()
    Image.new("RGB", (16, 16)).save(good, format="JPEG")
    encoded = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in (good.getvalue(), bomb_jpeg(), short_png())]
    out = decode_batch(encoded, ["good.jpg", "bomb.jpg", "short.png"], torch.device("cpu"))
    assert out[0].shape == (3, 16, 16) and out[2].shape == (3, 64, 64)
    assert isinstance(out[1], str) and "bomb.jpg: declares" in out[1]


def test_prepare_skips_hostile_files(tmp_path):
    data = make_image_folder(tmp_path / "data", classes=2, train_per_class=2, val_per_class=1)
    plant_hostile_files(data / "train" / "class_0")
    reports = prepare(data, tmp_path / "packed", workers=0)
    assert reports["train"].images == 5 and len(reports["train"].skipped) == 1


class _RunsCode:
    """Pickled as "call os.system(...)": what a hostile checkpoint does to whoever unpickles it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path, capsys):
    marker = tmp_path / "ran"
    torch.save({"format": "googlenet-checkpoint/1", "model": _RunsCode(marker)}, tmp_path / "evil.pt")
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "evil.pt")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refused: it names Python code (posix.system)" in err[0], err
    assert "weights_only" not in err[0]  # torch's advice to load it as code does not reach the user
    assert not marker.exists()


def test_weights_of_another_model_name_what_does_not_fit(tmp_path, capsys):
    paper = create_model("googlenet", num_classes=3, aux_logits=False)
    torch.save(paper.state_dict(), tmp_path / "paper.pth")
    assert cli.main(["import", "torchvision", str(tmp_path / "paper.pth"), "--out", str(tmp_path / "o.pt")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    bn_keys = set(create_model("googlenet_bn", num_classes=3, aux_logits=False).state_dict())
    missing, unexpected = len(bn_keys - set(paper.state_dict())), len(set(paper.state_dict()) - bn_keys)
    assert len(err) == 1 and missing > 0 and unexpected > 0
    assert f"{missing} missing: conv1.bn.weight, " in err[0] and f"; {unexpected} unexpected: " in err[0], err
    assert not (tmp_path / "o.pt").exists()


def test_predict_names_a_folder_without_images(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "m.pt", ["a", "b"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images here")
    write_image(tmp_path / "imgs" / "good.png", class_image(0, 0))
    paths = [str(tmp_path / name) for name in ("empty", "imgs", "notes")]
    assert cli.main(["predict", "--checkpoint", str(ckpt), *paths]) == 1
    out, err = capsys.readouterr()
    assert "good.png:" in out
    why = f"a folder with no image files ({', '.join(IMAGE_EXTENSIONS)})"
    expected = [f"googlenet: cannot read {tmp_path / name}: {why}" for name in ("empty", "notes")]
    assert err.strip().splitlines() == expected


def test_a_text_file_named_as_an_image_is_named_in_its_error():
    with pytest.raises(ImageRefused, match=r"^notes\.jpg: not a decodable image \(no image format recognised\)$"):
        decode_rgb_bytes(b"just some words", "notes.jpg")


# ------------------------------------------------------------------------------------------------ outputs


def test_an_output_onto_a_device_is_written_in_place_never_replaced(tmp_path, capsys):
    make_image_folder(tmp_path / "data", classes=2, train_per_class=1, val_per_class=1)
    ckpt = make_checkpoint(tmp_path / "m.pt", ["class_0", "class_1"])
    args = ["eval", "--checkpoint", str(ckpt), "--data", str(tmp_path / "data"), "--workers", "0"]
    assert cli.main([*args, "--json", "/dev/null"]) == 0
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


@pytest.mark.parametrize("json_name", ["val/class_0/val_0_0.JPEG", "val/class_0/results.json", "new.png"])
def test_eval_writes_nothing_into_the_data_it_reads(tmp_path, capsys, json_name):
    data = make_image_folder(tmp_path / "data", classes=2, train_per_class=1, val_per_class=1)
    before = {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}
    ckpt = make_checkpoint(tmp_path / "m.pt", ["class_0", "class_1"])
    args = ["eval", "--checkpoint", str(ckpt), "--data", str(data), "--json", str(data / json_name)]
    assert cli.main([*args, "--workers", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"is inside {data}, which this command reads" in err[0], err
    assert {p: p.read_bytes() for p in data.rglob("*") if p.is_file()} == before


def test_a_checkpoint_can_be_written_onto_a_device(tmp_path):
    ckpt = make_checkpoint(tmp_path / "m.pt", ["a", "b"])
    torch.save(read_checkpoint(ckpt)["model"], tmp_path / "tv.pth")
    assert cli.main(["import", "torchvision", str(tmp_path / "tv.pth"), "--out", "/dev/null"]) == 0
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_replacing_writes_a_fifo_in_place(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    with replacing(fifo) as target:
        target.write_text("through the pipe\n")
    assert reader.communicate(timeout=30)[0] == b"through the pipe\n"
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


@pytest.mark.parametrize(
    "command",
    [
        ["export", "--checkpoint", "{ckpt}", "--onnx", "{ckpt}"],
        ["eval", "--checkpoint", "{ckpt}", "--json", "{ckpt}"],
        ["import", "torchvision", "{ckpt}", "--out", "{ckpt}"],
    ],
)
def test_an_output_that_is_an_input_is_refused(tmp_path, capsys, command):
    ckpt = make_checkpoint(tmp_path / "m.pt", ["a", "b"])
    before = ckpt.read_bytes()
    assert cli.main([a.format(ckpt=ckpt) for a in command]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is also an input of this command" in err[0]
    assert ckpt.read_bytes() == before


@pytest.mark.parametrize(
    "command",
    [
        ["export", "--checkpoint", "{ckpt}", "--onnx", "{dir}"],
        ["eval", "--checkpoint", "{ckpt}", "--json", "{dir}"],
        ["import", "torchvision", "{ckpt}", "--out", "{dir}"],
    ],
)
def test_an_output_that_is_a_folder_is_one_line_before_any_work(tmp_path, capsys, command):
    ckpt = make_checkpoint(tmp_path / "m.pt", ["a", "b"])
    (tmp_path / "dir").mkdir()
    assert cli.main([a.format(ckpt=ckpt, dir=tmp_path / "dir") for a in command]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a folder" in err[0]


def test_temporary_files_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".checkpoint_last.{int(dead.stdout)}.tmp.pt"
    mine = tmp_path / f".checkpoint_last.{os.getpid()}.tmp.pt"
    stale.write_bytes(b"x" * 100)
    mine.write_bytes(b"y")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert not stale.exists() and mine.exists()


# --------------------------------------------------------------------------------------------- run folders


def test_train_refuses_a_folder_that_holds_a_run_unless_told(image_folder, tmp_path):
    out = tmp_path / "run"
    train.run(small_config(image_folder, out, epochs=1))
    before = (out / "checkpoint_last.pt").read_bytes()
    with pytest.raises(ConfigError, match="holds a run already"):
        train.run(small_config(image_folder, out, epochs=1, seed=9))
    assert (out / "checkpoint_last.pt").read_bytes() == before
    train.run(small_config(image_folder, out, epochs=1, seed=9, overwrite=True))
    assert read_checkpoint(out / "checkpoint_last.pt")["config"]["seed"] == 9
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_a_second_trainer_in_the_same_folder_fails_at_once_naming_the_holder(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from googlenet.run_folder import RunFolder\n"
            f"with RunFolder({str(tmp_path / 'run')!r}).claim(False, False):\n"
            "    print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        busy = f"in use by another training \\(process {holder.pid}\\)"
        with pytest.raises(ConfigError, match=busy), RunFolder(tmp_path / "run").claim(False, False):
            pass
    finally:
        holder.kill()
        holder.wait()
    with RunFolder(tmp_path / "run").claim(False, False):  # the dead holder's lock is taken over
        assert (tmp_path / "run" / ".lock").read_text().strip() == str(os.getpid())


def _interrupted_run(image_folder, out, monkeypatch, **kw):
    """A run stopped by SIGTERM after its first epoch's second step."""
    original, calls = Progress.__call__, {"n": 0}

    def sigterm_on_second_step(self, steps, samples, loss_sum):
        calls["n"] += 1
        if calls["n"] == 2:
            signal.raise_signal(signal.SIGTERM)
        return original(self, steps, samples, loss_sum)

    monkeypatch.setattr(Progress, "__call__", sigterm_on_second_step)
    with pytest.raises(SystemExit):
        train.run(small_config(image_folder, out, **kw))
    monkeypatch.setattr(Progress, "__call__", original)


def test_resume_writes_to_the_folder_it_resumes_not_the_original(image_folder, tmp_path, monkeypatch):
    _interrupted_run(image_folder, tmp_path / "original", monkeypatch, epochs=2)
    shutil.copytree(tmp_path / "original", tmp_path / "moved")
    before = {p.name: p.read_bytes() for p in (tmp_path / "original").iterdir() if p.is_file()}
    assert cli.main(["train", "--resume", str(tmp_path / "moved")]) == 0
    assert len((tmp_path / "moved" / "metrics.jsonl").read_text().splitlines()) == 2
    after = {p.name: p.read_bytes() for p in (tmp_path / "original").iterdir() if p.is_file()}
    assert after == before


@pytest.mark.parametrize("flag", [["--batch-size", "4"], ["--model", "googlenet_bn"], ["--epochs", "5"]])
def test_resume_refuses_flags_that_would_change_the_run(image_folder, tmp_path, monkeypatch, capsys, flag):
    _interrupted_run(image_folder, tmp_path / "run", monkeypatch, epochs=2)
    before = (tmp_path / "run" / "checkpoint_last.pt").read_bytes()
    assert cli.main(["train", "--resume", str(tmp_path / "run"), *flag]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot change on --resume: {flag[0]} {flag[1]}" in err[0]
    assert (tmp_path / "run" / "checkpoint_last.pt").read_bytes() == before


# ------------------------------------------------------------------------------------------------ data sets


def test_a_class_with_no_readable_image_is_an_error_naming_it(tmp_path):
    data = make_image_folder(tmp_path / "data", classes=2)
    for f in (data / "train" / "class_1").iterdir():
        f.write_bytes(b"not an image")
    with pytest.raises(DataError, match="no readable image of class 'class_1'"):
        train.run(small_config(data, tmp_path / "run", epochs=1))


@pytest.mark.parametrize(
    "change, message",
    [
        ("one class", "1 class ['class_0']; a classifier needs at least two"),
        ("empty class", "no image files of class 'class_1'"),
    ],
)
def test_classes_that_cannot_train_are_an_error_before_any_work(tmp_path, change, message):
    data = make_image_folder(tmp_path / "data", classes=2 if change == "empty class" else 1)
    if change == "empty class":
        for f in (data / "train" / "class_1").iterdir():
            f.unlink()
    with pytest.raises(DataError, match=re.escape(message)):
        train.run(small_config(data, tmp_path / "run", epochs=1))
    assert not (tmp_path / "run").exists()  # the folder it made, left with nothing in it, is gone


def test_an_epoch_with_no_readable_image_is_an_error(tmp_path):
    data = make_image_folder(tmp_path / "data", classes=2)
    for f in (data / "train").rglob("*.JPEG"):
        f.write_bytes(b"")
    with pytest.raises(DataError, match="none of its images could be read"):
        train.run(small_config(data, tmp_path / "run", epochs=1))


def _write_pack(path, meta):
    buf = io.BytesIO()
    torch.save(meta, buf)
    body = MAGIC + b"\xff" * 100
    path.write_bytes(body + buf.getvalue() + _TRAILER.pack(len(body), MAGIC))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"offsets": torch.tensor([8, 10_000])}, "points outside the file"),
        ({"labels": torch.tensor([0, 7])}, "labels outside the 2 classes"),
        ({"names": ["x"]}, "lists 1 names, 2 labels"),
        ({"offsets": None}, "lacks offsets"),
    ],
)
def test_a_pack_whose_index_does_not_fit_is_an_error(tmp_path, change, message):
    meta = {
        "classes": ["a", "b"],
        "names": ["x", "y"],
        "labels": torch.tensor([0, 1]),
        "offsets": torch.tensor([8, 40]),
        "lengths": torch.tensor([20, 20]),
    }
    meta.update(change)
    meta = {k: v for k, v in meta.items() if v is not None}
    _write_pack(tmp_path / "train.gpk", meta)
    with pytest.raises(DataError, match=message):
        open_pack(tmp_path / "train.gpk")


def test_prepare_writes_every_split_or_none(tmp_path):
    data = make_image_folder(tmp_path / "data", classes=2, train_per_class=2, val_per_class=1)
    out = tmp_path / "packed"
    prepare(data, out, workers=0)
    old = {split: pack_path(out, split).read_bytes() for split in ("train", "val")}
    write_image(data / "train" / "class_0" / "new.JPEG", class_image(0, 50))
    write_image(data / "val" / "stranger" / "x.JPEG", class_image(0, 0))  # val fails after train is packed
    with pytest.raises(DataError, match="stranger"):
        prepare(data, out, workers=0)
    assert {split: pack_path(out, split).read_bytes() for split in ("train", "val")} == old
    assert sorted(p.name for p in out.iterdir()) == ["train.gpk", "val.gpk"]


def test_flat_labels_are_class_names_even_when_the_names_are_numbers(tmp_path):
    flat = tmp_path / "val"
    for i in range(3):
        write_image(flat / f"img_{i}.JPEG", class_image(i, i))
    classes = ["1", "10", "2"]  # sorted folder names of classes named by numbers
    (flat / "labels.txt").write_text("2\n1\n10\n")
    assert scan_split(flat, classes).labels == [2, 0, 1]
    (flat / "labels.txt").write_text("2\n0\n10\n")  # "0" names no class; an index? ambiguous
    with pytest.raises(DataError, match="labels.txt:2: '0' is not a class name"):
        scan_split(flat, classes)


def test_a_truncated_fashion_mnist_gz_is_a_data_error(tmp_path):
    whole = gzip.compress(struct.pack(">BBBBI", 0, 0, 8, 1, 100) + bytes(100))
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match="unreadable"):
        _read_idx(path)


# ------------------------------------------------------------------------------ one line, on every command


def _bad_arguments(tmp_path):
    ckpt = make_checkpoint(tmp_path / "m.pt", ["a", "b"])
    (tmp_path / "dir").mkdir()
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "junk.caffemodel").write_bytes(b"\x0a\x05Google\x12\xff\xff\xff\xff\x0f\x00")
    (tmp_path / "bad.toml").write_text("img_size = 100000\n")
    (tmp_path / "m.onnx").write_bytes(b"onnx")
    return [
        (["summary", "--img-size", "100000"], "outside googlenet's range"),
        (["summary", "--config", str(tmp_path / "bad.toml")], "outside googlenet's range"),
        (["eval", "--checkpoint", str(ckpt), "--img-size", "5000"], "outside googlenet_bn's range"),
        (["eval", "--checkpoint", str(ckpt), "--img-size", "3000", "--device", "cpu", "--batch-size", "4096"], "GiB"),
        (["eval", "--checkpoint", str(tmp_path / "missing.pt")], "checkpoint not found"),
        (["eval", "--checkpoint", str(tmp_path / "file.txt")], "not a readable PyTorch file"),
        (["predict", "--checkpoint", str(tmp_path / "file.txt"), str(tmp_path / "file.txt")], "not a readable"),
        (["export", "--checkpoint", str(ckpt), "--onnx", str(tmp_path / "x.onnx"), "--img-size", "9000"], "range"),
        (["import", "caffe", str(tmp_path / "junk.caffemodel"), "--out", str(tmp_path / "o.pt")], "junk.caffemodel"),
        (["import", "torchvision", str(tmp_path / "file.txt"), "--out", str(tmp_path / "o.pt")], "file.txt"),
        (["prepare", str(tmp_path / "dir"), "--out", str(tmp_path / "o")], "no train/ or val/"),
        (["prepare", str(tmp_path / "dir"), "--out", str(tmp_path / "file.txt")], "is a file"),
        (["train", "--data", str(tmp_path / "dir"), "--out", str(tmp_path / "r")], "folder not found"),
        (["train", "--out", str(tmp_path / "file.txt")], "is a file, not a run folder"),
        (["train", "--img-size", "100000"], "outside googlenet's range"),
        (["train", "--resume", str(tmp_path / "dir")], "checkpoint not found"),
        (["export", "--checkpoint", str(ckpt), "--onnx", str(tmp_path / "x.onnx"), "--min-agreement", "90"], "--int8"),
        (["export", "--checkpoint", str(tmp_path / "m.onnx"), "--onnx", str(tmp_path / "y.onnx")], "an exported ONNX"),
        (["import", "torchvision", str(ckpt), "--out", str(tmp_path / "file.txt" / "o.pt")], "is a file, not a folder"),
    ]


def test_every_command_answers_bad_arguments_with_one_line(tmp_path, capsys):
    for args, message in _bad_arguments(tmp_path):
        code = cli.main(args)  # an unexpected exception propagates here and fails the test with its traceback
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1, (args, err)
        assert len(err) == 1 and err[0].startswith("googlenet: error:") and message in err[0], (args, err)
        assert "Traceback" not in err[0]


def test_a_file_torch_cannot_open_is_named_in_one_line(tmp_path):
    # load_data sniffs a failed file's first bytes for its message; a path that cannot be opened at all
    # (here a folder) must still end in the one-line error, not in the sniffing's own OSError
    with pytest.raises(CheckpointError, match=r"^\S+: not a readable PyTorch file$"):
        load_data(tmp_path)
