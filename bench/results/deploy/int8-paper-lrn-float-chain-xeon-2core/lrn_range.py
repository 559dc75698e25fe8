"""For each LRN of a paper-variant checkpoint: the largest x^2 on the calibration images, the bound on t that
int8 can reach, and how far the fitted line strays from t^-0.75 there (what `export --int8` decides on).

    python bench/results/deploy/int8-paper-lrn-float-chain-xeon-2core/lrn_range.py CHECKPOINT [DATA]
"""

import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization.shape_inference import quant_pre_process

sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "src"))
from googlenet import int8_lrn, open_checkpoint, quantize  # noqa: E402
from googlenet.export import export_onnx  # noqa: E402


def main() -> None:
    checkpoint, data = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "fashion-mnist"
    member = open_checkpoint(checkpoint)
    inputs = quantize.graph_inputs(member, quantize.calibration_crops(member, data, 500), False)
    with tempfile.TemporaryDirectory() as tmp:
        float_path, prepared = Path(tmp) / "float.onnx", Path(tmp) / "prepared.onnx"
        export_onnx(member.model, float_path, member.preprocessing.img_size)
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared)).graph
        chains = int8_lrn.find_lrn_chains(graph)
        values = {init.name: numpy_helper.to_array(init).astype(np.float64) for init in graph.initializer}
        print(f"{checkpoint}: {len(inputs)} calibration images from {data}")
        for chain, square_max in zip(chains, int8_lrn.square_maxima(prepared, chains, inputs)):
            weight, bias = values[chain.conv.input[1]], values[chain.conv.input[2]]
            high = float((bias + square_max * weight.reshape(len(weight), -1).sum(axis=1)).max())
            a, b, error = int8_lrn.fit_power_line(float(bias.min()), high)
            print(
                f"{chain.conv.name}: max x^2 {square_max:.4g}, t in [{bias.min():g}, {high:.6f}], "
                f"line {a:.6f} + {b:.6f} t, worst relative error {error:.2e}"
            )


if __name__ == "__main__":
    main()
