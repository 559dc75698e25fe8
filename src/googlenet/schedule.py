"""The learning-rate schedule and progressive resizing: functions of the step or epoch and the config, or,
with a time budget, of the fraction of it spent (:mod:`googlenet.budget`)."""

from __future__ import annotations

import math

from googlenet.model import MIN_INPUT_SIZE
from googlenet.train_config import TrainConfig

# Progressive resizing reaches the final size by this fraction of the epochs (or of the time budget).
RAMP_FRACTION = 0.75


def lr_factor(step: int, steps_per_epoch: int, cfg: TrainConfig, spent: float | None = None) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based); ``spent``: the fraction of
    the time budget spent, where the run has one."""
    epoch = step / steps_per_epoch
    if spent is not None:
        # The decay follows the budget; the warm-up still counts steps and caps the start, so the two meet
        # without a jump however much of the budget the warm-up took.
        warm = (step + 1) / (cfg.warmup_epochs * steps_per_epoch) if epoch < cfg.warmup_epochs else 1.0
        return min(warm, _decay(spent, cfg.schedule))
    if epoch < cfg.warmup_epochs:
        return (step + 1) / (cfg.warmup_epochs * steps_per_epoch)
    if cfg.schedule == "step":  # paper: x0.96 every 8 epochs
        return cfg.step_gamma ** math.floor(epoch / cfg.step_epochs)
    return _decay((epoch - cfg.warmup_epochs) / max(cfg.epochs - cfg.warmup_epochs, 1e-9), cfg.schedule)


def _decay(t: float, schedule: str) -> float:
    t = min(1.0, max(0.0, t))
    return 0.5 * (1 + math.cos(math.pi * t)) if schedule == "cosine" else 1 - t


def img_size_at(epoch: int, cfg: TrainConfig, spent: float | None = None) -> int:
    """Progressive resizing (FFCV): a linear ramp from img_size_start to img_size over 75% of the epochs, or
    of the time budget (``spent``: the fraction of it spent when the epoch starts)."""
    if cfg.img_size_start is None:
        return cfg.img_size
    if spent is not None:
        t = min(1.0, spent / RAMP_FRACTION)
    else:
        t = min(1.0, epoch / max(1, int(RAMP_FRACTION * cfg.epochs) - 1))
    size = cfg.img_size_start + t * (cfg.img_size - cfg.img_size_start)
    return max(MIN_INPUT_SIZE[cfg.model], int(round(size / 8) * 8))
