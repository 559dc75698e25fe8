"""CPU inference of one checkpoint three ways in one process: PyTorch eager, float ONNX and int8 ONNX.

For each: images per second at batch 1 (latency-bound serving) and batch 32 (throughput), the three measured
in turns and the median of --rounds taken (this class of machine drifts in speed within minutes), and top-1 on
the evaluation images (Fashion-MNIST's test split by default), all through the same crop and normalisation
as `googlenet eval`. The int8 graph is made as `googlenet export --int8` makes it (QDQ, per-channel,
calibrated on --calibrate: Fashion-MNIST's training split by default).

    python bench/int8_speed.py --checkpoint runs/fm/checkpoint_best.pt --out int8_speed.md
    python bench/int8_speed.py --checkpoint CKPT --data DIR --quick    # seconds: checks the script
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from googlenet import open_checkpoint, quantize  # noqa: E402
from googlenet.evaluate import eval_dataset, evaluate_ensemble  # noqa: E402
from googlenet.export import export_onnx  # noqa: E402
from googlenet.onnx_model import onnx_metadata, open_onnx  # noqa: E402


def images_per_second(model, x: torch.Tensor, seconds: float) -> float:
    """Forward passes of ``x`` for about ``seconds`` after three warm-up passes (allocator, oneDNN kernels)."""
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        runs, start = 0, time.perf_counter()
        while runs < 2 or time.perf_counter() - start < seconds:
            model(x)
            runs += 1
    return runs * len(x) / (time.perf_counter() - start)


def interleaved_speeds(models: list, x: torch.Tensor, seconds: float, rounds: int) -> list[float]:
    """Median images per second of each model over ``rounds`` turns taken in order (A B C A B C ...), each turn
    ``seconds / rounds`` long, so that a machine whose speed drifts slows every model alike."""
    turns: list[list[float]] = [[] for _ in models]
    for _ in range(rounds):
        for model, rates in zip(models, turns):
            rates.append(images_per_second(model, x, seconds / rounds))
    return [statistics.median(rates) for rates in turns]


def build_graphs(ckpt: str, tmp: Path, data: str, calibration_images: int) -> tuple[Path, Path, float, int]:
    """The float and int8 ONNX files of ``ckpt`` in ``tmp``, their top-1 agreement on the calibration images
    and how many there were."""
    member = open_checkpoint(ckpt)
    pre = member.preprocessing
    meta = onnx_metadata(member.class_names, pre, member.model.config.variant, pre.img_size, False)
    float_path, int8_path = tmp / "float.onnx", tmp / "int8.onnx"
    export_onnx(member.model, float_path, pre.img_size, metadata=meta)
    inputs = quantize.graph_inputs(member, quantize.calibration_crops(member, data, calibration_images), False)
    quantize.quantize_int8(float_path, int8_path, inputs)
    return float_path, int8_path, quantize.agreement(float_path, int8_path, inputs), len(inputs)


def top1(member, data: str, images: int) -> tuple[float, int]:
    dataset = eval_dataset(data, member.class_names)
    picks = torch.linspace(0, len(dataset) - 1, min(images, len(dataset))).round().long().unique().tolist()
    result = evaluate_ensemble([member], torch.utils.data.Subset(dataset, picks), workers=0)
    return result.top1, result.images


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", default="fashion-mnist", help="evaluation images, as eval's --data")
    p.add_argument("--calibrate", help="calibration images, as export's --calibrate (default: --data)")
    p.add_argument("--images", type=int, default=2000, help="evaluation images for top-1")
    p.add_argument("--calibration-images", type=int, default=500)
    p.add_argument("--seconds", type=float, default=5.0, help="per runtime and batch size, all turns together")
    p.add_argument("--rounds", type=int, default=5, help="turns per runtime and batch size")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", help="also write the markdown table here")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that the script runs")
    args = p.parse_args()
    if args.quick:
        args.images, args.calibration_images, args.seconds, args.rounds = 16, 16, 0.1, 2
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        float_path, int8_path, agreement, calibrated = build_graphs(
            args.checkpoint, Path(tmp), args.calibrate or args.data, args.calibration_images
        )
        members = {
            "PyTorch eager (BN folded, channels_last)": open_checkpoint(args.checkpoint, fold_batchnorm=True),
            "onnxruntime float32": open_onnx(float_path, threads=args.threads),
            "onnxruntime int8 (QDQ, per-channel)": open_onnx(int8_path, threads=args.threads),
        }
        files = [args.checkpoint, float_path, int8_path]
        size = members["onnxruntime float32"].preprocessing.img_size
        models = [member.model for member in members.values()]
        speeds = []  # per batch size, per runtime
        for batch in (1, 32):
            x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
            speeds.append(interleaved_speeds(models, x, args.seconds, args.rounds))
        rows = []
        for i, ((name, member), path) in enumerate(zip(members.items(), files)):
            accuracy, n = top1(member, args.data, args.images)
            rows.append((name, speeds[0][i], speeds[1][i], accuracy, Path(path).stat().st_size / 2**20))
    lines = [
        f"# CPU inference: eager vs ONNX float vs ONNX int8 ({platform.processor() or platform.machine()}, "
        f"{args.threads} threads, {size} px; speeds: median of {args.rounds} interleaved turns)",
        "",
        f"int8 top-1 agreement with float on {calibrated} calibration images: {agreement:.2f}%",
        "",
        f"| runtime | batch 1 img/s | batch 32 img/s | top-1 % ({n} images) | file MB |",
        "|---|---:|---:|---:|---:|",
        *[f"| {r[0]} | {r[1]:.1f} | {r[2]:.1f} | {r[3]:.2f} | {r[4]:.1f} |" for r in rows],
    ]
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
