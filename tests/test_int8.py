"""Exported ONNX files (float and int8) as models: metadata, quantisation checks, eval and predict on them."""

import asyncio
import contextlib
import io
import json

import pytest

from googlenet import cli, open_checkpoint
from googlenet.evaluate import eval_dataset, evaluate_ensemble
from googlenet.onnx_model import METADATA_KEYS, PREFIX, open_onnx
from googlenet.predict import predict

from .conftest import make_image_folder
from .deploy_helpers import CLASSES, decisive_checkpoint

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


def run(*args):
    """``googlenet ARGS`` in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main([str(a) for a in args])
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("int8")
    ckpt = decisive_checkpoint(root / "a.pt")
    data = make_image_folder(root / "data", classes=3, train_per_class=1, val_per_class=4)
    paths = {"ckpt": ckpt, "data": data}
    for name, extra in [("float", []), ("baked", ["--bake-preprocessing"]), ("int8", ["--int8"])]:
        paths[name] = root / f"{name}.onnx"
        if name == "int8":
            extra += ["--calibrate", data, "--calibration-images", 12, "--min-agreement", 0]
        status, out, err = run("export", "--checkpoint", ckpt, "--onnx", paths[name], *extra)
        assert status == 0, err
        paths[name + "_out"] = out
    return paths


def metadata(path):
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_every_export_writes_the_metadata(exported):
    for name in ("float", "baked", "int8"):
        meta = metadata(exported[name])
        assert {PREFIX + k for k in METADATA_KEYS} <= set(meta)
        assert json.loads(meta[PREFIX + "class_names"]) == CLASSES
        assert json.loads(meta[PREFIX + "preprocessing"])["img_size"] == 32
        assert meta[PREFIX + "variant"] == "googlenet_bn" and meta[PREFIX + "img_size"] == "32"
        assert json.loads(meta[PREFIX + "preprocessing_baked"]) is (name == "baked")


def test_int8_export_prints_its_agreement_and_is_quantised(exported):
    assert "int8 top-1 agreement with the float model: " in exported["int8_out"]
    assert "of 12 calibration images" in exported["int8_out"]
    assert exported["int8"].stat().st_size < exported["float"].stat().st_size / 2
    ops = {node.op_type for node in onnx.load(str(exported["int8"])).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_each_concatenation_copies_bytes_under_one_scale(exported):
    """Every Inception module's Concat reads its four branches with its own output's scale and zero point,
    so onnxruntime copies instead of requantising (quantize.share_concat_quantisation)."""
    graph = onnx.load(str(exported["int8"])).graph
    producer = {out: node for node in graph.node for out in node.output}
    concats = [node for node in graph.node if node.op_type == "Concat"]
    assert len(concats) == 9  # inception 3a ... 5b
    for concat in concats:
        (q_out,) = [node for node in graph.node if concat.output[0] in node.input]
        for name in concat.input:
            dq = producer[name]
            q = producer[dq.input[0]]
            assert (dq.op_type, q.op_type) == ("DequantizeLinear", "QuantizeLinear")
            assert dq.input[1:3] == q.input[1:3] == q_out.input[1:3]
    names = {init.name for init in graph.initializer}
    assert all(name in names for node in graph.node for name in node.input[1:3] if "scale" in name)


def test_float_onnx_gives_the_checkpoints_top1_in_eval_and_predict(exported):
    members = {name: open_onnx(exported[name]) for name in ("float", "baked")}
    members["ckpt"] = open_checkpoint(exported["ckpt"], fold_batchnorm=True)
    dataset = eval_dataset(str(exported["data"]), CLASSES)
    top1 = {name: evaluate_ensemble([m], dataset, workers=0).top1 for name, m in members.items()}
    assert top1["float"] == top1["ckpt"] == top1["baked"]
    images = [str(exported["data"] / "val")]
    classes = {name: [p.classes[0][0] for p in predict(m, images)] for name, m in members.items()}
    assert len(set(classes["ckpt"])) > 1  # predictions differ between images: the comparison means something
    assert classes["float"] == classes["ckpt"] == classes["baked"]


def test_eval_and_predict_commands_take_an_onnx_file(exported):
    for name in ("float", "int8"):
        status, out, err = run("eval", "--checkpoint", exported[name], "--data", exported["data"], "--workers", 0)
        assert status == 0 and out.startswith("top1 ") and "images 12" in out, err
        status, out, err = run("predict", "--checkpoint", exported[name], exported["data"] / "val", "--json")
        rows = [json.loads(line) for line in out.splitlines()]
        assert status == 0 and len(rows) == 12 and rows[0]["top_k"][0]["class"] in CLASSES, err


def test_agreement_below_the_threshold_is_an_error_and_writes_nothing(exported, tmp_path, monkeypatch):
    from googlenet import quantize

    monkeypatch.setattr(quantize, "agreement", lambda *args: 75.0)  # as if int8 changed one of 4 answers
    out = tmp_path / "q.onnx"
    args = ["--int8", "--calibrate", exported["data"], "--calibration-images", 4, "--min-agreement", 98]
    status, stdout, err = run("export", "--checkpoint", exported["ckpt"], "--onnx", out, *args)
    assert status == 1 and "int8 top-1 agreement with the float model: 75.00%" in stdout
    assert err.count("\n") == 1 and "75.00% of 4 calibration images, below --min-agreement 98%" in err, err
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary one


def test_an_onnx_file_without_our_metadata_is_a_one_line_error(exported, tmp_path):
    model = onnx.load(str(exported["float"]))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    status, _, err = run("predict", "--checkpoint", bare, exported["data"] / "val")
    assert status == 1 and err.count("\n") == 1
    assert "no googlenet metadata (googlenet.class_names, googlenet.preprocessing" in err, err


@pytest.mark.parametrize(
    "args, message",
    [(["--int8"], "--int8 needs --calibrate DATA"), (["--calibrate", "fashion-mnist"], "--calibrate is for --int8")],
)
def test_int8_flags_go_together(args, message):
    status, _, err = run("export", "--checkpoint", "a.pt", "--onnx", "a.onnx", *args)
    assert status == 1 and message in err


def test_serve_answers_with_an_int8_file(exported):
    pytest.importorskip("starlette")
    httpx = pytest.importorskip("httpx")
    from googlenet.serve import create_app

    member = open_onnx(exported["int8"])
    image = sorted((exported["data"] / "val" / "class_2").iterdir())[0]
    expected = next(predict(member, [str(image)])).classes[0][0]

    async def ask():
        app = create_app(member)
        async with app.router.lifespan_context(app):  # starts the batching worker, as uvicorn would
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                answer = (await client.post("/predict", content=image.read_bytes())).json()
                info = (await client.get("/model")).json()
        return answer, info

    answer, info = asyncio.run(ask())
    assert answer["model"] == "int8.onnx" and answer["top_k"][0]["class"] == expected
    assert info["input_size"] == [3, 32, 32]
