"""The training and validation loops. They receive objects (model, batches, optimizer...), never the config."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from googlenet import distributed as D
from googlenet.checkpoint import unwrap
from googlenet.ema import EMA
from googlenet.model import GoogLeNetOutputs

log = logging.getLogger("googlenet")

Batches = Iterable[tuple[Tensor, Tensor, list[str]]]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def googlenet_loss(outputs: Tensor | GoogLeNetOutputs, labels: Tensor, aux_weight: float, smoothing: float) -> Tensor:
    """Cross-entropy of the main head plus ``aux_weight`` times that of each auxiliary head (paper: 0.3)."""
    if isinstance(outputs, GoogLeNetOutputs):
        loss = F.cross_entropy(outputs.logits.float(), labels, label_smoothing=smoothing)
        for aux in (outputs.aux_4a, outputs.aux_4d):
            loss = loss + aux_weight * F.cross_entropy(aux.float(), labels, label_smoothing=smoothing)
        return loss
    return F.cross_entropy(outputs.float(), labels, label_smoothing=smoothing)


def topk_correct(logits: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> Tensor:
    """Number of samples whose label is among the top k scores, for each k (k capped at the class count).

    A tensor on the logits' device, so that summing it over batches never waits for the device.
    """
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hits = top == labels.unsqueeze(1)
    return torch.stack([hits[:, : min(k, kmax)].any(dim=1).sum() for k in ks])


@dataclass
class StepContext:
    """What a training step needs besides model and data."""

    optimizer: torch.optim.Optimizer
    lr_of_step: Callable[[int], float]  # global step -> learning rate
    grad_clip: float | None
    aux_weight: float
    smoothing: float
    autocast: Callable[[], AbstractContextManager]
    channels_last: bool
    ema: EMA | None
    stop: Callable[[], bool]  # whether a stop was requested
    # Called after model.train() each epoch: puts layers that must not train (frozen BatchNorm) back in eval.
    after_train_mode: Callable[[], None] | None = None
    # With a time budget, called after every step: whether it is spent (the epoch then ends, not interrupted).
    budget_spent: Callable[[], bool] | None = None


@dataclass
class EpochTotals:
    """Sums over (part of) an epoch; a run interrupted mid-epoch stores them to continue the sums."""

    loss_sum: float = 0.0
    samples: int = 0
    bad_files: int = 0
    per_class: list[int] = field(default_factory=list)  # images trained on, by label

    def __add__(self, other: EpochTotals) -> EpochTotals:
        n = max(len(self.per_class), len(other.per_class))
        per_class = [a + b for a, b in zip(_padded(self.per_class, n), _padded(other.per_class, n))]
        return EpochTotals(
            self.loss_sum + other.loss_sum, self.samples + other.samples, self.bad_files + other.bad_files, per_class
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> EpochTotals:
        if not d:
            return cls()
        return cls(float(d["loss_sum"]), int(d["samples"]), int(d["bad_files"]), list(d.get("per_class", [])))


def _padded(counts: list[int], n: int) -> list[int]:
    return counts + [0] * (n - len(counts))


@dataclass
class EpochResult:
    """What :func:`train_one_epoch` did: its totals, steps taken, the global step after it, and whether a
    stop request ended it early."""

    totals: EpochTotals
    steps: int
    global_step: int
    interrupted: bool


def _step(model: nn.Module, images: Tensor, labels: Tensor, ctx: StepContext, params: list, use_aux: bool) -> Tensor:
    """One optimizer step on a batch; returns the loss (on the device, not synced)."""
    with ctx.autocast():
        outputs = model(images, with_aux=use_aux)
    loss = googlenet_loss(outputs, labels, ctx.aux_weight, ctx.smoothing)
    ctx.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if ctx.grad_clip is not None:  # foreach implementation: no host sync
        torch.nn.utils.clip_grad_norm_(params, ctx.grad_clip, foreach=True)
    ctx.optimizer.step()
    if ctx.ema is not None:
        ctx.ema.update(model)
    return loss.detach()


def train_one_epoch(model: nn.Module, batches: Batches, ctx: StepContext, global_step: int, progress) -> EpochResult:
    """Train over ``batches``; stop early (``interrupted``) when ``ctx.stop()`` says so, or when the time
    budget is spent (then the epoch ends as if complete).

    ``progress(steps, samples, loss_sum)`` is called after every step and returns True at its log points,
    where the loss is checked for divergence (reading it waits for the device, hence not every step).
    """
    model.train()
    if ctx.after_train_mode is not None:
        ctx.after_train_mode()
    use_aux = unwrap(model).aux1 is not None
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    per_class = torch.zeros(unwrap(model).config.num_classes, device=device, dtype=torch.int64)
    samples = steps = bad_files = 0
    interrupted = False
    params = [p for g in ctx.optimizer.param_groups for p in g["params"]]
    for images, labels, bad in batches:
        bad_files += len(bad)
        for msg in bad:
            log.warning("skipped unreadable image: %s", msg)
        for group in ctx.optimizer.param_groups:
            group["lr"] = ctx.lr_of_step(global_step) * group.get("lr_mult", 1.0)  # new heads may learn faster
        if len(images):
            if ctx.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            loss_sum += _step(model, images, labels, ctx, params, use_aux) * len(images)
            samples += len(images)
            per_class += torch.bincount(labels, minlength=len(per_class))
        global_step += 1
        steps += 1
        if progress(steps, samples, loss_sum):
            _check_finite(loss_sum, global_step)
        if ctx.stop():
            interrupted = True
            break
        if ctx.budget_spent is not None and ctx.budget_spent():
            break
    _check_finite(loss_sum, global_step)
    totals = EpochTotals(float(loss_sum), samples, bad_files, per_class.tolist())
    return EpochResult(totals, steps, global_step, interrupted)


def _check_finite(loss_sum: Tensor, step: int) -> None:
    if not torch.isfinite(loss_sum):
        raise TrainingDiverged(
            f"loss became {loss_sum.item()} at step {step}; stopping. The last good checkpoint is kept; "
            "try a lower --lr or a longer --warmup-epochs"
        )


@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches, autocast, channels_last: bool, dist: D.DistInfo) -> dict[str, float]:
    """Loss, top-1 and top-5 (percent) over ``batches``, summed over all processes."""
    model.eval()
    device = next(model.parameters()).device
    totals = torch.zeros(4, device=device, dtype=torch.float64)  # loss sum, top1, top5, count
    for images, labels, _ in batches:
        if not len(images):
            continue
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast():
            logits = model(images).float()
        loss = F.cross_entropy(logits, labels, reduction="sum").double()
        totals[0] += loss
        totals[1:3] += topk_correct(logits, labels)
        totals[3] += len(labels)
    loss, top1, top5, n = D.all_reduce_sum(totals, dist).tolist()
    n = max(n, 1)
    return {"val_loss": loss / n, "val_top1": 100 * top1 / n, "val_top5": 100 * top5 / n, "val_images": int(n)}
