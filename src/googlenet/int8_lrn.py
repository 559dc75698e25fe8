"""The paper variant's LRN for int8: its power replaced by a straight line over the range int8 can reach.

In an exported graph the LRN reads ``y = x / (sqrt(t) * sqrt(sqrt(t)))`` with ``t = k + W x^2``, ``W`` the
band convolution holding alpha / size (model.LocalResponseNorm). onnxruntime has no int8 square root or
division, so that chain runs in float: dequantise nodes, four float operators and a quantise node over the
network's largest maps, about a quarter of the int8 graph's kernel time at 64 px. Trained from normalised
pixels, t stays within a few percent of k, where ``t ** -0.75`` is a straight line to within 0.01%, far inside
int8's resolution. So, where the fit is that close, the LRN becomes ``y = x + x * v`` with
``v = t ** -0.75 - 1`` fitted as ``a + b t``, folded into the band convolution's weights and bias: an int8
multiply, convolution, multiply and add, with no float operator left.

The range is bounded, not sampled: int8 clips x^2 at its calibrated maximum m, so t_c never exceeds
``k_c + m * sum_j W_cj``. An LRN whose line misses ``t ** -0.75`` by more than ``tolerance`` (relative)
anywhere on that range (larger activations, as from raw 0-255 pixels) keeps its exact float chain.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class LrnChain:
    """The nodes of one exported LRN: ``square = x * x``, ``t = conv(square)``, two roots, product, division."""

    square: object
    conv: object
    roots: tuple[object, object]
    product: object
    division: object

    @property
    def x(self) -> str:
        return self.square.input[0]


def find_lrn_chains(graph) -> list[LrnChain]:
    """Every ``x / (sqrt(t) * sqrt(sqrt(t)))`` with ``t = Conv(x * x)`` in ``graph`` (onnx GraphProto)."""
    producer = {out: node for node in graph.node for out in node.output}
    uses = Counter(name for node in graph.node for name in node.input)
    chains = []
    for division in (node for node in graph.node if node.op_type == "Div"):
        product = producer.get(division.input[1])
        if product is None or product.op_type != "Mul":
            continue
        first, second = (producer.get(name) for name in product.input)
        if first is None or second is None or first.op_type != "Sqrt" or second.op_type != "Sqrt":
            continue
        if second.input[0] != first.output[0]:
            first, second = second, first
        conv = producer.get(first.input[0])
        square = producer.get(conv.input[0]) if conv is not None and conv.op_type == "Conv" else None
        x = division.input[0]
        if second.input[0] != first.output[0] or square is None or list(square.input) != [x, x]:
            continue
        inner = [conv.output[0], first.output[0], second.output[0], product.output[0]]
        if [uses[name] for name in inner] != [1, 2, 1, 1]:  # used outside the chain: leave it alone
            continue
        chains.append(LrnChain(square, conv, (first, second), product, division))
    return chains


def lrn_float_chain(path: str | Path) -> list[str]:
    """Names of the square roots, product and division of each LRN still in the graph at ``path``: those
    the line did not replace. The quantiser would leave them in float anyway, but with a quantise and a
    dequantise node after each root and the product (six passes over the network's largest maps per LRN, and
    values near 1 rounded to 8 bits between float operators); excluded from quantisation, the chain runs in
    float from its dequantised inputs to one quantised output (docs/deploy.md)."""
    import onnx

    chains = find_lrn_chains(onnx.load(str(path), load_external_data=False).graph)
    return [node.name for chain in chains for node in (*chain.roots, chain.product, chain.division) if node.name]


def square_maxima(path: str | Path, chains: list[LrnChain], inputs: np.ndarray) -> list[float]:
    """The largest ``x * x`` each chain sees over ``inputs`` (float graph, onnxruntime on the CPU)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    names = [chain.square.output[0] for chain in chains]
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names)
    runner = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = runner.get_inputs()[0].name
    maxima = np.zeros(len(names))
    for start in range(0, len(inputs), 32):
        values = runner.run(names, {feed: inputs[start : start + 32]})
        maxima = np.maximum(maxima, [float(v.max()) for v in values])
    return maxima.tolist()


def fit_power_line(low: float, high: float, beta: float = 0.75) -> tuple[float, float, float]:
    """(a, b, worst relative error) of the least-squares line ``a + b t`` to ``t ** -beta`` on [low, high]."""
    t = np.linspace(low, high, 2001)
    target = t**-beta
    b, a = np.polyfit(t, target, 1)
    return float(a), float(b), float(np.max(np.abs(a + b * t - target) / target))


def linearise_lrn(path: str | Path, inputs: np.ndarray, tolerance: float = 1e-3) -> int:
    """Rewrite, in place, each LRN of the float graph at ``path`` whose line fits within ``tolerance`` on the
    range int8 can reach after calibrating on ``inputs``; returns how many were rewritten.

    The default, 0.1% of y, is at most a quarter of one int8 step of y's own range (1/255 of it)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    chains = find_lrn_chains(graph)
    initializers = {init.name: init for init in graph.initializer}
    rewritten = 0
    for chain, square_max in zip(chains, square_maxima(path, chains, inputs) if chains else []):
        names = list(chain.conv.input)
        if len(names) != 3 or names[1] not in initializers or names[2] not in initializers:
            continue
        weight = numpy_helper.to_array(initializers[names[1]]).astype(np.float64)
        bias = numpy_helper.to_array(initializers[names[2]]).astype(np.float64)
        if (weight < 0).any() or bias.min() <= 0:
            continue
        high = float((bias + square_max * weight.reshape(len(weight), -1).sum(axis=1)).max())
        a, b, error = fit_power_line(float(bias.min()), high)
        if error > tolerance:
            continue
        _replace_chain(graph, chain, (b * weight).astype(np.float32), (a - 1 + b * bias).astype(np.float32))
        rewritten += 1
    if rewritten:
        used = {name for node in graph.node for name in node.input}
        for init in [init for init in graph.initializer if init.name not in used]:
            graph.initializer.remove(init)  # the replaced band weights and biases
        onnx.save(model, str(path))
    return rewritten


def _replace_chain(graph, chain: LrnChain, weight: np.ndarray, bias: np.ndarray) -> None:
    """The convolution now computes v = t^-0.75 - 1 (fitted); the roots, product and division become
    ``y = x + x * v`` under the division's output name."""
    from onnx import helper, numpy_helper

    base = chain.conv.name or chain.conv.output[0]
    weight_name, bias_name = f"{base}_line_weight", f"{base}_line_bias"
    graph.initializer.extend([numpy_helper.from_array(weight, weight_name), numpy_helper.from_array(bias, bias_name)])
    chain.conv.input[1], chain.conv.input[2] = weight_name, bias_name
    v, y = chain.conv.output[0], chain.division.output[0]
    at = list(graph.node).index(chain.division)
    for node in (*chain.roots, chain.product, chain.division):
        graph.node.remove(node)
    at -= 3  # the roots and the product came before the division
    graph.node.insert(at, helper.make_node("Mul", [chain.x, v], [f"{y}_change"], name=f"{base}_line_mul"))
    graph.node.insert(at + 1, helper.make_node("Add", [chain.x, f"{y}_change"], [y], name=f"{base}_line_add"))
