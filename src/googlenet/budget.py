"""A wall-clock budget for a training run (`--time-budget MINUTES`).

The same machine can run the same epochs 1.5x faster in one hour than in the next, so an epoch count does
not say when a run ends. With a budget, the fraction of it spent replaces the fraction of epochs done in
the schedule (learning-rate decay, progressive resizing), and training stops once it is spent: the run ends
annealed and on time however fast the machine happens to be (budgeted training, Li et al., ICLR 2020).

What counts: the run's own wall time from its first step (training, validation, checkpoints), summed over
resumes; the final validation and checkpoint are reserved out of it, estimated by the last epoch's.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import torch

from googlenet import distributed as D
from googlenet.stopping import STOP_CHECK_STEPS


def _now() -> float:
    return time.perf_counter()


class TimeBudget:
    """The fraction of a wall-clock budget spent, the same on every process, rising step by step to 1."""

    def __init__(self, minutes: float, dist: D.DistInfo, device: torch.device, state: dict | None = None) -> None:
        state = state or {}
        self.budget_s = 60.0 * minutes
        self.spent_before_s = float(state.get("spent_s", 0.0))
        self.reserve_s = float(state.get("reserve_s", 0.0))  # the final validation and checkpoint
        self.fraction = float(state.get("fraction", 0.0))
        self.dist, self.device = dist, device
        self._calls = itertools.count(1)
        self._start = _now()

    @property
    def spent(self) -> bool:
        return self.fraction >= 1.0

    def spent_s(self) -> float:
        return self.spent_before_s + _now() - self._start

    def tick(self) -> bool:
        """Called after every training step: updates the fraction; True once the training time is spent.

        Under torchrun every process must use the same learning rate at the same step, so the fraction is
        averaged over processes at the steps where they agree on stop requests, and held in between (each
        average waits for the device)."""
        if self.dist.world > 1 and next(self._calls) % STOP_CHECK_STEPS:
            return self.spent
        local = self.spent_s() / max(self.budget_s - self.reserve_s, 1e-9)
        agreed = D.all_reduce_sum(torch.tensor([local], device=self.device), self.dist).item() / self.dist.world
        # Never backwards: a smaller reserve later must not raise the learning rate again.
        self.fraction = max(self.fraction, min(agreed, 1.0))
        return self.spent

    def reserve(self, seconds: float) -> None:
        """What the last validation and checkpoint took: kept back for the final ones."""
        self.reserve_s = min(seconds, 0.5 * self.budget_s)

    def state_dict(self) -> dict[str, Any]:
        return {"spent_s": self.spent_s(), "reserve_s": self.reserve_s, "fraction": self.fraction}
