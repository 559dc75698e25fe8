"""The paper variant's LRN in int8: a fitted line where it is exact to int8's resolution, float otherwise."""

import numpy as np
import pytest
import torch

from googlenet import create_model, int8_lrn, quantize
from googlenet.export import export_onnx

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def paper_graph(tmp_path_factory):
    """A fresh paper-variant graph at 32 px, prepared as quantize_int8 prepares it, and inputs for it."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    root = tmp_path_factory.mktemp("lrn")
    torch.manual_seed(0)
    model = create_model("googlenet", num_classes=3, aux_logits=False).eval()
    export_onnx(model, root / "paper.onnx", 32)
    quant_pre_process(str(root / "paper.onnx"), str(root / "prepared.onnx"), skip_symbolic_shape=True)
    inputs = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
    return root, inputs


def logits(path, inputs):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": inputs})[0]


def op_types(path):
    return [node.op_type for node in onnx.load(str(path)).graph.node]


def test_the_line_fits_the_power_closely_near_k_and_not_far_from_it():
    a, b, error = int8_lrn.fit_power_line(1.0, 1.004)
    t = np.array([1.0, 1.002, 1.004])
    np.testing.assert_allclose(a + b * t, t**-0.75, rtol=1e-5)
    assert error < 1e-5 and b < 0
    assert int8_lrn.fit_power_line(1.0, 50.0)[2] > 0.1  # Caffe-like ranges keep the float chain


def test_both_lrns_of_the_float_graph_become_lines_that_give_the_same_logits(paper_graph, tmp_path):
    root, inputs = paper_graph
    path = tmp_path / "linear.onnx"
    path.write_bytes((root / "prepared.onnx").read_bytes())
    assert len(int8_lrn.find_lrn_chains(onnx.load(str(path)).graph)) == 2
    assert int8_lrn.linearise_lrn(path, inputs) == 2
    ops = op_types(path)
    assert "Sqrt" not in ops and "Div" not in ops
    expected = logits(root / "prepared.onnx", inputs)
    np.testing.assert_allclose(logits(path, inputs), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_an_lrn_beyond_the_lines_reach_keeps_its_float_chain(paper_graph, tmp_path):
    """Inputs 100x larger (as raw 0-255 pixels would be) put t far from k: nothing is rewritten, and int8
    keeps the square roots, their product and the division in float between quantise nodes
    (int8_lrn.lrn_float_chain)."""
    root, inputs = paper_graph
    loud = inputs * 100
    path = tmp_path / "kept.onnx"
    path.write_bytes((root / "prepared.onnx").read_bytes())
    assert int8_lrn.linearise_lrn(path, loud) == 0
    int8_path = tmp_path / "kept-int8.onnx"
    quantize.quantize_int8(root / "paper.onnx", int8_path, loud)
    nodes = onnx.load(str(int8_path)).graph.node
    consumers = {out: [n.op_type for n in nodes if out in n.input] for node in nodes for out in node.output}
    roots = [n for n in nodes if n.op_type == "Sqrt"]
    products = [n for n in nodes if n.op_type == "Mul" and {r.output[0] for r in roots} & set(n.input)]
    divisions = [n for n in nodes if n.op_type == "Div"]
    assert (len(roots), len(products), len(divisions)) == (4, 2, 2)  # two LRNs
    for node in roots + products:
        assert "QuantizeLinear" not in consumers[node.output[0]], (node.name, consumers[node.output[0]])
    for node in divisions:
        (after,) = [n for n in nodes if node.output[0] in n.input]
        if after.op_type == "MaxPool":  # the second LRN's max pool reads the float map, then quantises
            (after,) = [n for n in nodes if after.output[0] in n.input]
        assert after.op_type == "QuantizeLinear"


def test_int8_export_of_the_paper_variant_has_no_float_lrn_left(paper_graph, tmp_path):
    root, inputs = paper_graph
    int8_path = tmp_path / "int8.onnx"
    quantize.quantize_int8(root / "paper.onnx", int8_path, inputs)
    ops = op_types(int8_path)
    assert not {"Sqrt", "Div"} & set(ops)
    assert ops.count("QuantizeLinear") > 60  # quantised throughout, the LRNs' multiplies and adds included
