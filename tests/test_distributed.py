"""torchrun with 2 gloo processes trains exactly as 1 process with the same global batch, and the processes agree."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from googlenet import distributed as D
from googlenet import processes
from googlenet.checkpoint import read_checkpoint

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def _train(image_folder, out, nproc, *extra, launcher="torchrun"):
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
    elif launcher == "processes":  # googlenet starts them itself
        cmd = [sys.executable, "-m", "googlenet", *args, "--processes", str(nproc)]
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
    assert result.stdout.count("final:") == 1  # one summary, however many processes
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("launcher", ["torchrun", "processes"])
def test_two_gloo_processes_match_one_process(image_folder, tmp_path, launcher):
    single = _train(image_folder, tmp_path / "one", 1)
    double = _train(image_folder, tmp_path / "two", 2, launcher=launcher)
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


def _vote(rank: int, port: int, flags: list[bool], results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=len(flags))
    try:
        info = D.DistInfo(rank=rank, world=len(flags))
        results[rank] = D.holds_everywhere(flags[rank], info, torch.device("cpu"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(("flags", "expected"), [([True, True], True), ([True, False], False), ([False, False], False)])
def test_processes_agree_on_bf16_only_where_every_device_has_it(flags, expected):
    # Mixed hardware: bf16 by default only if every process computes it natively, and all then decide alike.
    port = processes.free_port()
    results = mp.Manager().dict()
    mp.spawn(_vote, args=(port, flags, results), nprocs=len(flags))
    assert [results[rank] for rank in range(len(flags))] == [expected] * len(flags)


def _start(image_folder, out, *extra):
    # A process group of its own, so that the test can signal all of it as a terminal's Ctrl-C does.
    cmd = [sys.executable, "-m", "googlenet", "train", "--data", str(image_folder), "--out", str(out)]
    cmd += ["--batch-size", "8", "--img-size", "32", "--workers", "0", "--device", "cpu", "--processes", "2", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env, process_group=0)


def test_ctrl_c_stops_every_process_and_the_run_is_saved(image_folder, tmp_path):
    run = tmp_path / "run"
    proc = _start(image_folder, run, "--epochs", "1000")
    deadline = time.monotonic() + 300
    while not (run / "metrics.jsonl").is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)  # the parent and both processes, as from the terminal
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-3000:]
    assert "stopped by signal" in stderr and "Traceback" not in stderr
    epochs = len((run / "metrics.jsonl").read_text().splitlines())
    assert read_checkpoint(run / "checkpoint_last.pt")["train_state"]["epoch"] + 1 >= epochs


def test_one_failing_process_stops_the_others(image_folder, tmp_path):
    # The folder holds a run: the first process refuses it, and the second, already waiting for the first
    # in a collective, must not be left waiting forever.
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n')
    proc = _start(image_folder, run, "--epochs", "1")
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1
    assert "holds a run" in stderr
