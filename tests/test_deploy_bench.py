"""The deployment benchmarks run in --quick mode on a tiny checkpoint, so they never rot (speed is not asserted)."""

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import make_image_folder
from .deploy_helpers import decisive_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy_bench")
    data = make_image_folder(root / "data", classes=3, train_per_class=1, val_per_class=2)
    return decisive_checkpoint(root / "a.pt"), data


def run_quick(*args, timeout=300) -> str:
    """A bench script's standard output in --quick mode; it must exit 0."""
    result = subprocess.run(
        [sys.executable, *map(str, args), "--quick"], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def run_script(*args, timeout=300):
    """The markdown table rows (header included, separator not) a bench script prints in --quick mode."""
    lines = run_quick(*args, timeout=timeout).splitlines()
    return [line for line in lines if line.startswith("| ") and "---" not in line]


@pytest.mark.slow
def test_int8_speed_quick_mode(tiny, tmp_path):
    ckpt, data = tiny
    out = tmp_path / "int8.md"
    rows = run_script(ROOT / "bench/int8_speed.py", "--checkpoint", ckpt, "--data", data, "--out", out)
    assert len(rows) == 4 and "onnxruntime int8" in rows[-1]  # header, eager, float, int8
    assert "int8 top-1 agreement with float on 6 calibration images" in out.read_text()


@pytest.mark.slow
def test_serve_load_quick_mode(tiny):
    ckpt, _ = tiny
    rows = run_script(ROOT / "bench/serve_load.py", "--checkpoint", ckpt)
    assert len(rows) == 3 and rows[1].startswith("| 1 |") and rows[2].startswith("| 8 |")
    assert all(row.rstrip(" |").endswith("| 0") for row in rows[1:])  # no failed request


@pytest.mark.slow
def test_onnx_op_profile_quick_mode(tiny):
    ckpt, data = tiny
    stdout = run_quick(ROOT / "bench/onnx_op_profile.py", "--checkpoint", ckpt, "--calibrate", data)
    float_part, int8_part = stdout.split("## int8")
    assert "## float" in float_part and " Conv " in float_part.split("kernel time:")[1]
    assert "QLinearConv" in int8_part  # the int8 graph's convolutions run as int8 kernels


@pytest.mark.slow
def test_int8_by_size_quick_mode(tmp_path):
    out = tmp_path / "by_size.md"
    rows = run_script(ROOT / "bench/int8_by_size.py", "--out", out)
    assert len(rows) == 5  # header, then batch 1 and 2 for each variant
    assert rows[1].startswith("| `googlenet` | 32 | 1 |") and rows[4].startswith("| `googlenet_bn` | 32 | 2 |")
    assert out.read_text().count("\n| `") == 4
