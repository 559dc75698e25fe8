"""Stopping a run cleanly: SIGTERM / Ctrl-C finish the step, the run saves and exits with 128 + signal."""

from __future__ import annotations

import contextlib
import itertools
import signal
from collections.abc import Callable
from typing import Any

import torch

from googlenet import distributed as D

# Under torchrun, how often all processes agree whether a stop (SIGTERM, Ctrl-C) was requested. Each check
# waits for the device; a preempted job's grace period (tens of seconds) spans many more steps than this.
STOP_CHECK_STEPS = 20


class StopFlag:
    """SIGTERM / Ctrl-C ask the loop to stop after the current step and save; a second Ctrl-C aborts."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: no handler, no graceful stop
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def stop_check(flag: StopFlag, dist: D.DistInfo, device: torch.device) -> Callable[[], bool]:
    """A function the loop calls after every step: whether to stop now (every process at the same step)."""
    if dist.world == 1:
        return lambda: flag.requested
    calls = itertools.count(1)

    def agreed() -> bool:
        # Every process must stop at the same step, which takes an all-reduce whose result the host has to
        # wait for (a sync with the device): done every STOP_CHECK_STEPS steps, not after each one.
        if next(calls) % STOP_CHECK_STEPS:
            return False
        requested = torch.tensor([float(flag.requested)], device=device)
        return bool(D.all_reduce_sum(requested, dist).item() > 0)

    return agreed
