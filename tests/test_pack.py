"""Packs (`googlenet prepare`): exactly the re-encoded images, bad files skipped, whole or absent, read like folders."""

import pickle

import pytest
import torch
from torchvision.io import decode_jpeg, encode_jpeg
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from googlenet import cli, train
from googlenet.batches import Augmentation, FolderSource, folder_crop_spec
from googlenet.data import DataError, ImageFolderDataset, scan_split
from googlenet.image_decode import decode_rgb
from googlenet.pack import PackedIndex, _Reencoded, open_pack, open_split, prepare, write_pack

from .conftest import class_image, small_config, write_image
from .test_data import awkward_files


def test_pack_holds_exactly_the_resized_reencoded_images(image_folder):
    write_image(image_folder / "train" / "class_1" / "big.png", class_image(1, 7, size=(90, 61)))
    reports = prepare(image_folder, image_folder.parent / "packed", short_side=36, quality=95, workers=2)
    source = scan_split(image_folder / "train")
    packed = open_split(image_folder.parent / "packed", "train")
    assert isinstance(packed, PackedIndex) and reports["train"].images == len(source.files) == len(packed.files)
    assert packed.files == source.files and packed.labels == source.labels and packed.classes == source.classes
    for i, path in enumerate(source.files):
        original = decode_rgb(path)
        expected = original
        if min(original.shape[-2:]) > 36:
            expected = TF.resize(original, [36], interpolation=InterpolationMode.BILINEAR, antialias=True)
        # Oracle: the same three steps done here by hand give the very same bytes.
        assert packed.read_bytes(i) == encode_jpeg(expected, quality=95).numpy().tobytes()
        stored = decode_jpeg(torch.frombuffer(bytearray(packed.read_bytes(i)), dtype=torch.uint8))
        assert min(stored.shape[-2:]) == min(36, *original.shape[-2:])
        assert (stored.float() - expected.float()).abs().mean() < 8  # quality 95 on pixel noise, JPEG's worst case
    assert open_split(image_folder.parent / "packed", "val").classes == source.classes


def test_pack_skips_undecodable_files_and_names_them(tmp_path):
    folder = tmp_path / "src" / "train" / "weird"
    folder.mkdir(parents=True)
    expected = awkward_files(folder)
    report = write_pack(scan_split(tmp_path / "src" / "train"), tmp_path / "train.gpk", workers=0)
    packed = open_pack(tmp_path / "train.gpk")
    kept = {name.rsplit("/", 1)[-1] for name in packed.files}
    assert kept == {name for name, ok in expected.items() if ok}
    assert sorted(msg.split(":")[0].rsplit("/", 1)[-1] for msg in report.skipped) == sorted(
        name for name, ok in expected.items() if not ok
    )
    for i in range(len(packed.files)):  # every kept image decodes as a 3-channel JPEG
        assert decode_jpeg(torch.frombuffer(bytearray(packed.read_bytes(i)), dtype=torch.uint8)).shape[0] == 3


def test_a_failed_pack_leaves_nothing_behind(image_folder, monkeypatch):
    calls = []

    def failing(self, i):
        calls.append(i)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return original(self, i)

    original = _Reencoded.__getitem__
    monkeypatch.setattr(_Reencoded, "__getitem__", failing)
    out = image_folder.parent / "train.gpk"
    with pytest.raises(RuntimeError, match="disk full"):
        write_pack(scan_split(image_folder / "train"), out, workers=0)
    assert not list(image_folder.parent.glob("train.gpk*"))


def test_truncated_foreign_or_mismatched_packs_are_clear_errors(image_folder, tmp_path):
    prepare(image_folder, tmp_path / "p", workers=0)
    data = (tmp_path / "p" / "train.gpk").read_bytes()
    (tmp_path / "cut.gpk").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="not a googlenet pack, or truncated"):
        open_pack(tmp_path / "cut.gpk")
    (tmp_path / "other.gpk").write_bytes(b"PK\x03\x04 a zip file, say" * 10)
    with pytest.raises(DataError, match="not a googlenet pack"):
        open_pack(tmp_path / "other.gpk")
    with pytest.raises(DataError, match="classes differ"):
        open_pack(tmp_path / "p" / "val.gpk", ["a", "b"])


def test_packed_index_travels_to_workers_and_subsets(image_folder, tmp_path):
    prepare(image_folder, tmp_path / "p", workers=0)
    packed = open_pack(tmp_path / "p" / "train.gpk")
    first = packed.read_bytes(5)  # opens the memory map ...
    clone = pickle.loads(pickle.dumps(packed))  # ... which is not pickled into workers
    assert "_map" not in clone.__dict__ and clone.read_bytes(5) == first
    part = packed.subset([5, 0])
    assert part.read_bytes(0) == first and part.files == [packed.files[5], packed.files[0]]


@pytest.mark.parametrize("on_device", [False, True])
def test_batches_from_a_pack_match_the_folder_up_to_jpeg_reencoding(image_folder, tmp_path, on_device):
    prepare(image_folder, tmp_path / "p", short_side=None, quality=95, workers=0)
    aug = Augmentation(crop_scale=(0.3, 1.0), hflip=True)
    batches = []
    for index in (scan_split(image_folder / "train"), open_split(tmp_path / "p", "train")):
        src = FolderSource(
            ImageFolderDataset(index, folder_crop_spec(aug, True), seed=2),
            batch_size=len(index.files),
            mean=(0.0,) * 3,
            std=(1.0,) * 3,
            aug=aug,
            workers=0,
            seed=2,
            decode_on_device=on_device,
        )
        batches.append(next(src.batches(0, 32)))
    (xf, yf, _), (xp, yp, _) = batches
    assert torch.equal(yf, yp)
    # Same boxes and flips; the only difference is one JPEG re-encode. Mirrored crops differ 4x more at least.
    assert (xf - xp).abs().mean() < 0.01
    assert (xf - xp).abs().mean() < 0.25 * (xf - xp.flip(-1)).abs().mean()


def test_train_and_eval_read_a_prepared_folder(image_folder, tmp_path, capsys):
    assert cli.main(["prepare", str(image_folder), "--out", str(tmp_path / "p"), "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "train: 24 images" in printed and "val: 12 images" in printed
    cfg = small_config(tmp_path / "p", tmp_path / "run", epochs=1)
    metrics = train.run(cfg)
    assert metrics["epoch"] == 1 and metrics["bad_files"] == 0
    code = cli.main(["eval", "--checkpoint", str(tmp_path / "run"), "--data", str(tmp_path / "p"), "--crops", "1"])
    assert code == 0 and "images 12" in capsys.readouterr().out
