"""Where the CPU time of an exported graph goes: onnxruntime's profiler, summed per operator type.

Exports the checkpoint's float graph and its int8 graph (as `googlenet export --int8` makes it, calibrated on
Fashion-MNIST's training split or --calibrate), runs each for --runs batches, and prints each operator
type's share of the kernel time, the images per second and the node counts. It found that a general power
(Pow) in the paper variant's LRN took a fifth of the int8 graph's time (docs/deploy.md).

    python bench/onnx_op_profile.py --checkpoint runs/fm/checkpoint_last.pt
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from int8_speed import build_graphs  # noqa: E402


def profile(path: Path, batch: int, runs: int, threads: int) -> tuple[float, collections.Counter]:
    """Images per second over ``runs`` timed batches, and kernel microseconds per operator type."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix(""))
    runner = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    spec = runner.get_inputs()[0]
    x = np.random.default_rng(0).random((batch, *spec.shape[1:]), dtype=np.float32)
    for _ in range(3):
        runner.run(None, {spec.name: x})
    start = time.perf_counter()
    for _ in range(runs):
        runner.run(None, {spec.name: x})
    speed = runs * batch / (time.perf_counter() - start)
    per_op: collections.Counter = collections.Counter()
    for event in json.loads(Path(runner.end_profiling()).read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"]
    return speed, per_op


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--calibrate", default="fashion-mnist")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that the script runs")
    args = p.parse_args()
    calibration_images = 8 if args.quick else 200
    if args.quick:
        args.batch, args.runs = 2, 2
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        graphs = build_graphs(args.checkpoint, Path(tmp), args.calibrate, calibration_images)[:2]
        for path in graphs:
            nodes = collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)
            speed, per_op = profile(path, args.batch, args.runs, args.threads)
            total = sum(per_op.values())
            print(f"## {path.stem}: {speed:.1f} img/s at batch {args.batch}, {args.threads} threads")
            print("kernel time: " + ", ".join(f"{op} {100 * t / total:.1f}%" for op, t in per_op.most_common(12)))
            print("nodes: " + ", ".join(f"{op} {n}" for op, n in nodes.most_common()))


if __name__ == "__main__":
    main()
