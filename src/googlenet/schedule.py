"""The learning-rate schedule and progressive resizing: functions of the step or epoch and the config."""

from __future__ import annotations

import math

from googlenet.model import MIN_INPUT_SIZE
from googlenet.train_config import TrainConfig


def lr_factor(step: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based)."""
    epoch = step / steps_per_epoch
    if epoch < cfg.warmup_epochs:
        return (step + 1) / (cfg.warmup_epochs * steps_per_epoch)
    if cfg.schedule == "step":  # paper: x0.96 every 8 epochs
        return cfg.step_gamma ** math.floor(epoch / cfg.step_epochs)
    t = min(1.0, (epoch - cfg.warmup_epochs) / max(cfg.epochs - cfg.warmup_epochs, 1e-9))
    return 0.5 * (1 + math.cos(math.pi * t)) if cfg.schedule == "cosine" else 1 - t


def img_size_at(epoch: int, cfg: TrainConfig) -> int:
    """Progressive resizing (FFCV): a linear ramp from img_size_start to img_size over 75% of the epochs."""
    if cfg.img_size_start is None:
        return cfg.img_size
    ramp_end = max(1, int(0.75 * cfg.epochs) - 1)
    t = min(1.0, epoch / ramp_end)
    size = cfg.img_size_start + t * (cfg.img_size - cfg.img_size_start)
    return max(MIN_INPUT_SIZE[cfg.model], int(round(size / 8) * 8))
