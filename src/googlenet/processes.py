"""`googlenet train --processes N`: N training processes that share this machine's CPU cores.

Why several processes on one CPU: on small inputs one thread per process loses less to synchronisation than
two threads splitting every operation (measured in docs/training.md). The global batch and the random draws
stay those of one process, and so does the arithmetic of the paper variant (tests/test_distributed.py);
BatchNorm normalises each process's part of the batch.

Why not torchrun, which starts processes the same way: its agent moves the workers into process groups of
their own, relays a Ctrl-C and kills any still running 30 s later, whether or not a slow step has finished and the
run has saved. Started here, the processes stay in the terminal's process group, so a Ctrl-C reaches each of
them once, directly, and they stop as a single run stops (they save, exit 130). This process only waits: it
relays SIGTERM, and stops the others when one fails, since they would otherwise wait forever in their next
all-reduce.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

log = logging.getLogger("googlenet")

STOPPED = {128 + signal.SIGINT, 128 + signal.SIGTERM}  # exit statuses of a run that stopped and saved


def launched() -> bool:
    """Whether this process is one of several already (started here, by torchrun or a cluster launcher)."""
    return "WORLD_SIZE" in os.environ


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def start_processes(processes: int, device: str, argv: list[str]) -> int:
    """Run ``googlenet <argv>`` as ``processes`` processes of one training run; their exit status."""
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        raise ValueError(
            "--processes shares a CPU's cores; on GPUs start one process per GPU: "
            "torchrun --nproc-per-node=GPUS -m googlenet train ..."
        )
    cores = usable_cores()
    if processes > cores:
        raise ValueError(f"--processes {processes} is more than the {cores} cores this process may use")
    env = {
        "OMP_NUM_THREADS": str(cores // processes),  # unless the user set it
        **os.environ,
        **{"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(processes)},
        "LOCAL_WORLD_SIZE": str(processes),
    }
    log.info("training in %d processes of %s thread(s) each", processes, env["OMP_NUM_THREADS"])
    command = [sys.executable, "-m", "googlenet", *argv]
    children = [
        subprocess.Popen(command, env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}) for rank in range(processes)
    ]
    with relayed_signals(children):
        return wait_for(children)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def relayed_signals(children: list[subprocess.Popen]) -> Iterator[None]:
    """Ctrl-C ignored here (the terminal sends it to the children too); SIGTERM passed on to them."""

    def relay(signum: int, frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN)}
    previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, relay)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def wait_for(children: list[subprocess.Popen], poll_s: float = 0.2) -> int:
    """0 when all succeed; a stopped run's 130 / 143; else the first failure's status, the others stopped."""
    while True:
        codes = [child.poll() for child in children]
        failed = [code for code in codes if code is not None and code != 0 and code not in STOPPED]
        if failed:
            stop(children)
            return failed[0] if failed[0] > 0 else 128 - failed[0]  # -N: killed by signal N
        if all(code is not None for code in codes):
            return max(codes)
        time.sleep(poll_s)


def stop(children: list[subprocess.Popen], grace_s: float = 30) -> None:
    """SIGTERM (they save and stop), then SIGKILL for any still there after ``grace_s``: one blocked in an
    all-reduce with a dead peer does not reach its next step."""
    for child in children:
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + grace_s
    for child in children:
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
