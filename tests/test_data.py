"""Data: decoding of awkward files, bad files skipped with a count, crop geometry, sharding."""

import io
import json

import pytest
import torch
from PIL import Image

from googlenet import create_model, train
from googlenet.augment import crop_resize, random_resized_box, random_resized_boxes
from googlenet.batches import epoch_batches, local_slice
from googlenet.data import DataError, _read_idx, scan_split
from googlenet.image_decode import decode_rgb

from .conftest import class_image, make_image_folder, small_config, write_image


def _pil_bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def awkward_files(folder):
    """Every kind of file a scraped dataset holds. Returns {name: decodable?}."""
    rgb = Image.fromarray(class_image(0, 0).permute(1, 2, 0).numpy())
    good_jpeg = _pil_bytes(rgb, "JPEG", quality=90)
    files = {
        "png_named.JPEG": (_pil_bytes(rgb, "PNG"), True),
        "cmyk.JPEG": (_pil_bytes(rgb.convert("CMYK"), "JPEG"), True),
        "grey.JPEG": (_pil_bytes(rgb.convert("L"), "JPEG"), True),
        "rgba.png": (_pil_bytes(rgb.convert("RGBA"), "PNG"), True),
        "one_pixel.png": (_pil_bytes(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), True),
        "truncated.JPEG": (good_jpeg[: len(good_jpeg) * 2 // 3], True),  # PIL recovers the top part
        "zero_bytes.JPEG": (b"", False),
        "text.JPEG": (b"this is not an image\n" * 10, False),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    return {name: ok for name, (_, ok) in files.items()}


def test_decode_awkward_files(tmp_path):
    for name, decodable in awkward_files(tmp_path).items():
        if decodable:
            img = decode_rgb(tmp_path / name)
            assert img.dtype == torch.uint8 and img.shape[0] == 3 and img.dim() == 3, name
        else:
            with pytest.raises(ValueError, match=name.replace(".", r"\.")):
                decode_rgb(tmp_path / name)


def test_cmyk_and_grey_decode_to_the_right_colours(tmp_path):
    red = Image.new("RGB", (8, 8), (220, 20, 20))
    (tmp_path / "cmyk.jpg").write_bytes(_pil_bytes(red.convert("CMYK"), "JPEG", quality=100))
    img = decode_rgb(tmp_path / "cmyk.jpg").float().mean(dim=(1, 2))
    assert img[0] > 150 and img[1] < 80 and img[2] < 80
    grey = decode_rgb(write_image(tmp_path / "g.png", torch.full((3, 4, 4), 77, dtype=torch.uint8)))
    assert (grey == 77).all()


def test_training_skips_bad_files_and_counts_them(image_folder, tmp_path):
    expected = awkward_files(image_folder / "train" / "class_1")
    bad = sum(not ok for ok in expected.values())
    out = tmp_path / "run"
    cfg = small_config(image_folder, out, epochs=1, workers=2, model="googlenet_bn")
    train.run(cfg)
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    # Shuffled batches of 8 over 32 files, last partial batch dropped: every file is seen once.
    assert row["bad_files"] == bad


def test_flat_validation_folder_with_labels_file(tmp_path):
    flat = tmp_path / "val"
    for i in range(4):
        write_image(flat / f"ILSVRC2012_val_{i:08d}.JPEG", class_image(i % 2, i))
    (tmp_path / "val_labels.txt").write_text("0\n1\nb\na\n")
    index = scan_split(flat, ["a", "b"])
    assert index.labels == [0, 1, 1, 0]
    (tmp_path / "val_labels.txt").write_text("0\n1\n")
    with pytest.raises(DataError, match="2 labels for 4 images"):
        scan_split(flat, ["a", "b"])


def test_val_classes_must_exist_in_training(tmp_path):
    make_image_folder(tmp_path, classes=2)
    (tmp_path / "val" / "stranger").mkdir()
    write_image(tmp_path / "val" / "stranger" / "x.JPEG", class_image(0, 0))
    train_index = scan_split(tmp_path / "train")
    with pytest.raises(DataError, match="stranger"):
        scan_split(tmp_path / "val", train_index.classes)


def test_idx_reader_rejects_truncated_files(tmp_path):
    header = bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + (3).to_bytes(4, "big")
    (tmp_path / "ok").write_bytes(header + bytes(range(18)))
    assert _read_idx(tmp_path / "ok").shape == (2, 3, 3)
    (tmp_path / "short").write_bytes(header + bytes(5))
    with pytest.raises(DataError, match="truncated"):
        _read_idx(tmp_path / "short")


# ------------------------------------------------------------------------------------------- geometry


def test_random_resized_boxes_follow_the_paper_ranges():
    g = torch.Generator().manual_seed(0)
    h = torch.randint(20, 400, (2000,), generator=g)
    w = torch.randint(20, 400, (2000,), generator=g)
    boxes = random_resized_boxes(h, w, (0.08, 1.0), (3 / 4, 4 / 3), g)
    x0, y0, x1, y1 = boxes.unbind(1)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= w).all() and (y1 <= h).all()
    assert ((x1 - x0) >= 1).all() and ((y1 - y0) >= 1).all()
    area = (x1 - x0) * (y1 - y0) / (h * w)
    aspect = (x1 - x0) / (y1 - y0)
    sampled = (area >= 0.075) & (area <= 1.0)
    # Rounding to whole pixels moves small crops slightly outside the nominal ranges.
    assert sampled.float().mean() > 0.99
    assert ((aspect > 0.7) & (aspect < 1.4)).float().mean() > 0.99
    # Oracle: torchvision's RandomResizedCrop sampler on the same image sizes gives the same distribution.
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(0)
    tv_area = []
    for hi, wi in zip(h.tolist(), w.tolist()):
        _, _, ch, cw = RandomResizedCrop.get_params(torch.empty(1, hi, wi), [0.08, 1.0], [3 / 4, 4 / 3])
        tv_area.append(ch * cw / (hi * wi))
    assert area.mean().item() == pytest.approx(sum(tv_area) / len(tv_area), abs=0.02)
    assert area.std().item() == pytest.approx(torch.tensor(tv_area).std().item(), abs=0.02)


def test_per_image_box_sampler_equals_the_batched_one():
    sizes = [(375, 500), (500, 375), (1, 1), (10, 400), (400, 10), (224, 224), (33, 31)]
    for i in range(200):
        h, w = sizes[i % len(sizes)]
        scale = (0.08, 1.0) if i % 2 else (0.9, 1.0)  # the narrow range forces the centre fallback often
        batched = random_resized_boxes(
            torch.tensor([h]), torch.tensor([w]), scale, (3 / 4, 4 / 3), torch.Generator().manual_seed(i)
        )[0]
        single = random_resized_box(h, w, scale, (3 / 4, 4 / 3), torch.Generator().manual_seed(i))
        assert tuple(int(v) for v in batched) == single, (h, w, i)


def test_crop_resize_of_the_whole_image_is_identity_and_boxes_cut_where_they_say():
    ys, xs = torch.meshgrid(torch.arange(20.0), torch.arange(30.0), indexing="ij")
    img = torch.stack([xs, ys, xs * 0]).unsqueeze(0)  # pixel values encode their own coordinates
    full = crop_resize(img, torch.tensor([[0.0, 0.0, 30.0, 20.0]]), 20)
    assert full.shape == (1, 3, 20, 20)
    same = crop_resize(img[..., :20, :20], torch.tensor([[0.0, 0.0, 20.0, 20.0]]), 20)
    torch.testing.assert_close(same, img[..., :20, :20])
    part = crop_resize(img, torch.tensor([[5.0, 2.0, 15.0, 12.0]]), 10)
    torch.testing.assert_close(part[0, 0], xs[2:12, 5:15])
    torch.testing.assert_close(part[0, 1], ys[2:12, 5:15])


def test_sharding_partitions_each_global_batch():
    batches = epoch_batches(103, 16, seed=1, epoch=2, shuffle=True, drop_last=True)
    assert len(batches) == 6 and all(len(b) == 16 for b in batches)
    assert torch.equal(batches[0], epoch_batches(103, 16, 1, 2, True, True)[0])  # deterministic
    for b in batches:
        parts = [b[local_slice(len(b), r, 4)] for r in range(4)]
        assert torch.equal(torch.cat(parts), b)


def _write_idx_gz(path, tensor):
    import gzip

    header = bytes([0, 0, 8, tensor.dim()]) + b"".join(d.to_bytes(4, "big") for d in tensor.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + tensor.numpy().tobytes())


def test_fashion_mnist_found_through_googlenet_data(tmp_path, monkeypatch):
    from googlenet.data import load_fashion_mnist

    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    labels = torch.tensor([0, 9, 3, 3, 1], dtype=torch.uint8)
    _write_idx_gz(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    _write_idx_gz(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    monkeypatch.setenv("GOOGLENET_DATA", str(tmp_path))
    x, y = load_fashion_mnist("test")
    assert torch.equal(x, images) and torch.equal(y, labels.long())


def test_real_fashion_mnist_when_installed():
    from googlenet.data import DEBIAN_FASHION_MNIST, load_fashion_mnist

    if not (DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("dataset-fashion-mnist not installed")
    x, y = load_fashion_mnist("test")
    assert x.shape == (10_000, 28, 28) and y.shape == (10_000,)
    assert torch.bincount(y).tolist() == [1000] * 10  # the test split is balanced


def test_ragged_crop_equals_per_image_crops_at_the_edges_too():
    from googlenet.augment import crop_resize_ragged

    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8) for h, w in [(30, 50), (45, 20), (8, 9)]]
    boxes = torch.tensor([[0.0, 0.0, 50.0, 30.0], [3.0, 20.0, 20.0, 45.0], [1.0, 2.0, 6.0, 7.0]])
    got = crop_resize_ragged(images, boxes, 16)
    for img, box, out in zip(images, boxes, got):
        expected = crop_resize(img.float().unsqueeze(0), box.unsqueeze(0).double(), 16)[0]
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-3)


@pytest.mark.parametrize("train_split", [True, False])
def test_device_decode_path_matches_the_worker_path(image_folder, train_split):
    from googlenet.batches import Augmentation, FolderSource, folder_crop_spec
    from googlenet.data import ImageFolderDataset

    # Mixed sizes, a PNG among JPEGs (forces the per-file fallback) and one undecodable file.
    split = image_folder / ("train" if train_split else "val") / "class_0"
    write_image(split / "big.png", class_image(0, 99, size=(90, 61)))
    (split / "broken.JPEG").write_bytes(b"\xff\xd8 not really a jpeg")
    index = scan_split(image_folder / ("train" if train_split else "val"))
    aug = Augmentation(crop_scale=(0.3, 1.0), hflip=True)
    kw = dict(batch_size=len(index.files), mean=(0.0,) * 3, std=(1.0,) * 3, aug=aug, workers=0, seed=4)
    spec = folder_crop_spec(aug, train_split)
    worker = FolderSource(ImageFolderDataset(index, spec, seed=4), **kw)
    device = FolderSource(ImageFolderDataset(index, spec, seed=4), decode_on_device=True, **kw)
    (xw, yw, bad_w), (xd, yd, bad_d) = next(worker.batches(1, 32)), next(device.batches(1, 32))
    assert len(bad_w) == len(bad_d) == 1 and "broken.JPEG" in bad_d[0]
    assert torch.equal(yw, yd) and xw.shape == xd.shape
    # Same boxes and flips; only the resampling differs (antialiased resize vs roi_align averaging).
    assert (xw - xd).abs().mean() < 0.01
    assert (xw - xd.flip(-1)).abs().mean() > 0.05  # and a mirrored crop would not pass: the check can fail


def test_random_erase_boxes_follow_torchvision_random_erasing():
    from torchvision.transforms import RandomErasing

    from googlenet.augment import random_erase_boxes

    g = torch.Generator().manual_seed(0)
    boxes = random_erase_boxes(4000, 48, 64, 0.5, generator=g)
    x0, y0, x1, y1 = boxes.unbind(1)
    erased = (x1 > x0) & (y1 > y0)
    assert erased.float().mean().item() == pytest.approx(0.5, abs=0.03)
    assert ((x1 - x0 == 0) == (y1 - y0 == 0)).all()  # empty boxes are empty in both directions
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= 64).all() and (y1 <= 48).all()
    area = ((x1 - x0) * (y1 - y0))[erased] / (48 * 64)
    aspect = ((y1 - y0) / (x1 - x0))[erased]
    assert area.min() >= 0.015 and area.max() <= 0.35  # (0.02, 0.33) up to whole-pixel rounding
    assert aspect.min() >= 0.25 and aspect.max() <= 3.6  # (0.3, 3.3)
    # Oracle: torchvision's sampler on the same image size gives the same area distribution.
    torch.manual_seed(0)
    img = torch.zeros(3, 48, 64)
    tv = []
    for _ in range(2000):
        i, j, h, w, _ = RandomErasing.get_params(img, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=[0.0])
        if (h, w) != (48, 64):  # torchvision's "nothing fitted" answer
            tv.append(h * w / (48 * 64))
    assert area.mean().item() == pytest.approx(sum(tv) / len(tv), abs=0.01)
    assert random_erase_boxes(100, 48, 64, 0.0, generator=g).eq(0).all()


def test_erase_fills_exactly_the_boxes():
    from googlenet.augment import erase

    images = torch.ones(3, 2, 10, 12)
    out = erase(images, torch.tensor([[2, 3, 7, 5], [0, 0, 0, 0], [0, 0, 12, 10]]), value=-1.0)
    assert torch.equal(out[0, :, 3:5, 2:7], torch.full((2, 2, 5), -1.0))
    assert (out[0] == -1).sum() == 2 * 2 * 5  # nothing outside the box
    assert torch.equal(out[1], images[1])  # an empty box erases nothing
    assert (out[2] == -1).all()


def test_in_memory_training_batches_erase_one_rectangle_per_image():
    from googlenet.batches import Augmentation, InMemorySource

    images = torch.full((8, 1, 28, 28), 200, dtype=torch.uint8)
    kw = dict(batch_size=8, train=True, mean=(0.5,) * 3, std=(0.25,) * 3, seed=3)
    on = InMemorySource(images, torch.zeros(8), aug=Augmentation(crop_scale=None, hflip=False, erase=1.0), **kw)
    x, _, _ = next(on.batches(0, 32))
    zero = x == 0  # the erase value: the mean after normalisation; the image itself is (200/255 - 0.5) / 0.25
    assert all(zero[i].any() for i in range(8))
    for img in zero[:, 0]:  # each erased region is one filled rectangle
        rows, cols = img.any(1).nonzero().flatten(), img.any(0).nonzero().flatten()
        assert img[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
        assert img.sum() == len(rows) * len(cols)
    off = InMemorySource(images, torch.zeros(8), aug=Augmentation(crop_scale=None, hflip=False), **kw)
    assert not (next(off.batches(0, 32))[0] == 0).any()


def test_host_to_device_keeps_values_and_converts_dtype():
    from googlenet.augment import host_to_device

    boxes = torch.tensor([[1.5, 2.0, 7.25, 9.0]], dtype=torch.float64)
    assert torch.equal(host_to_device(boxes, "cpu"), boxes)
    out = host_to_device(boxes, torch.device("cpu"), torch.float32)
    assert out.dtype == torch.float32 and torch.equal(out, boxes.float())


def test_normalize_takes_numbers_or_ready_made_device_constants():
    from googlenet.augment import channel_constants
    from googlenet.preprocessing import normalize

    x = torch.rand(2, 3, 4, 4)
    mean, std = (0.2, 0.3, 0.4), (0.5, 0.6, 0.7)
    expected = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(normalize(x, mean, std), expected)
    assert torch.allclose(normalize(x, channel_constants(mean, "cpu"), channel_constants(std, "cpu")), expected)


@pytest.mark.gpu
def test_training_steps_from_memory_never_make_the_host_wait_for_the_gpu():
    """No host-device sync per step: batches (crops, flips, erasing, normalisation) and the step itself."""
    from googlenet.batches import Augmentation, InMemorySource
    from googlenet.distributed import DistInfo
    from googlenet.ema import EMA
    from googlenet.loop import StepContext, evaluate, train_one_epoch

    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    aug = Augmentation(crop_scale=(0.6, 1.0), erase=0.5)
    src = InMemorySource(images, torch.arange(64) % 10, batch_size=16, train=True, mean=(0.3,), std=(0.35,),
                         aug=aug, device="cuda")  # fmt: skip
    model = create_model("googlenet", num_classes=10).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ctx = StepContext(opt, lambda s: 0.01, 2.0, 0.3, 0.1, lambda: torch.autocast("cuda", torch.bfloat16),
                            True, EMA(model, 0.99), lambda: False)  # fmt: skip
    train_one_epoch(model, src.batches(0, 32), ctx, 0, lambda *a: False)  # warm-up: cudnn autotuning
    torch.cuda.synchronize()

    def syncs_are_errors(batches):  # from the first batch to the last step (the epoch's end may sync once)
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield from batches
        finally:
            torch.cuda.set_sync_debug_mode(0)

    stats = train_one_epoch(model, syncs_are_errors(src.batches(1, 32)), ctx, 0, lambda *a: False)
    assert stats.steps == 4
    val = InMemorySource(images, torch.arange(64) % 10, batch_size=16, train=False, mean=(0.3,), std=(0.35,),
                         device="cuda")  # fmt: skip
    metrics = evaluate(model, syncs_are_errors(val.batches(0, 32)), ctx.autocast, True, DistInfo())
    assert metrics["val_images"] == 64
