"""End to end: training from a JPEG folder, the standard PyTorch pipeline against ours, in one process.

- standard: torchvision ImageFolder + PIL + RandomResizedCrop/flip/ToTensor/Normalize in loader workers,
  torchvision's googlenet;
- ours, worker decode: torchvision.io decode + uint8 crop in workers, normalise on the device;
- ours, device decode: workers only read bytes; batched JPEG decode (nvJPEG on a GPU) and one roi_align
  crop for the whole batch on the device;
- both of ours again from a pack of the same folder (`googlenet prepare`: shorter side 256, JPEG q90).
Each is measured loader-only and with a training step (both aux heads; bf16 + channels_last on CUDA), at
224 px. The last row is the `fast` recipe's progressive resizing (FFCV's way there): the fastest of our
googlenet_bn pipelines' training rate measured at every size the recipe's schedule visits, combined as a whole run
would see them (epochs per size / time per epoch). The models run eagerly in every row.
The data is a generated folder of photo-like 500x375 JPEGs (ImageNet's typical size).

    python bench/e2e_speed.py                  # GPU: batch 256, 224 px, all CPU cores as workers
    python bench/e2e_speed.py --quick          # seconds on a CPU: checks the script
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import torch
import torchvision
from torchvision import transforms as T

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from cpu_speed import make_jpegs  # noqa: E402
from model_speed import ours_train_outputs, pick_device, sync, torchvision_train_outputs  # noqa: E402

from googlenet import GoogLeNetOutputs, create_model  # noqa: E402
from googlenet.batches import Augmentation, FolderSource, folder_crop_spec  # noqa: E402
from googlenet.config import resolve  # noqa: E402
from googlenet.data import ImageFolderDataset, scan_split  # noqa: E402
from googlenet.loop import googlenet_loss  # noqa: E402
from googlenet.pack import open_pack, write_pack  # noqa: E402
from googlenet.preprocessing import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from googlenet.schedule import img_size_at  # noqa: E402
from googlenet.train_config import TrainConfig  # noqa: E402


def _make_class(args: tuple[Path, int, int]) -> None:
    folder, n, seed = args
    folder.mkdir(parents=True, exist_ok=True)
    make_jpegs(folder, n, seed=seed)


def make_folder(root: Path, classes: int, per_class: int) -> Path:
    jobs = [(root / "train" / f"c{c:03d}", per_class, c) for c in range(classes)]
    with Pool(min(len(jobs), os.cpu_count() or 1)) as pool:
        pool.map(_make_class, jobs)
    return root / "train"


def standard_batches(train_dir: Path, size: int, batch: int, workers: int, device: torch.device):
    tf = T.Compose(
        [T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )
    ds = torchvision.datasets.ImageFolder(str(train_dir), transform=tf)
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    while True:
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def our_batches(index, size: int, batch: int, workers: int, device: torch.device, on_device: bool):
    aug = Augmentation()
    src = FolderSource(
        ImageFolderDataset(index, folder_crop_spec(aug, True)),
        batch_size=batch,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        aug=aug,
        device=device,
        workers=workers,
        decode_on_device=on_device,
    )
    epoch = 0
    while True:
        for x, y, _ in src.batches(epoch, size):
            yield x, y
        epoch += 1


def measure(make_batches, step, device, warmup: int, steps: int, batch: int) -> float:
    """Images/s over ``steps`` batches after ``warmup`` (each consumed by ``step``, None = loader only).

    ``steps`` should be well above workers x prefetch, so that batches prefetched during the warm-up do not
    inflate the rate. The loader (and its worker processes) is shut down before returning, so it cannot
    keep decoding while the next pipeline is measured.
    """
    batches = make_batches()
    try:
        for _ in range(warmup):
            x, y = next(batches)
            if step:
                step(x, y)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            x, y = next(batches)
            if step:
                step(x, y)
        sync(device)
        return steps * batch / (time.perf_counter() - t0)
    finally:
        batches.close()
        gc.collect()


def train_step_fn(model, outputs_fn, device):
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model = model.to(device, memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step(x, y):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = googlenet_loss(GoogLeNetOutputs(*outputs_fn(model, x.contiguous(memory_format=fmt))), y, 0.3, 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--per-class", type=int, default=200)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.batch, args.img_size, args.workers, args.classes, args.per_class = 4, 64, 0, 2, 6
        args.warmup, args.steps = 1, 2
    return args


def prepare_data(root: Path, args) -> tuple[Path, object, object]:
    """The generated JPEG folder, its index and a pack of it (shorter side 256, JPEG q90)."""
    start = time.perf_counter()
    train_dir = make_folder(root, args.classes, args.per_class)
    print(f"# {args.classes * args.per_class} JPEGs written in {time.perf_counter() - start:.0f} s", flush=True)
    start = time.perf_counter()
    folder = scan_split(train_dir)
    write_pack(folder, root / "train.gpk", short_side=256, quality=90, workers=args.workers)
    print(f"# packed (shorter side 256, JPEG q90) in {time.perf_counter() - start:.0f} s", flush=True)
    return train_dir, folder, open_pack(root / "train.gpk")


def pipelines(train_dir: Path, folder, packed, device, args) -> dict:
    """Label -> (make_batches, make_step) for each pipeline; the first row is the baseline."""
    tv = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True, num_classes=args.classes)

    def ours(index, on_device: bool, variant: str = "googlenet_bn"):
        batches = functools.partial(our_batches, index, args.img_size, args.batch, args.workers, device, on_device)
        model = functools.partial(create_model, variant, num_classes=args.classes)
        return batches, lambda: train_step_fn(model(), ours_train_outputs, device)

    return {
        "standard (ImageFolder + PIL) + torchvision googlenet": (
            lambda: standard_batches(train_dir, args.img_size, args.batch, args.workers, device),
            lambda: train_step_fn(tv, torchvision_train_outputs, device),
        ),
        "ours, files, worker decode + googlenet_bn": ours(folder, False),
        "ours, files, device decode + googlenet_bn": ours(folder, True),
        "ours, pack, worker decode + googlenet_bn": ours(packed, False),
        "ours, pack, device decode + googlenet_bn": ours(packed, True),
        "ours, files, device decode + googlenet (paper)": ours(folder, True, "googlenet"),
    }


def measure_pipelines(pipes: dict, device, args) -> list[tuple[str, float, float]]:
    """(label, loader-only img/s, training img/s) per pipeline, each printed as soon as it is measured."""
    rows = []
    for label, (make_batches, make_step) in pipes.items():
        t0 = time.perf_counter()
        loader_rate = measure(make_batches, None, device, args.warmup, args.steps, args.batch)
        train_rate = measure(make_batches, make_step(), device, args.warmup, args.steps, args.batch)
        rows.append((label, loader_rate, train_rate))
        # Printed at once: a run cut short still reports what it got.
        print(
            f"# {label}: loader {loader_rate:,.0f} img/s, training {train_rate:,.0f} img/s "
            f"({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    return rows


def progressive_rate(best: str, folder, packed, device, args) -> tuple[list[int], dict[int, float]]:
    """The `fast` recipe's per-epoch sizes and the training rate of pipeline ``best`` at each of them."""
    index, on_device = (packed if ", pack," in best else folder), "device decode" in best
    fast = resolve(TrainConfig, "fast")
    sizes = [32, 32, 40] if args.quick else [img_size_at(e, fast) for e in range(fast.epochs)]
    step = train_step_fn(create_model("googlenet_bn", num_classes=args.classes), ours_train_outputs, device)
    rate_at = {}
    for size in sorted(set(sizes)):
        batches = functools.partial(our_batches, index, size, args.batch, args.workers, device, on_device)
        rate_at[size] = measure(batches, step, device, args.warmup, args.steps, args.batch)
        print(f"# {best} at {size} px: training {rate_at[size]:,.0f} img/s", flush=True)
    return sizes, rate_at


def print_table(rows, best: str, sizes: list[int], rate_at: dict[int, float]) -> None:
    """Markdown table against the standard pipeline; the last row combines the per-size rates as a run would."""
    base = rows[0]
    print("\n| pipeline | loader only img/s | x standard | training img/s | x standard |\n|---|---|---|---|---|")
    for label, loader_rate, train_rate in rows:
        print(
            f"| {label} | {loader_rate:,.0f} | {loader_rate / base[1]:.2f} | {train_rate:,.0f} | "
            f"{train_rate / base[2]:.2f} |"
        )
    schedule_rate = len(sizes) / sum(1 / rate_at[s] for s in sizes)  # epochs per size / time per epoch
    print(
        f"| {best}, `fast` recipe sizes {min(sizes)}->{max(sizes)} px over "
        f"{len(sizes)} epochs | | | {schedule_rate:,.0f} | {schedule_rate / base[2]:.2f} |"
    )
    per_size = ", ".join(f"{s} px {r:,.0f}" for s, r in rate_at.items())
    print(f"\nTraining img/s per size ({best}): {per_size}.")


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        # The data first, in forked processes, before anything touches the GPU: a process that has set up
        # CUDA should not fork helpers that do not need it.
        train_dir, folder, packed = prepare_data(Path(tmp), args)
        device, name = pick_device(args.quick)
        print(
            f"# end to end, batch {args.batch}, {args.img_size} px, {args.workers} workers, {device.type} ({name}), "
            f"{os.cpu_count()} CPUs; torch {torch.__version__}, torchvision {torchvision.__version__}, "
            f"{time.strftime('%Y-%m-%d')}; {args.classes * args.per_class} JPEGs 500x375; {args.steps} steps "
            f"after {args.warmup} warm-up",
            flush=True,
        )
        rows = measure_pipelines(pipelines(train_dir, folder, packed, device, args), device, args)
        # Progressive resizing on the fastest of our googlenet_bn pipelines at full size.
        best = max((r for r in rows[1:] if "googlenet_bn" in r[0]), key=lambda r: r[2])[0]
        sizes, rate_at = progressive_rate(best, folder, packed, device, args)
    print_table(rows, best, sizes, rate_at)


if __name__ == "__main__":
    main()
