"""`googlenet train`: build a run from its :class:`~googlenet.train_config.TrainConfig`, then drive its epochs.

The pieces live in modules of their own: the config (:mod:`train_config`), the data (:mod:`train_data`),
the schedule (:mod:`schedule`), the loops (:mod:`loop`), EMA (:mod:`ema`), progress and stopping
(:mod:`progress`, :mod:`stopping`), the run folder (:mod:`run_folder`) and the checkpoint layout
(:mod:`checkpoint`). Only this module reads the config as a whole. Works under torchrun (DDP).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from googlenet import config as C
from googlenet import distributed as D
from googlenet import finetune
from googlenet.budget import TimeBudget
from googlenet.checkpoint import build_checkpoint, checkpoint_file, read_checkpoint
from googlenet.config import ConfigError
from googlenet.data import DataError
from googlenet.devices import has_native_bf16, resolve_device
from googlenet.ema import EMA
from googlenet.limits import check_fits
from googlenet.loop import EpochTotals, StepContext, evaluate, train_one_epoch
from googlenet.model import GoogLeNet, create_model
from googlenet.progress import Progress
from googlenet.run_folder import LAST, RunFolder
from googlenet.schedule import img_size_at, lr_factor
from googlenet.stopping import StopFlag, stop_check
from googlenet.train_config import TrainConfig
from googlenet.train_data import build_train_data

log = logging.getLogger("googlenet")


@dataclass
class TrainState:
    """Where a run stands: ``step`` steps of epoch ``epoch`` done (0 at an epoch's start), the sums of that
    partial epoch, and its image size (with a time budget, chosen by the minutes spent when it started)."""

    epoch: int = 0
    step: int = 0
    global_step: int = 0
    best_top1: float = -1.0
    partial: EpochTotals = field(default_factory=EpochTotals)
    img_size: int | None = None


# What may differ on --resume: how the run is executed, not what it computes. Anything else (batch size,
# model, data, schedule, augmentation, seed...) would silently change the resumed schedule or data order.
# Settings of speed, not of the result: a run resumed on another machine may need another precision.
RESUMABLE_CHANGES = frozenset(
    {"resume", "out", "workers", "device", "processes", "bf16", "log_every", "compile", "compile_mode"}
)


def resume_config(resume: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Config values of the run being resumed, with the flags given now on top; the run stays in the folder
    it is resumed from (a copied or moved run never writes to its original's folder)."""
    path = checkpoint_file(resume, LAST)
    saved = read_checkpoint(path)["config"]
    folder = Path(resume) if Path(resume).is_dir() else path.parent
    if "out" in overrides and Path(overrides["out"]).resolve() != folder.resolve():
        raise ConfigError(f"--resume continues in {folder}; drop --out {overrides['out']}")
    if overrides.get("overwrite"):
        raise ConfigError("--resume and --overwrite contradict each other; choose one")
    if overrides.get("init"):
        raise ConfigError("--resume restores the run's own weights; drop --init (it starts a new run from others)")
    changed = sorted(k for k, v in overrides.items() if k not in RESUMABLE_CHANGES and saved.get(k) != v)
    if changed:
        flags = ", ".join(f"--{k.replace('_', '-')} {overrides[k]} (the run has {saved.get(k)})" for k in changed)
        raise ConfigError(f"cannot change on --resume: {flags}; start a new run to change them")
    return {**saved, **overrides, "resume": resume, "out": str(folder), "overwrite": False}


def param_groups(model: nn.Module, weight_decay: float, decay_bias_and_norm: bool) -> list[dict]:
    """Weight decay on conv/linear weights only, unless asked otherwise (biases and BN scales are 1-D)."""
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.dim() > 1 or decay_bias_and_norm else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def run(cfg: TrainConfig) -> dict[str, Any]:
    """Train as ``cfg`` says; returns the last epoch's metrics."""
    dist = D.init_distributed(cfg.device)
    try:
        claim = RunFolder(cfg.out).claim(bool(cfg.resume), cfg.overwrite) if dist.is_main else nullcontext()
        with claim:
            return Trainer(cfg, dist).run()
    finally:
        D.shutdown(dist)


class Trainer:
    """One run: its data, model, optimizer, EMA and position, and the folder it writes."""

    def __init__(self, cfg: TrainConfig, dist: D.DistInfo) -> None:
        if cfg.batch_size % dist.world:
            raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by the {dist.world} processes")
        self.cfg, self.dist = cfg, dist
        self.device = resolve_device(cfg.device, dist.local_rank)
        largest = max(s for s in (cfg.img_size, cfg.img_size_start, cfg.eval_img_size) if s)
        check_fits(cfg.model, largest, cfg.batch_size // dist.world, self.device, "--img-size")
        self.folder = RunFolder(cfg.out)
        resumed = read_checkpoint(checkpoint_file(cfg.resume, LAST)) if cfg.resume else None
        self.init = finetune.read_init(cfg, resumed)  # None unless fine-tuning (--init)
        aux_logits, why = finetune.resolve_aux_logits(cfg, self.init)
        # The config records the choices made, so that a resumed run builds the same heads and precision.
        self.cfg = cfg = dataclasses.replace(cfg, aux_logits=aux_logits, bf16=self._choose_bf16())
        self._note(why)
        torch.manual_seed(cfg.seed)
        self.data = build_train_data(cfg, self.device, dist, finetune.normalisation(self.init))
        self.model = self._build_model()
        self.frozen_bn, why = finetune.freeze(self.model, cfg.freeze, self.new_modules)
        self._note(why)
        groups = param_groups(self.model, cfg.weight_decay, cfg.decay_bias_and_norm)
        self.optimizer = torch.optim.SGD(
            finetune.split_groups(groups, self.model, self.new_modules, cfg.head_lr_mult),
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
        )
        self.ema = EMA(self.model, cfg.ema_decay) if cfg.ema else None
        self.steps_per_epoch = self.data.train.num_batches()
        if self.steps_per_epoch == 0:
            raise DataError(f"{len(self.data.train)} training images make no full batch of {cfg.batch_size}")
        self.state = TrainState()
        if cfg.resume:
            self.state = self._restore(checkpoint_file(cfg.resume, LAST), resumed)
        else:
            # Seed per process after building the model so all ranks start from the same weights.
            torch.manual_seed(cfg.seed + 1000 * dist.rank)
        self.train_model = self._wrap(self.model)
        self.metrics: dict[str, Any] = {}
        saved_budget = resumed["train_state"].get("budget") if resumed else None
        self.budget = TimeBudget(cfg.time_budget, dist, self.device, saved_budget) if cfg.time_budget else None

    def _build_model(self) -> GoogLeNet:
        cfg = self.cfg
        model = create_model(
            cfg.model,
            num_classes=len(self.data.classes),
            aux_logits=cfg.aux_logits,
            dropout=cfg.dropout,
            aux_dropout=cfg.aux_dropout,
            **finetune.input_flags(self.init),
        )
        self.new_modules, lines = finetune.start_from(model, self.init, self.data.classes)
        for line in lines:
            self._note(line)
        layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
        return model.to(self.device, memory_format=layout)

    def _choose_bf16(self) -> bool:
        """bf16 autocast where asked, else where the device computes bf16 natively (it is slower emulated)."""
        native = has_native_bf16(self.device)
        if self.cfg.bf16 is None:
            # Every process must train in one precision; an emulated one would hold all the others back.
            everywhere = D.holds_everywhere(native, self.dist, self.device)
            if not native:
                self._note("training in float32: this device has no native bf16 (see --bf16)")
            elif not everywhere:
                self._note("training in float32: not every process's device computes bf16 natively (see --bf16)")
            return everywhere
        if self.cfg.bf16 and not native and self.dist.is_main:
            log.warning("bf16 autocast is emulated on this device, many times slower than float32; try --no-bf16")
        return self.cfg.bf16

    def _note(self, line: str | None) -> None:
        if line and self.dist.is_main:
            log.info(line)

    def _wrap(self, model: nn.Module) -> nn.Module:
        """The module the loop trains: DDP under torchrun, compiled where asked."""
        if self.dist.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if self.cfg.compile:
            model = torch.compile(model, mode=self.cfg.compile_mode)
        return model

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.cfg.bf16 else nullcontext()

    def run(self) -> dict[str, Any]:
        if self.dist.is_main:
            self._open_folder()
        with StopFlag() as flag:
            ctx = StepContext(
                self.optimizer,
                lambda s: self.cfg.lr * lr_factor(s, self.steps_per_epoch, self.cfg, self._spent()),
                self.cfg.grad_clip,
                self.cfg.aux_weight,
                self.cfg.label_smoothing,
                self._autocast,
                self.cfg.channels_last,
                self.ema,
                stop_check(flag, self.dist, self.device),
                after_train_mode=finetune.keep_in_eval(self.frozen_bn),
                budget_spent=self.budget.tick if self.budget else None,
            )
            for epoch in self._epochs():
                self._run_epoch(epoch, ctx, flag)
        return self.metrics

    def _spent(self) -> float | None:
        """The fraction of the time budget spent, or None for a run counted in epochs."""
        return self.budget.fraction if self.budget else None

    def _epochs(self) -> Iterator[int]:
        """The epochs still to run: up to ``epochs``, or until the time budget is spent."""
        if self.budget is None:
            yield from range(self.state.epoch, self.cfg.epochs)
            return
        for epoch in itertools.count(self.state.epoch):
            if self.budget.spent:
                return
            yield epoch

    def _open_folder(self) -> None:
        cfg, data = self.cfg, self.data
        self.folder.create()
        self.folder.write_config(C.to_dict(cfg))
        self.folder.truncate_metrics(self.state.epoch)
        log.info(
            "training %s on %s (%d train / %d val images, %d classes) on %s x%d; run folder %s",
            *(cfg.model, cfg.data, len(data.train), len(data.val), len(data.classes)),
            *(self.device, self.dist.world, self.folder.path),
        )

    def _run_epoch(self, epoch: int, ctx: StepContext, flag: StopFlag) -> None:
        cfg, state = self.cfg, self.state
        skip = state.step if epoch == state.epoch else 0
        # A resumed epoch keeps the size it started with (with a budget, the minutes spent have moved on).
        size = state.img_size if skip and state.img_size else img_size_at(epoch, cfg, self._spent())
        state.img_size = size
        main = self.dist.is_main
        total = None if self.budget else cfg.epochs
        progress = Progress(self.steps_per_epoch - skip, epoch + 1, total, cfg.batch_size, cfg.log_every, main)
        t0 = time.perf_counter()
        batches = self.data.train.batches(epoch, size, skip)
        result = train_one_epoch(self.train_model, batches, ctx, state.global_step, progress)
        progress.close()
        state.global_step = result.global_step
        # Totals of this epoch so far, including the part done before an interruption.
        done = (state.partial if skip else EpochTotals()) + result.totals
        if result.interrupted:
            self._save_interrupted(epoch, skip + result.steps, done)
            raise SystemExit(128 + flag.signum)
        seconds = time.perf_counter() - t0
        eval_model = self.ema.model if self.ema else self.model
        # Validation in full precision: on an H100, bf16 moved googlenet_bn's top-1 by 0.5 points against
        # `googlenet eval`; the reported number must be the model's, not the precision's.
        val_batches = self.data.val.batches(epoch, cfg.eval_img_size or size)
        val = evaluate(eval_model, val_batches, nullcontext, cfg.channels_last, self.dist)
        self._finish_epoch(epoch, size, done, val, seconds, t0)
        if self.budget:
            self.budget.reserve(time.perf_counter() - t0 - seconds)

    def _finish_epoch(self, epoch: int, size: int, done: EpochTotals, val: dict, seconds: float, t0: float) -> None:
        """Sum the epoch over all processes, then save, record and log it (main process)."""
        sums = torch.tensor(
            [done.loss_sum, done.samples, done.bad_files, *done.per_class], dtype=torch.float64, device=self.device
        )
        loss_sum, samples, bad_files, *per_class = D.all_reduce_sum(sums, self.dist).tolist()
        if bad_files:
            self._check_every_class_trained(epoch, per_class)
        self.metrics = {
            "epoch": epoch + 1,
            "lr": self.optimizer.param_groups[0]["lr"],
            "img_size": size,
            "train_loss": loss_sum / max(samples, 1),
            **val,
            "images_per_s": samples / seconds,
            "seconds": seconds,
            "bad_files": int(bad_files),
        }
        improved = val["val_top1"] > self.state.best_top1
        self.state.best_top1 = max(self.state.best_top1, val["val_top1"])
        if not self.dist.is_main:
            return
        self.folder.save_last(self._checkpoint(epoch + 1, 0))
        if improved:
            self.folder.mark_last_as_best()
        # Training + validation + checkpoints: what an epoch costs on the clock.
        self.folder.append_metrics({**self.metrics, "wall_s": time.perf_counter() - t0})
        m = self.metrics
        budget = f" ({self.budget.fraction:.0%} of the time budget)" if self.budget else f"/{self.cfg.epochs}"
        log.info(
            "epoch %d%s  train_loss %.4f  val_loss %.4f  top1 %.2f%%  top5 %.2f%%  %.0f img/s  %.1fs%s",
            *(epoch + 1, budget, m["train_loss"], m["val_loss"], m["val_top1"], m["val_top5"]),
            *(m["images_per_s"], seconds),
            f"  ({m['bad_files']} unreadable images skipped)" if m["bad_files"] else "",
        )

    def _check_every_class_trained(self, epoch: int, per_class: list[float]) -> None:
        """Unreadable files are skipped, but a class none of whose images could be read would train a model
        that never predicts it while reporting success: refuse that, naming the class."""
        empty = [name for name, n in zip(self.data.classes, per_class) if n == 0]
        if len(empty) == len(self.data.classes):
            raise DataError(f"epoch {epoch + 1}: none of its images could be read (see the warnings above)")
        if empty:
            raise DataError(f"epoch {epoch + 1}: no readable image of class {', '.join(map(repr, empty[:5]))}")

    def _save_interrupted(self, epoch: int, step: int, done: EpochTotals) -> None:
        if not self.dist.is_main:
            return
        self.folder.save_last(self._checkpoint(epoch, step, partial=done))
        log.info(
            "stopped by signal at epoch %d step %d; saved %s (continue with --resume %s)",
            *(epoch + 1, step, self.folder.last, self.folder.path),
        )

    def _checkpoint(self, epoch: int, step: int, partial: EpochTotals | None = None) -> dict[str, Any]:
        """The checkpoint of the run at ``step`` steps into ``epoch``: the EMA weights where kept, and the
        state to resume."""
        model, ema, device = self.model, self.ema, self.device
        train_state = {
            "model": model.state_dict() if ema else None,
            "optimizer": self.optimizer.state_dict(),
            "ema_updates": ema.updates if ema else 0,
            "epoch": epoch,
            "step": step,
            "global_step": self.state.global_step,
            "best_top1": self.state.best_top1,
            "partial": partial.to_dict() if partial is not None else None,
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "new_modules": self.new_modules,  # the heads --init made anew, trained with --head-lr-mult
            "img_size": self.state.img_size,
            "budget": self.budget.state_dict() if self.budget else None,
        }
        return build_checkpoint(
            model,
            self.data.classes,
            self.data.preprocessing,
            weights=(ema.model if ema else model).state_dict(),
            config=C.to_dict(self.cfg),
            metrics=self.metrics or None,
            train_state=train_state,
        )

    def _restore(self, path: Path, ckpt: dict[str, Any]) -> TrainState:
        ts = ckpt.get("train_state")
        if ts is None:
            raise ConfigError(f"{path}: holds no training state to resume (an imported or exported model?)")
        self.model.load_state_dict(ts["model"] if ts["model"] is not None else ckpt["model"])
        self.optimizer.load_state_dict(ts["optimizer"])
        if self.ema is not None:
            self.ema.model.load_state_dict(ckpt["model"])
            self.ema.updates = ts["ema_updates"]
        torch.set_rng_state(ts["rng_cpu"])
        if ts["rng_cuda"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(ts["rng_cuda"], self.device)
        log.info("resuming from %s at epoch %d step %d", path, ts["epoch"] + 1, ts["step"])
        self.metrics = ckpt.get("metrics") or {}
        partial = EpochTotals.from_dict(ts.get("partial"))
        return TrainState(ts["epoch"], ts["step"], ts["global_step"], ts["best_top1"], partial, ts.get("img_size"))
