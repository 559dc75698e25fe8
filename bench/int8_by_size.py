"""CPU inference speed by input size: PyTorch eager, float ONNX and int8 ONNX of both variants, in one process.

Speed does not depend on what the weights learnt, so the models are freshly initialised (seed 0) and the int8
graph is calibrated on random inputs; accuracy is `bench/int8_speed.py`'s job, on a trained checkpoint. This
answers what a checkpoint at another size would gain: at Fashion-MNIST's 28 px the network's maps are 4x4
and smaller, and per-operator overhead, not arithmetic, decides the time.

    python bench/int8_by_size.py --sizes 28 64 224 --out int8_by_size.md
    python bench/int8_by_size.py --quick     # seconds: checks the script
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from int8_speed import interleaved_speeds

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from googlenet import create_model, quantize  # noqa: E402
from googlenet.export import export_onnx  # noqa: E402
from googlenet.onnx_model import onnx_metadata, open_onnx, write_metadata  # noqa: E402
from googlenet.preprocessing import imagenet_preprocessing  # noqa: E402


def runtimes(variant: str, size: int, tmp: Path, calibration: int, threads: int) -> dict[str, object]:
    """The three callables for ``variant`` at ``size`` px: eager (BN folded, channels_last), float and int8 ONNX."""
    torch.manual_seed(0)
    model = create_model(variant, num_classes=10, aux_logits=False).fold_batchnorm()
    float_path, int8_path = tmp / f"{variant}-{size}.onnx", tmp / f"{variant}-{size}-int8.onnx"
    meta = onnx_metadata([str(c) for c in range(10)], imagenet_preprocessing(size), variant, size, False)
    export_onnx(model, float_path, size, metadata=meta)
    inputs = np.random.default_rng(0).standard_normal((calibration, 3, size, size)).astype(np.float32)
    quantize.quantize_int8(float_path, int8_path, inputs)
    write_metadata(int8_path, meta)  # the quantiser does not carry it over
    return {
        "PyTorch eager": model.to(memory_format=torch.channels_last),
        "onnxruntime float32": open_onnx(float_path, threads=threads).model,
        "onnxruntime int8": open_onnx(int8_path, threads=threads).model,
    }


def rows_for(variant: str, size: int, batches: list[int], args: argparse.Namespace, tmp: Path) -> list[str]:
    models = runtimes(variant, size, tmp, args.calibration_images, args.threads)
    per_batch = []  # per batch size: img/s of eager, float, int8, measured in turns
    for b in batches:
        x = torch.randn(b, 3, size, size).contiguous(memory_format=torch.channels_last)
        per_batch.append(interleaved_speeds(list(models.values()), x, args.seconds, args.rounds))
    eager, onnx_float, int8 = (list(column) for column in zip(*per_batch))
    return [
        f"| `{variant}` | {size} | {b} | {eager[i]:.1f} | {onnx_float[i]:.1f} | {int8[i]:.1f} | "
        f"{int8[i] / onnx_float[i]:.2f}x | {int8[i] / eager[i]:.2f}x |"
        for i, b in enumerate(batches)
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=["googlenet", "googlenet_bn"])
    p.add_argument("--sizes", nargs="+", type=int, default=[32, 64, 224])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    p.add_argument("--calibration-images", type=int, default=64)
    p.add_argument("--seconds", type=float, default=5.0, help="per runtime and batch size, all turns together")
    p.add_argument("--rounds", type=int, default=5, help="turns per runtime and batch size")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", help="also write the markdown table here")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that the script runs")
    args = p.parse_args()
    if args.quick:
        args.sizes, args.batches, args.calibration_images, args.seconds, args.rounds = [32], [1, 2], 4, 0.1, 2
    torch.set_num_threads(args.threads)
    lines = [
        f"# CPU inference by input size, images per second ({platform.processor() or platform.machine()}, "
        f"{args.threads} threads, median of {args.rounds} interleaved turns; int8: QDQ, per-channel, calibrated on "
        "random inputs)",
        "",
        "| variant | px | batch | PyTorch eager | ONNX float32 | ONNX int8 | int8 / float | int8 / eager |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            for size in args.sizes:
                lines += rows_for(variant, size, args.batches, args, Path(tmp))
                print(lines[-1], file=sys.stderr, flush=True)  # progress: the table comes at the end
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
