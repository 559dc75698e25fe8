"""CPU training speed by process layout: one process on every core against torchrun processes sharing them.

Each layout trains the `fashion-mnist-cpu` recipe for real (data, augmentation, clipping, EMA, validation,
checkpoints) on a subset of Fashion-MNIST at each size: one process with a thread per core (the usual
`googlenet train`), then `torchrun --nproc-per-node=P` with cores / P threads each. The global batch and
the random draws are the same in every layout, so the arithmetic is too (tests/test_distributed.py): only
the speed differs. Reported: the last epoch's training images per second (all processes together) and its
wall time with validation, each against the one-process layout measured in the same run.

    python bench/cpu_processes.py                          # ~7 minutes on 2 cores
    python bench/cpu_processes.py --model googlenet_bn --sizes 32 64
    python bench/cpu_processes.py --quick                  # seconds: checks the script
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def layouts(cores: int) -> list[tuple[int, int]]:
    """(processes, threads each) that use every core: 1 x cores, 2 x cores/2, ... cores x 1."""
    return [(p, cores // p) for p in range(1, cores + 1) if cores % p == 0 and (p & (p - 1)) == 0]


def train_command(processes: int, size: int, args: argparse.Namespace, out: Path) -> list[str]:
    train = ["-m", "googlenet", "train", "--config", "fashion-mnist-cpu", "--model", args.model]
    train += ["--img-size", str(size), "--epochs", str(args.epochs), "--train-subset", str(args.images)]
    train += ["--val-subset", str(args.val_images), "--out", str(out), "--overwrite"]
    if processes == 1:
        return [sys.executable, *train]
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    return [sys.executable, *launcher, *train]


def time_layout(processes: int, threads: int, size: int, args: argparse.Namespace, tmp: Path) -> tuple[float, float]:
    """(training img/s, wall seconds) of the last epoch of one run."""
    out = tmp / f"p{processes}-s{size}"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    result = subprocess.run(train_command(processes, size, args, out), env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{processes} process(es) at {size} px failed:\n{result.stderr[-3000:]}")
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    return last["images_per_s"], last["wall_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="googlenet")
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 48, 64])
    p.add_argument("--images", type=int, default=10240, help="training images per epoch")
    p.add_argument("--val-images", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=2, help="the last one is timed (the first warms up)")
    p.add_argument("--cores", type=int, default=os.cpu_count())
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.sizes, args.images, args.val_images, args.epochs = [32], 512, 256, 1
    print(
        f"# CPU training by process layout, {time.strftime('%Y-%m-%d')}: {platform.processor() or platform.machine()}, "
        f"{args.cores} cores; torch {torch.__version__}, python {platform.python_version()}\n\n"
        f"{args.model}, `fashion-mnist-cpu` recipe (batch 256 in all), {args.images} images per epoch, "
        f"epoch {args.epochs} of {args.epochs} timed\n"
    )
    print("| processes x threads | " + " | ".join(f"{s} px img/s | x one | {s} px epoch s" for s in args.sizes) + " |")
    print("|---" * (1 + 3 * len(args.sizes)) + "|")
    rows: dict[tuple[int, int], list[tuple[float, float]]] = {layout: [] for layout in layouts(args.cores)}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:  # the layouts in turn at each size, so that a slow spell hits them alike
            for layout, speeds in rows.items():
                speeds.append(time_layout(*layout, size, args, Path(tmp)))
    one = rows[(1, args.cores)]
    for (processes, threads), speeds in rows.items():
        cells = [f"{r:,.0f} | {r / base[0]:.2f} | {wall:.1f}" for (r, wall), base in zip(speeds, one)]
        print(f"| {processes} x {threads} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
