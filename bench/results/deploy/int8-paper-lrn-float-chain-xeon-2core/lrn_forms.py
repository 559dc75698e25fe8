"""The paper variant's LRN in ONNX three ways, timed in turns in one process.

- before (until 2026-12-03): k added after the band convolution, a reciprocal and a product, and every float
  operator of the chain wrapped in its own quantise / dequantise pair by onnxruntime's quantiser;
- float chain: k as the band convolution's bias, one division, and the square-root chain kept in float
  between one dequantised input and one quantised output (int8_lrn.lrn_float_chain);
- line: the chain replaced by its fitted line, all int8 (googlenet.int8_lrn), as `export --int8` does now.

Fresh weights (speed does not depend on them), calibrated on random inputs, as bench/int8_by_size.py does.

    python bench/results/deploy/int8-paper-lrn-float-chain-xeon-2core/lrn_forms.py --size 64
"""

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[4]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "bench")]
from int8_speed import interleaved_speeds  # noqa: E402

from googlenet import create_model, quantize  # noqa: E402
from googlenet.export import export_onnx  # noqa: E402
from googlenet.model import LocalResponseNorm  # noqa: E402
from googlenet.onnx_model import onnx_metadata, open_onnx, write_metadata  # noqa: E402
from googlenet.preprocessing import imagenet_preprocessing  # noqa: E402


def previous_forward(self, x):
    """The LRN as it was exported before: window sum, then scale and k, then 1 / (...) and a product."""
    band = self.band if self.band is not None else self._band_and_bias(x.shape[1], x)[0]
    window = F.conv2d(x * x, band)
    root = (self.k + self.alpha / self.size * window).sqrt()
    return x * (1 / (root * root.sqrt()))


def graphs(tmp: Path, size: int) -> dict[str, Path]:
    """Float graphs of the previous and the current LRN, and the three int8 graphs."""
    torch.manual_seed(0)
    model = create_model("googlenet", num_classes=10, aux_logits=False).eval()
    meta = onnx_metadata([str(c) for c in range(10)], imagenet_preprocessing(size), "googlenet", size, False)
    inputs = np.random.default_rng(0).standard_normal((64, 3, size, size)).astype(np.float32)
    paths = {name: tmp / f"{name}.onnx" for name in ("float before", "float now", "before", "float chain", "line")}
    with mock.patch.object(LocalResponseNorm, "forward", previous_forward):
        export_onnx(model, paths["float before"], size, metadata=meta)
    export_onnx(model, paths["float now"], size, metadata=meta)
    no_line = mock.patch.object(quantize, "linearise_lrn", lambda path, inputs: 0)
    no_chain = mock.patch.object(quantize, "lrn_float_chain", lambda path: [])
    for name, source, patches in [
        ("before", "float before", [no_line, no_chain]),
        ("float chain", "float now", [no_line]),
        ("line", "float now", []),
    ]:
        with contextlib.ExitStack() as stack:
            for patch in patches:
                stack.enter_context(patch)
            quantize.quantize_int8(paths[source], paths[name], inputs)
        write_metadata(paths[name], meta)  # the quantiser does not carry it over
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seconds", type=float, default=12.0)
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = graphs(Path(tmp), args.size)
        models = [open_onnx(path, threads=torch.get_num_threads()).model for path in paths.values()]
        print(f"# images per second at {args.size} px, median of {args.rounds} turns\n")
        print(f"| batch | {' | '.join(paths)} | int8 float chain / before | int8 line / before |")
        print("|---:|" + "---:|" * (len(paths) + 2))
        for batch in (1, 32):
            rates = interleaved_speeds(models, torch.randn(batch, 3, args.size, args.size), args.seconds, args.rounds)
            cells = " | ".join(f"{r:.1f}" for r in rates)
            print(f"| {batch} | {cells} | {rates[3] / rates[2]:.2f}x | {rates[4] / rates[2]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
