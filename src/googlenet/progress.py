"""Progress of a training epoch: a live line on a terminal, log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time

from torch import Tensor

log = logging.getLogger("googlenet")


class Progress:
    """A live line with images/s and ETA on a terminal (twice a second); log lines every ``every`` steps otherwise.

    Rates count the global batch, so they are the whole job's under torchrun. Reading the loss syncs with
    the device, hence the throttling.
    """

    def __init__(self, total_steps: int, epoch: int, epochs: int | None, batch: int, every: int, enabled: bool) -> None:
        self.total, self.epoch, self.epochs, self.batch, self.every = total_steps, epoch, epochs, batch, every
        self.enabled, self.tty = enabled, sys.stderr.isatty()
        self.start = self.last_print = time.perf_counter()

    def __call__(self, steps: int, samples: int, loss_sum: Tensor) -> bool:
        at_log_point = steps % self.every == 0
        now = time.perf_counter()
        if not self.enabled or not (at_log_point or (self.tty and now - self.last_print >= 0.5)):
            return at_log_point
        self.last_print = now
        elapsed = max(now - self.start, 1e-9)
        eta = (self.total - steps) * elapsed / steps
        line = (
            f"epoch {self.epoch}{f'/{self.epochs}' if self.epochs else ''} step {steps}/{self.total} "
            f"loss {loss_sum.item() / max(samples, 1):.4f} {steps * self.batch / elapsed:,.0f} img/s ETA {eta:,.0f}s"
        )
        if self.tty:
            print("\r" + line.ljust(100), end="", file=sys.stderr, flush=True)
        else:
            log.info(line)
        return at_log_point

    def close(self) -> None:
        if self.enabled and self.tty:
            print(file=sys.stderr)
