"""torchrun with 2 gloo processes trains exactly as 1 process with the same global batch."""

import json
import os
import subprocess
import sys

import pytest

from googlenet.checkpoint import read_checkpoint

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def _train(image_folder, out, nproc, *extra):
    # Dropout off: its random masks are drawn per process. Data order and crops are shared by design.
    args = [
        "train",
        "--data",
        str(image_folder),
        "--out",
        str(out),
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--img-size",
        "32",
        "--workers",
        "0",
        "--model",
        "googlenet",
        "--dropout",
        "0",
        "--aux-dropout",
        "0",
        "--device",
        "cpu",
        "--no-bf16",  # the same arithmetic on every CPU: bf16 rounding would differ between batch 8 and 2 x 4
        "--lr",
        "0.01",
        "--seed",
        "5",
        "--erase",  # random draws made for the global batch, then sliced: also identical across processes
        "0.5",
        "--photometric",
        "0.2",
        *extra,
    ]
    if nproc == 1:
        cmd = [sys.executable, "-m", "googlenet", *args]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
            "-m",
            "googlenet",
            *args,
        ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_two_gloo_processes_match_one_process(image_folder, tmp_path):
    single = _train(image_folder, tmp_path / "one", 1)
    double = _train(image_folder, tmp_path / "two", 2)
    assert len(single) == len(double) == 2
    for a, b in zip(single, double):
        for key in ("train_loss", "val_loss", "val_top1", "val_top5", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), (a["epoch"], key)
        assert a["val_images"] == b["val_images"] == 12


def test_two_gloo_processes_agree_when_a_time_budget_is_spent(image_folder, tmp_path):
    # Each process reads its own clock; they must stop at the same step, or the next all-reduce hangs.
    metrics = _train(image_folder, tmp_path / "budget", 2, "--time-budget", "0.15", "--epochs", "1000")
    assert 1 <= len(metrics) < 1000
    # How far the lr decayed depends on this machine's speed; that the run ended spent does not.
    state = read_checkpoint(tmp_path / "budget" / "checkpoint_last.pt")["train_state"]
    assert state["budget"]["fraction"] == 1.0
