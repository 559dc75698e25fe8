"""Static int8 quantisation of an exported graph, calibrated and checked on images prepared as `eval` does.

onnxruntime.quantization does the work (QDQ format, per-channel weights, activation ranges from a
calibration reader); this module feeds it the same pixels `eval` would show the model (one centre crop,
the checkpoint's normalisation), gives each Inception concatenation one set of quantisation parameters
(which onnxruntime's quantiser does not do), and refuses a result whose top-1 strays from the float model's.
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from googlenet.checkpoint import LoadedModel
from googlenet.data import FASHION_MNIST_CLASSES, DataError, load_fashion_mnist
from googlenet.evaluate import EvalImages, eval_dataset
from googlenet.int8_lrn import linearise_lrn, lrn_float_chain


class AgreementError(ValueError):
    """An int8 model whose top-1 agrees with the float model's on too few calibration images."""


def calibration_dataset(data: str, class_names: list[str]) -> EvalImages:
    """What `eval --data` reads, except that Fashion-MNIST calibrates on its training split, so the test
    split that `eval` scores stays unseen by the quantiser."""
    if data == "fashion-mnist":
        if list(class_names) != list(FASHION_MNIST_CLASSES):
            raise DataError(f"the checkpoint's {len(class_names)} classes are not Fashion-MNIST's")
        x, y = load_fashion_mnist("train")
        return EvalImages(None, y.tolist(), images=x)
    return eval_dataset(data, class_names)


def calibration_crops(member: LoadedModel, data: str, count: int) -> Tensor:
    """uint8 crops [N, 3, S, S] of up to ``count`` images spread evenly over the dataset (folders list the
    images class by class, so the first ``count`` could be a single class); unreadable images are left out."""
    dataset = calibration_dataset(data, member.class_names)
    if len(dataset) == 0:
        raise DataError(f"--calibrate {data}: no images")
    picks = torch.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().long().unique().tolist()
    crops = []
    for i in picks:
        image, _, _ = dataset[i]
        if image is not None:
            crops.append(member.preprocessing.crop(image))
    if not crops:
        raise DataError(f"--calibrate {data}: none of the {len(picks)} images could be read")
    return torch.stack(crops)


def graph_inputs(member: LoadedModel, crops: Tensor, baked: bool) -> np.ndarray:
    """The graph's input for uint8 crops: the pixels themselves where normalisation is baked in."""
    return crops.numpy() if baked else member.preprocessing.to_input(crops).numpy()


def _batches(inputs: np.ndarray, size: int = 32) -> Iterator[np.ndarray]:
    for start in range(0, len(inputs), size):
        yield np.ascontiguousarray(inputs[start : start + size])


def top1(onnx_path: str | Path, inputs: np.ndarray) -> np.ndarray:
    """The top-1 class of each input under onnxruntime (CPU)."""
    import onnxruntime as ort

    runner = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = runner.get_inputs()[0].name
    return np.concatenate([runner.run(None, {name: batch})[0].argmax(axis=1) for batch in _batches(inputs)])


def quantize_int8(float_path: str | Path, int8_path: str | Path, inputs: np.ndarray) -> None:
    """Write the int8 (QDQ, per-channel) version of ``float_path`` to ``int8_path``, calibrated on ``inputs``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self, name: str) -> None:
            self.name, self.batches = name, _batches(inputs)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {self.name: batch}

    with tempfile.TemporaryDirectory() as tmp:
        # Shape inference and graph folding first, as onnxruntime recommends before quantize_static.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        linearise_lrn(prepared, inputs)
        quantize_static(
            str(prepared),
            str(int8_path),
            Reader(_input_name(prepared)),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=lrn_float_chain(prepared),
        )
    share_concat_quantisation(int8_path)


def share_concat_quantisation(path: str | Path) -> int:
    """Quantise the inputs of each Concat with its output's scale and zero point; returns how many inputs.

    The quantiser gives every branch of an Inception module its own scale, so onnxruntime's QLinearConcat
    requantises each input; with one scale it copies them (for googlenet_bn at 64 px the concatenations' share
    of the int8 kernel time fell from 8.1% to 4.4%, docs/deploy.md). A Concat's calibrated output range
    is the union of its inputs' ranges, so no input is clipped; small-ranged branches lose some resolution,
    which the agreement check then measures. Only a Q -> DQ pair feeding nothing but the Concat changes.
    """
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    shared = 0
    for node in graph.node:
        users = consumers[node.output[0]] if node.op_type == "Concat" else []
        if len(users) != 1 or users[0].op_type != "QuantizeLinear":
            continue
        scale, zero_point = users[0].input[1], users[0].input[2]
        for name in node.input:
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is None or q.op_type != "QuantizeLinear" or len(consumers[q.output[0]]) != 1:
                continue
            for pair_node in (q, dq):
                pair_node.input[1], pair_node.input[2] = scale, zero_point
            shared += 1
    used = {name for node in graph.node for name in node.input}
    unused = [init for init in graph.initializer if init.name not in used]
    for init in unused:  # the replaced scales; onnxruntime warns about each one left behind
        graph.initializer.remove(init)
    onnx.save(model, str(path))
    return shared


def _input_name(path: Path) -> str:
    import onnx

    return onnx.load(str(path), load_external_data=False).graph.input[0].name


def agreement(float_path: str | Path, int8_path: str | Path, inputs: np.ndarray) -> float:
    """Percentage of ``inputs`` on which the two graphs pick the same top-1 class."""
    return 100.0 * float((top1(float_path, inputs) == top1(int8_path, inputs)).mean())


def check_agreement(value: float, minimum: float, images: int) -> None:
    if value < minimum:
        raise AgreementError(
            f"int8 top-1 agrees with the float model on {value:.2f}% of {images} calibration images, "
            f"below --min-agreement {minimum:g}%; nothing written"
        )
