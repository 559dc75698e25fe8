"""The benchmark scripts run in --quick mode, so they never rot (speed itself is not asserted)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "min_rows"),
    [
        ("bench/model_speed.py", 4),
        ("bench/cpu_speed.py --heads-and-batch", 13),  # 3 loader, 4 predict, 2 x header + 3 and 4 step rows
        ("bench/cpu_processes.py --cores 2", 3),  # header, one process x 2 threads, torchrun 2 x 1
        ("bench/e2e_speed.py", 4),
        ("bench/step_overhead.py", 3),
    ],
)
def test_bench_quick_mode(command, min_rows):
    script, *options = command.split()
    result = subprocess.run(
        [sys.executable, str(ROOT / script), "--quick", *options], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) >= min_rows  # header and one row per pipeline / model


@pytest.mark.slow
def test_gpu_suite_script_quick_mode(tmp_path):
    """Every phase's output; FM_KEEP=1 keeps the training checkpoint, and the next call continues that run
    instead of starting over, then deletes the checkpoint since FM_KEEP is not set again."""

    def call(*phases, **extra):
        env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, **extra}
        args = ["bash", str(ROOT / "bench/gpu_suite.sh"), "--quick", *phases]
        result = subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
        assert result.returncode == 0, result.stderr[-2000:]

    run = tmp_path / "fm_googlenet"
    call("e2e", "fm_googlenet", "model_speed", "step_overhead", FM_KEEP="1")
    assert (run / "metrics.jsonl").is_file() and (run / "eval_1crop.json").is_file()
    assert (run / "checkpoint_last.pt").is_file()
    assert "| ours googlenet (paper) |" in (tmp_path / "model_speed.md").read_text()
    assert "`fast` recipe sizes" in (tmp_path / "e2e_speed.md").read_text()
    overhead = (tmp_path / "step_overhead.md").read_text()
    assert "| pinned, non-blocking, eager |" in overhead and "## Profile: pinned copies, eager" in overhead

    call("fm_googlenet")  # the run is complete: resumed, it has nothing left to do, and it is not started over
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1]
    assert "resuming from" in (tmp_path / "fm_googlenet.log").read_text()
    assert not list(run.glob("*.pt"))  # deleted after evaluation unless FM_KEEP=1


def test_gpu_suite_script_rejects_an_unknown_phase(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    result = subprocess.run(
        ["bash", str(ROOT / "bench/gpu_suite.sh"), "--quick", "e2e_typo"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )
    assert result.returncode == 2 and "unknown phase: e2e_typo" in result.stderr


@pytest.mark.slow
def test_transfer_script_quick_mode(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench/transfer.py"),
            "--quick",
            "--out",
            str(tmp_path),
            "--variants",
            "googlenet_bn",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())["googlenet_bn"]
    assert set(results) == {"pretrain", "scratch", "finetune", "linear-probe", "features+logreg"}
    assert "init: loaded" in (tmp_path / "googlenet_bn" / "finetune.log").read_text()


def write_metrics(folder: Path, epochs: list[tuple[float, float]]) -> Path:
    """A run folder whose metrics.jsonl holds one line per (wall seconds, top-1) epoch."""
    folder.mkdir()
    lines = [json.dumps({"epoch": i + 1, "wall_s": s, "val_top1": t}) for i, (s, t) in enumerate(epochs)]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_time_to_accuracy_sums_epoch_wall_times(tmp_path):
    runs = []
    for name, epochs in (("a", [(60, 80.0), (120, 85.5)]), ("b", [(30, 70.0), (30, 75.0), (30, 90.25)])):
        runs.append(f"{name.upper()}={write_metrics(tmp_path / name, epochs)}")
    out = tmp_path / "curve.png"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench/time_to_accuracy.py"), "--out", str(out), *runs],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.read_bytes().startswith(b"\x89PNG")
    assert "| A | 3.0 | 85.50% |" in result.stdout  # 60 s + 120 s
    assert "| B | 1.5 | 90.25% |" in result.stdout  # three epochs of 30 s: the last epoch's accuracy


def test_time_to_accuracy_reads_each_run_at_equal_minutes(tmp_path):
    folder = write_metrics(tmp_path / "a", [(60, 80.0), (120, 85.5), (60, 87.0)])  # ends at minutes 1, 3, 4
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench/time_to_accuracy.py"), "--out", str(tmp_path / "c.png"),
         "--at", "0.5,1,2.9,3,4,5", f"A={folder}"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| run | minutes | final top-1 | at 0.5 min | at 1 min | at 2.9 min | at 3 min | at 4 min | at 5 min |" in (
        result.stdout
    )
    # Before the first epoch ends and after the run stops: no reading; in between, the last ended epoch's.
    assert "| A | 4.0 | 87.00% | - | 80.00% | 80.00% | 85.50% | 87.00% | - |" in result.stdout
