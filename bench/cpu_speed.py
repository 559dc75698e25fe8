"""CPU speed, baseline and ours in one process: the data path per core, and predict beside onnxruntime.

Data path: the standard pipeline (PIL decode, RandomResizedCrop, flip, ToTensor, Normalize: what
ImageFolder + torchvision.transforms does in each loader worker) against ours (torchvision.io decode and a
uint8 crop in the worker; normalisation happens batched on the training device), from the JPEG files and
from a pack of them (`googlenet prepare`). One process, one thread, so the numbers are per core. The
validation transforms of both are compared pixel by pixel.

Predict: batch of 224 px images through the eager model (default layout, channels_last, and for googlenet_bn
also with BatchNorm folded) and through onnxruntime running the exported graph.

Training step: the paper variant (both aux heads, SGD) at the Fashion-MNIST sizes, in the default memory
layout, in channels_last, and in channels_last under bf16 autocast (as `--bf16` trains), steps interleaved;
--train-model, --train-sizes and --no-aux pick another network, sizes or head set (the demo's, for example);
--heads-and-batch adds the CPU recipe's step (batch 256, aux heads) beside the same without the heads and at
batch 128.

    python bench/cpu_speed.py            # ~2 minutes on 2 cores
    python bench/cpu_speed.py --train-only --train-model googlenet_bn --train-sizes 28 --no-aux
    python bench/cpu_speed.py --train-only --train-sizes 32 48 64 --heads-and-batch
    python bench/cpu_speed.py --quick    # seconds: checks the script
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision import transforms as T

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from googlenet import create_model  # noqa: E402
from googlenet.data import (  # noqa: E402
    CropSpec,
    ImageFolderIndex,
    crop_image,
    sample_generator,
)
from googlenet.devices import cpu_has_native_bf16  # noqa: E402
from googlenet.export import export_onnx  # noqa: E402
from googlenet.image_decode import decode_rgb, decode_rgb_bytes  # noqa: E402
from googlenet.loop import googlenet_loss  # noqa: E402
from googlenet.pack import open_pack, write_pack  # noqa: E402

# Training-step settings compared: (memory format, bf16 autocast). bf16 pays off only where the CPU has
# native bf16 instructions (AVX512-BF16 or AMX; see googlenet.devices.cpu_has_native_bf16).
TRAIN_SETTINGS = {
    "default layout, fp32": (torch.contiguous_format, False),
    "channels_last, fp32": (torch.channels_last, False),
    "channels_last, bf16 autocast": (torch.channels_last, True),
}


def make_jpegs(folder: Path, n: int, size=(375, 500), seed: int = 0) -> list[Path]:
    """Photo-like JPEGs (smooth gradients, shapes, mild noise) at ImageNet's typical 500x375.

    numpy and PIL only: this runs in forked pool processes, where torch's thread pools are best left alone.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    ys, xs = np.meshgrid(np.linspace(0, 1, h, dtype=np.float32), np.linspace(0, 1, w, dtype=np.float32), indexing="ij")
    paths = []
    for i in range(n):
        a = rng.random((3, 3), dtype=np.float32)
        img = a[:, 0:1, None] * xs + a[:, 1:2, None] * ys + a[:, 2:3, None] * (xs * ys)
        cy, cx, r = rng.random(3)
        img = img + 0.5 * (((ys - cy) ** 2 + (xs - cx) ** 2) < (0.1 + 0.2 * r) ** 2)
        img = img + 0.03 * rng.standard_normal((3, h, w), dtype=np.float32)
        arr = np.clip(img / max(float(img.max()), 1e-6) * 255, 0, 255).astype(np.uint8).transpose(1, 2, 0)
        path = folder / f"img_{i:04d}.JPEG"
        Image.fromarray(np.ascontiguousarray(arr)).save(path, quality=90)
        paths.append(path)
    return paths


def rates(fns: list, items, reps: int) -> list[float]:
    """Median items/s of each function, the passes interleaved (A B A B ...) so drift hits all alike."""
    for fn in fns:  # warm-up
        fn(items[0])
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(reps):
        for fn, t in zip(fns, times):
            t0 = time.perf_counter()
            for it in items:
                fn(it)
            t.append(time.perf_counter() - t0)
    return [len(items) / statistics.median(t) for t in times]


def data_path(paths: list[Path], reps: int, pack_file: Path) -> list[tuple[str, float]]:
    normalize = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    standard = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), normalize])
    spec = CropSpec(train=True)
    write_pack(ImageFolderIndex([str(p) for p in paths], [0] * len(paths), ["c"]), pack_file, workers=0)
    packed = open_pack(pack_file)

    def baseline(i):
        with open(paths[i], "rb") as f:
            img = Image.open(f).convert("RGB")  # torchvision's default ImageFolder loader
        return standard(img)

    def ours(i):
        return crop_image(decode_rgb(paths[i]), 224, spec, sample_generator(0, 0, i))

    def ours_packed(i):
        return crop_image(decode_rgb_bytes(packed.read_bytes(i), ""), 224, spec, sample_generator(0, 0, i))

    base, fast, fastest = rates([baseline, ours, ours_packed], list(range(len(paths))), reps)
    return [
        ("standard: PIL + RandomResizedCrop + ToTensor + Normalize", base),
        ("ours: torchvision.io decode + uint8 random-resized crop", fast),
        ("ours from a pack (`googlenet prepare`: shorter side 256, JPEG q90), same crop", fastest),
    ]


def check_eval_transform(paths: list[Path]) -> float:
    """Mean |difference| (0-255 levels) between ours and the standard Resize(256)+CenterCrop(224)."""
    standard = T.Compose([T.Resize(256), T.CenterCrop(224), T.PILToTensor()])
    diffs = []
    for p in paths[:20]:
        ref = standard(Image.open(p).convert("RGB")).float()
        got = crop_image(decode_rgb(p), 224, CropSpec(train=False), None).float()
        diffs.append((ref - got).abs().mean().item())
    return sum(diffs) / len(diffs)


def predict_speed(batch: int, size: int, reps: int, tmp: Path) -> list[tuple[str, float, float]]:
    import onnxruntime as ort

    rows = []
    x = torch.randn(batch, 3, size, size)
    for name in ("googlenet", "googlenet_bn"):
        model = create_model(name, aux_logits=False).eval()
        onnx_path = tmp / f"{name}.onnx"
        export_onnx(model, onnx_path, size)
        runner = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        # What `googlenet predict` and `googlenet eval` run: channels_last weights and inputs, and for
        # googlenet_bn BatchNorm folded into the convolutions.
        x_cl = x.contiguous(memory_format=torch.channels_last)
        variants = [
            ("default layout", model, x),
            ("channels_last", copy.deepcopy(model).to(memory_format=torch.channels_last), x_cl),
        ]
        if name == "googlenet_bn":
            folded = copy.deepcopy(model).fold_batchnorm().to(memory_format=torch.channels_last)
            variants.append(("channels_last + BN folded", folded, x_cl))
        labels = [f"{name} PyTorch eager, {v[0]}" for v in variants] + [f"{name} onnxruntime"]
        labels[-2] += " (googlenet predict / eval)"
        with torch.inference_mode():
            ref = model(x)
            diffs = [(m(xx) - ref).abs().max().item() for _, m, xx in variants]
            diffs.append((torch.from_numpy(runner.run(None, {"input": x.numpy()})[0]) - ref).abs().max().item())
            fns = [lambda _, m=m, xx=xx: m(xx) for _, m, xx in variants]
            fns.append(lambda _, s=runner: s.run(None, {"input": x.numpy()}))
            speeds = [r * batch for r in rates(fns, [None], reps)]
        rows += list(zip(labels, speeds, diffs))
    return rows


class StepSetting(NamedTuple):
    """One training-step configuration timed by ``train_step_speed``."""

    memory_format: torch.memory_format
    bf16: bool
    aux: bool
    batch: int


def train_step_speed(
    sizes: tuple[int, ...], settings: list[StepSetting], reps: int, model_name: str = "googlenet"
) -> list[tuple[int, list[float]]]:
    """(size, img/s per setting) of an SGD training step, median of ``reps``, the settings interleaved."""
    rows = []
    for size in sizes:
        steps = []
        for fmt, bf16, aux, batch in settings:
            torch.manual_seed(0)
            model = create_model(model_name, num_classes=10, aux_logits=aux).to(memory_format=fmt)
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
            y = torch.randint(0, 10, (batch,))

            def step(_, m=model, o=opt, xx=x, yy=y, bf16=bf16, aux=aux):
                # As the training loop: forward under autocast, then its loss (float32, aux heads x0.3).
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    outputs = m(xx, with_aux=aux)
                loss = googlenet_loss(outputs, yy, aux_weight=0.3, smoothing=0.0)
                o.zero_grad()
                loss.backward()
                o.step()

            steps.append(step)
        batches = [setting.batch for setting in settings]
        rows.append((size, [r * b for r, b in zip(rates(steps, [None], reps), batches)]))
    return rows


def print_step_table(sizes: tuple[int, ...], names: list[str], speeds: dict[int, list[float]], first: str) -> None:
    """One row per setting: img/s per size and the ratio to the first row (called ``first`` in the header)."""
    print("| setting | " + " | ".join(f"{size} px img/s | x {first}" for size in sizes) + " |")
    print("|---" * (1 + 2 * len(sizes)) + "|")
    for i, name in enumerate(names):
        cells = [f"{speeds[size][i]:,.0f} | {speeds[size][i] / speeds[size][0]:.2f}" for size in sizes]
        print(f"| {name} | " + " | ".join(cells) + " |")


def data_and_predict_tables(args: argparse.Namespace) -> None:
    """The data-path and predict tables."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_jpegs(tmp, args.images)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # per core, as one loader worker
        rows = data_path(paths, args.reps, tmp / "train.gpk")
        diff = check_eval_transform(paths)
        torch.set_num_threads(threads)
        print(f"\n## Data path, one core, {args.images} JPEGs of 500x375 -> 224 px (median of {args.reps})\n")
        print("| pipeline | images/s per core | x standard |\n|---|---|---|")
        for name, r in rows:
            print(f"| {name} | {r:,.0f} | {r / rows[0][1]:.2f} |")
        print(f"\nEval transform check (resize 256 + centre crop 224): mean |ours - standard| = {diff:.3f} / 255")
        batch, size = (2, 64) if args.quick else (32, 224)
        print(f"\n## Predict, batch {batch} at {size} px, {threads} threads (median of {args.reps})\n")
        print("| model / runtime | images/s | max abs logit diff vs eager |\n|---|---|---|")
        for name, r, d in predict_speed(batch, size, args.reps, tmp):
            print(f"| {name} | {r:,.1f} | {d:.1e} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--train-only", action="store_true", help="only the training-step table")
    p.add_argument("--train-model", default="googlenet", help="network of the training-step table")
    p.add_argument("--train-sizes", type=int, nargs="+", default=[32, 64], help="its input sizes")
    p.add_argument("--no-aux", dest="aux", action="store_false", help="train without the auxiliary heads")
    p.add_argument(
        "--heads-and-batch", action="store_true", help="also time the recipe's step without aux heads and at batch 128"
    )
    args = p.parse_args()
    if args.quick:
        args.images, args.reps = 8, 1
    print(
        f"# CPU speed, {time.strftime('%Y-%m-%d')}: {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads; torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"python {platform.python_version()}"
    )
    threads = torch.get_num_threads()
    if not args.train_only:
        data_and_predict_tables(args)
    sizes, batch, reps = ((32,), 4, 1) if args.quick else (tuple(args.train_sizes), 128, 2 * args.reps)
    heads = "" if args.aux else " without aux heads"
    print(
        f"\n## Training step, {args.train_model}{heads}, batch {batch}, {threads} threads "
        f"(median of {reps}, interleaved; native bf16: {cpu_has_native_bf16()})\n"
    )
    settings = [StepSetting(fmt, bf16, args.aux, batch) for fmt, bf16 in TRAIN_SETTINGS.values()]
    speeds = dict(train_step_speed(sizes, settings, reps, args.train_model))  # size -> img/s per setting
    print_step_table(sizes, list(TRAIN_SETTINGS), speeds, "default")
    if args.heads_and_batch:
        heads_and_batch_table(sizes, reps, args.train_model, quick=args.quick)


def heads_and_batch_table(sizes: tuple[int, ...], reps: int, model_name: str, quick: bool) -> None:
    """The CPU recipe's step (channels_last; bf16 where native) with and without the auxiliary heads, at the
    recipe's batch of 256 and at 128: what dropping the heads or halving the batch buys per image."""
    bf16 = cpu_has_native_bf16()
    rows = {
        f"aux heads, batch {b}" if aux else f"no aux heads, batch {b}": StepSetting(torch.channels_last, bf16, aux, b)
        for aux in (True, False)
        for b in ((4, 2) if quick else (256, 128))
    }
    precision = "bf16 autocast" if bf16 else "float32"
    print(f"\n## Training step by heads and batch, {model_name}, channels_last, {precision} (median of {reps})\n")
    speeds = dict(train_step_speed(sizes, list(rows.values()), reps, model_name))
    print_step_table(sizes, list(rows), speeds, "recipe")


if __name__ == "__main__":
    main()
