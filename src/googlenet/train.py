"""`googlenet train`: the config, the schedule, the loop, and the run folder.

The loop functions receive objects (model, batch source, optimizer, ...), never the config; only
:func:`run` reads :class:`TrainConfig`. A run folder holds config.json, metrics.jsonl, checkpoint_last.pt,
checkpoint_best.pt and curves.png.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import logging
import math
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from googlenet import config as C
from googlenet import distributed as D
from googlenet.batches import Augmentation, FolderSource, InMemorySource, folder_crop_spec
from googlenet.checkpoint import link_checkpoint, read_checkpoint, save_checkpoint, unwrap
from googlenet.config import ConfigError
from googlenet.data import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RESIZE_RATIO,
    DataError,
    ImageFolderDataset,
    load_fashion_mnist,
)
from googlenet.files import replacing
from googlenet.model import MIN_INPUT_SIZE, GoogLeNet, GoogLeNetOutputs, create_model, list_models
from googlenet.pack import open_split

# Under torchrun, how often all processes agree whether a stop (SIGTERM, Ctrl-C) was requested. Each check
# waits for the device; a preempted job's grace period (tens of seconds) spans many more steps than this.
STOP_CHECK_STEPS = 20

log = logging.getLogger("googlenet")


def _f(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's modes


@dataclass
class TrainConfig:
    """Everything `googlenet train` reads. Defaults < recipe (--config) < flags."""

    model: str = _f("googlenet", "model variant", choices=list_models())
    data: str = _f(
        "fashion-mnist", "'fashion-mnist', a folder with train/<class>/* and val/, or one from `googlenet prepare`"
    )
    epochs: int = _f(10, "training epochs")
    batch_size: int = _f(128, "global batch size, split evenly across torchrun processes")
    img_size: int = _f(32, "training crop size in px (the final size with progressive resizing)")
    img_size_start: int | None = _f(None, "progressive resizing: first-epoch size, ramped to img_size by 75% of epochs")
    eval_img_size: int | None = _f(None, "validation crop size in px (default: img_size)")
    lr: float = _f(0.05, "peak learning rate for the global batch")
    momentum: float = _f(0.9, "SGD momentum")
    nesterov: bool = _f(False, "Nesterov momentum")
    weight_decay: float = _f(5e-4, "L2 weight decay")
    decay_bias_and_norm: bool = _f(False, "also decay biases and BatchNorm parameters")
    schedule: str = _f("cosine", "learning-rate schedule after warm-up", choices=["step", "cosine", "linear"])
    warmup_epochs: float = _f(0.0, "linear warm-up from 0 over this many epochs")
    step_epochs: float = _f(8.0, "step schedule: epochs between decays (paper: 8)")
    step_gamma: float = _f(0.96, "step schedule: multiplier per step (paper: 0.96, i.e. -4%)")
    label_smoothing: float = _f(0.0, "label smoothing of the cross-entropy")
    grad_clip: float | None = _f(None, "clip the global gradient norm to this (stabilises the BN-free network)")
    aux_logits: bool = _f(True, "train with the two auxiliary classifiers")
    aux_weight: float = _f(0.3, "weight of each auxiliary loss (paper: 0.3)")
    dropout: float | None = _f(None, "main-head dropout (default: the variant's, 0.4 paper / 0.2 bn)")
    aux_dropout: float = _f(0.7, "auxiliary-head dropout (paper: 0.7)")
    ema: bool = _f(False, "evaluate and save an exponential moving average of the weights (Polyak averaging)")
    ema_decay: float = _f(0.999, "EMA decay per optimizer step")
    crop: bool = _f(True, "random-resized crops (else plain resize)")
    crop_scale_min: float = _f(0.08, "smallest crop, as a fraction of the image area (paper: 0.08)")
    crop_ratio_max: float = _f(4 / 3, "largest crop aspect ratio; the smallest is its inverse (paper: 4/3)")
    hflip: bool = _f(True, "random horizontal mirror")
    photometric: float = _f(0.0, "brightness/contrast/saturation jitter strength (Howard); 0 = off")
    random_interpolation: bool = _f(False, "random resize interpolation per image (folder data; paper)")
    erase: float = _f(0.0, "random-erasing probability per image (Zhong et al. 2017); 0 = off")
    bf16: bool = _f(False, "bfloat16 autocast")
    channels_last: bool = _f(False, "channels-last memory format (faster convolutions on GPUs)")
    compile: bool = _f(False, "torch.compile the training model")
    compile_mode: str = _f(
        "default",
        "torch.compile mode; reduce-overhead replays the model's forward and backward as CUDA graphs",
        choices=list(COMPILE_MODES),
    )
    seed: int = _f(0, "random seed (data order, crops, initial weights)")
    device: str = _f("auto", "auto, cpu or cuda", choices=["auto", "cpu", "cuda"])
    workers: int = _f(4, "loader processes for folder data")
    decode_on_device: bool = _f(False, "folder data: workers only read files; decode (nvJPEG) and crop on the device")
    out: str = _f("runs/latest", "run folder")
    resume: str | None = _f(None, "checkpoint file or run folder to continue from")
    train_subset: int | None = _f(None, "use only this many training images (seeded choice)")
    val_subset: int | None = _f(None, "use only this many validation images (seeded choice)")
    log_every: int = _f(50, "steps between log lines when not on a terminal")

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (0 < self.crop_scale_min <= 1, "crop_scale_min must be in (0, 1]"),
            (self.crop_ratio_max >= 1, "crop_ratio_max must be >= 1"),
            (0 <= self.ema_decay < 1, "ema_decay must be in [0, 1)"),
            (0 <= self.erase <= 1, "erase must be in [0, 1]"),
            (self.log_every >= 1, "log_every must be >= 1"),
            (self.workers >= 0, "workers must be >= 0"),
            (self.momentum >= 0 and self.weight_decay >= 0, "momentum and weight_decay must be >= 0"),
            (self.warmup_epochs >= 0, "warmup_epochs must be >= 0"),
            (self.step_epochs > 0 and 0 < self.step_gamma <= 1, "step_epochs must be > 0, step_gamma in (0, 1]"),
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (self.grad_clip is None or self.grad_clip > 0, "grad_clip must be > 0"),
            (self.aux_weight >= 0, "aux_weight must be >= 0"),
            (all(0 <= p < 1 for p in (self.dropout or 0, self.aux_dropout)), "dropout probabilities must be in [0, 1)"),
            (self.photometric >= 0, "photometric must be >= 0"),
            (all(n is None or n >= 1 for n in (self.train_subset, self.val_subset)), "subsets must be >= 1 image"),
        ]
        for size_name in ("img_size", "img_size_start", "eval_img_size"):
            size = getattr(self, size_name)
            if size is not None and size < MIN_INPUT_SIZE[self.model]:
                checks.append(
                    (False, f"{size_name} {size} is below {self.model}'s minimum {MIN_INPUT_SIZE[self.model]}")
                )
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)

    def augmentation(self) -> Augmentation:
        return Augmentation(
            crop_scale=(self.crop_scale_min, 1.0) if self.crop else None,
            crop_ratio=(1 / self.crop_ratio_max, self.crop_ratio_max),
            hflip=self.hflip,
            photometric=self.photometric,
            random_interpolation=self.random_interpolation,
            erase=self.erase,
        )


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# ----------------------------------------------------------------------------------------------- schedule


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


# -------------------------------------------------------------------------------------------------- EMA


class EMA:
    """Exponential moving average of a model's weights and of its BatchNorm statistics.

    The statistics are averaged with the weights (as timm's ModelEmaV2 and ``AveragedModel(use_buffers=True)``
    do), not copied from the live model: averaged weights with the live model's statistics are a mismatched
    pair. Copying them (until session 6) cost googlenet_bn 0.28 points at the end of the `fashion-mnist-cpu`
    run (93.56% against 93.84% for the live model and 93.75% with statistics re-estimated for the averaged
    weights) and made its validation curve jump by up to 1.6 points between epochs.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(unwrap(model)).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0
        # Split once (tensors are updated in place, so the lists stay valid): floating-point buffers
        # (running_mean / running_var) are averaged with the weights, integer ones (num_batches_tracked) copied.
        self._is_float = [b.is_floating_point() for b in self.model.buffers()]
        self._averaged = list(self.model.parameters()) + self._buffers(self.model, floats=True)
        self._copied = self._buffers(self.model, floats=False)

    def _buffers(self, model: nn.Module, floats: bool) -> list[Tensor]:
        return [b for b, is_float in zip(model.buffers(), self._is_float, strict=True) if is_float == floats]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        # Short warm-up so the average is not dominated by the random initial weights.
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        src = unwrap(model)
        live = [p.detach() for p in src.parameters()] + self._buffers(src, floats=True)
        torch._foreach_lerp_(self._averaged, live, 1 - d)  # one fused update, not one kernel per tensor
        if self._copied:
            torch._foreach_copy_(self._copied, self._buffers(src, floats=False))


# ------------------------------------------------------------------------------------------------- loop


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
    lr_of_step: Any  # callable: global step -> learning rate
    grad_clip: float | None
    aux_weight: float
    smoothing: float
    autocast: Any  # callable returning a context manager
    channels_last: bool
    ema: EMA | None
    stop: Any  # callable: -> bool, a stop was requested


def train_one_epoch(model: nn.Module, batches, ctx: StepContext, global_step: int, progress) -> dict[str, Any]:
    """Train over ``batches``; stop early (returning ``interrupted``) when ``ctx.stop()`` says so.

    Returns:
        dict with loss_sum, samples, bad_files, steps, global_step, interrupted.
    """
    model.train()
    use_aux = unwrap(model).aux1 is not None
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    samples, steps, bad_files, interrupted = 0, 0, 0, False
    params = [p for g in ctx.optimizer.param_groups for p in g["params"]]
    for images, labels, bad in batches:
        bad_files += len(bad)
        for msg in bad:
            log.warning("skipped unreadable image: %s", msg)
        if ctx.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        for group in ctx.optimizer.param_groups:
            group["lr"] = ctx.lr_of_step(global_step)
        with ctx.autocast():
            outputs = model(images, with_aux=use_aux) if len(images) else None
        if outputs is not None:
            loss = googlenet_loss(outputs, labels, ctx.aux_weight, ctx.smoothing)
            ctx.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if ctx.grad_clip is not None:  # foreach implementation: no host sync
                torch.nn.utils.clip_grad_norm_(params, ctx.grad_clip, foreach=True)
            ctx.optimizer.step()
            if ctx.ema is not None:
                ctx.ema.update(model)
            loss_sum += loss.detach() * len(images)
            samples += len(images)
        global_step += 1
        steps += 1
        if progress(steps, samples, loss_sum):  # True at log points: check for divergence there
            _check_finite(loss_sum, global_step)
        if ctx.stop():
            interrupted = True
            break
    _check_finite(loss_sum, global_step)
    return dict(
        loss_sum=loss_sum,
        samples=samples,
        bad_files=bad_files,
        steps=steps,
        global_step=global_step,
        interrupted=interrupted,
    )


def _check_finite(loss_sum: Tensor, step: int) -> None:
    if not torch.isfinite(loss_sum):
        raise TrainingDiverged(
            f"loss became {loss_sum.item()} at step {step}; stopping. The last good checkpoint is kept; "
            "try a lower --lr or a longer --warmup-epochs"
        )


@torch.no_grad()
def evaluate(model: nn.Module, batches, autocast, channels_last: bool, dist: D.DistInfo) -> dict[str, float]:
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


# ------------------------------------------------------------------------------------------------ setup


def _subset(n: int, k: int | None, seed: int) -> Tensor | None:
    if k is None or k >= n:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + 12345))[:k].sort().values


def build_sources(cfg: TrainConfig, device: torch.device, dist: D.DistInfo):
    """(train source, val source, class names, preprocessing dict) for ``cfg.data``."""
    common = dict(seed=cfg.seed, rank=dist.rank, world=dist.world, device=device)
    aug = cfg.augmentation()
    if cfg.data == "fashion-mnist":
        (xtr, ytr), (xva, yva) = load_fashion_mnist("train"), load_fashion_mnist("test")
        if (s := _subset(len(xtr), cfg.train_subset, cfg.seed)) is not None:
            xtr, ytr = xtr[s], ytr[s]
        if (s := _subset(len(xva), cfg.val_subset, cfg.seed)) is not None:
            xva, yva = xva[s], yva[s]
        mean, std = FASHION_MNIST_MEAN, FASHION_MNIST_STD
        train = InMemorySource(xtr, ytr, batch_size=cfg.batch_size, train=True, mean=mean, std=std, aug=aug, **common)
        val = InMemorySource(xva, yva, batch_size=cfg.batch_size, train=False, mean=mean, std=std, **common)
        # Fashion-MNIST images are 28x28 grey: resized whole (no 256/224 margin), grey copied to R, G and B.
        preprocess = {"mean": list(mean), "std": list(std), "grayscale": True, "resize_ratio": 1.0}
        return train, val, list(FASHION_MNIST_CLASSES), preprocess
    root = Path(cfg.data)
    if not root.is_dir():
        raise DataError(f"--data {cfg.data!r}: not 'fashion-mnist' and not a folder")
    train_index = open_split(root, "train")  # a pack written by `googlenet prepare`, or the folder
    val_index = open_split(root, "val", train_index.classes)
    if (s := _subset(len(train_index.files), cfg.train_subset, cfg.seed)) is not None:
        train_index = train_index.subset(s.tolist())
    if (s := _subset(len(val_index.files), cfg.val_subset, cfg.seed)) is not None:
        val_index = val_index.subset(s.tolist())
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    folder = dict(
        batch_size=cfg.batch_size,
        mean=mean,
        std=std,
        workers=cfg.workers,
        decode_on_device=cfg.decode_on_device,
        **common,
    )
    train = FolderSource(ImageFolderDataset(train_index, folder_crop_spec(aug, True), cfg.seed), aug=aug, **folder)
    val = FolderSource(ImageFolderDataset(val_index, folder_crop_spec(aug, False), cfg.seed), **folder)
    preprocess = {"mean": list(mean), "std": list(std), "grayscale": False, "resize_ratio": RESIZE_RATIO}
    return train, val, train_index.classes, preprocess


def param_groups(model: nn.Module, weight_decay: float, decay_bias_and_norm: bool) -> list[dict]:
    """Weight decay on conv/linear weights only, unless asked otherwise (biases and BN scales are 1-D)."""
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.dim() > 1 or decay_bias_and_norm else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


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


class Progress:
    """A live line with images/s and ETA on a terminal (twice a second); log lines every ``every`` steps otherwise.

    Rates count the global batch, so they are the whole job's under torchrun. Reading the loss syncs with
    the device, hence the throttling.
    """

    def __init__(self, total_steps: int, epoch: int, epochs: int, batch: int, every: int, enabled: bool) -> None:
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
            f"epoch {self.epoch}/{self.epochs} step {steps}/{self.total} "
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


# -------------------------------------------------------------------------------------------------- run


def resume_config(resume: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Config values of the run being resumed, with the flags given now on top."""
    ckpt = read_checkpoint(_resume_path(resume))
    return {**ckpt["config"], **overrides, "resume": resume}


def _resume_path(resume: str) -> Path:
    path = Path(resume)
    return path / "checkpoint_last.pt" if path.is_dir() else path


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX) that oneDNN's convolutions use.

    Without them bf16 autocast is emulated and may well be slower than float32; with them it trained the paper
    variant 1.19x (32 px) and 1.48x (64 px) faster than float32 on this project's 2-core CPU (README, Results,
    CPU). The probes are torch's own (private, hence the fallback), the ones its compiler uses to pick kernels.
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def run(cfg: TrainConfig) -> dict[str, Any]:
    """Train as ``cfg`` says; returns the last epoch's metrics. Works under torchrun (DDP)."""
    dist = D.init_distributed(cfg.device)
    try:
        return _run(cfg, dist)
    finally:
        D.shutdown(dist)


def _run(cfg: TrainConfig, dist: D.DistInfo) -> dict[str, Any]:
    if cfg.batch_size % dist.world:
        raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by the {dist.world} processes")
    device = D.resolve_device(cfg.device, dist)
    if cfg.bf16 and device.type == "cpu" and dist.is_main and not cpu_has_native_bf16():
        log.warning("bf16 autocast on a CPU without AVX512-BF16 or AMX is emulated and may be slower; try --no-bf16")
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)
    train_src, val_src, classes, preprocess = build_sources(cfg, device, dist)

    model = create_model(
        cfg.model, num_classes=len(classes), aux_logits=cfg.aux_logits, dropout=cfg.dropout, aux_dropout=cfg.aux_dropout
    )
    model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    optimizer = torch.optim.SGD(
        param_groups(model, cfg.weight_decay, cfg.decay_bias_and_norm),
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
    )
    ema = EMA(model, cfg.ema_decay) if cfg.ema else None
    steps_per_epoch = train_src.num_batches()
    if steps_per_epoch == 0:
        raise DataError(f"{len(train_src)} training images make no full batch of {cfg.batch_size}")

    state = dict(epoch=0, step=0, global_step=0, best_top1=-1.0, partial=None)
    if cfg.resume:
        state = _restore(_resume_path(cfg.resume), model, optimizer, ema, device)
    else:
        # Seed per process after building the model so all ranks start from the same weights.
        torch.manual_seed(cfg.seed + 1000 * dist.rank)

    train_model: nn.Module = model
    if dist.world > 1:
        ids = [device.index] if device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if cfg.compile:
        train_model = torch.compile(train_model, mode=cfg.compile_mode)

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if cfg.bf16 else nullcontext()

    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(C.to_dict(cfg), indent=2) + "\n")
        _truncate_metrics(out / "metrics.jsonl", state["epoch"])
        log.info(
            "training %s on %s (%d train / %d val images, %d classes) on %s x%d; run folder %s",
            cfg.model,
            cfg.data,
            len(train_src),
            len(val_src),
            len(classes),
            device,
            dist.world,
            out,
        )

    def payload(epoch: int, step: int, global_step: int, best: float, metrics: dict | None) -> dict[str, Any]:
        weights = (ema.model if ema else model).state_dict()
        return {
            "model_config": model.config.to_dict(),
            "class_names": classes,
            "preprocess": {**preprocess, "img_size": cfg.eval_img_size or cfg.img_size},
            "model": weights,
            "config": C.to_dict(cfg),
            "metrics": metrics,
            "train_state": {
                "model": model.state_dict() if ema else None,
                "optimizer": optimizer.state_dict(),
                "ema_updates": ema.updates if ema else 0,
                "epoch": epoch,
                "step": step,
                "global_step": global_step,
                "best_top1": best,
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            },
        }

    metrics: dict[str, Any] = {}
    with StopFlag() as stop_flag:
        calls = itertools.count(1)

        def stop() -> bool:
            if dist.world == 1:
                return stop_flag.requested
            # Every process must stop at the same step, which takes an all-reduce whose result the host has
            # to wait for (a sync with the device): done every STOP_CHECK_STEPS steps, not after each one.
            if next(calls) % STOP_CHECK_STEPS:
                return False
            flag = torch.tensor([float(stop_flag.requested)], device=device)
            return bool(D.all_reduce_sum(flag, dist).item() > 0)

        ctx = StepContext(
            optimizer,
            lambda s: cfg.lr * lr_factor(s, steps_per_epoch, cfg),
            cfg.grad_clip,
            cfg.aux_weight,
            cfg.label_smoothing,
            autocast,
            cfg.channels_last,
            ema,
            stop,
        )
        global_step = state["global_step"]
        for epoch in range(state["epoch"], cfg.epochs):
            size = img_size_at(epoch, cfg)
            skip = state["step"] if epoch == state["epoch"] else 0
            progress = Progress(
                steps_per_epoch - skip, epoch + 1, cfg.epochs, cfg.batch_size, cfg.log_every, dist.is_main
            )
            t0 = time.perf_counter()
            stats = train_one_epoch(train_model, train_src.batches(epoch, size, skip), ctx, global_step, progress)
            progress.close()
            global_step = stats["global_step"]
            # Totals of this epoch so far, including the part done before an interruption.
            done = state["partial"] if skip else {"loss_sum": 0.0, "samples": 0, "bad_files": 0}
            done = {k: done[k] + float(stats[k]) for k in ("loss_sum", "samples", "bad_files")}
            if stats["interrupted"]:
                if dist.is_main:
                    ckpt = payload(epoch, skip + stats["steps"], global_step, state["best_top1"], metrics)
                    ckpt["train_state"]["partial"] = done
                    save_checkpoint(out / "checkpoint_last.pt", ckpt)
                    log.info(
                        "stopped by signal at epoch %d step %d; saved %s (continue with --resume %s)",
                        epoch + 1,
                        skip + stats["steps"],
                        out / "checkpoint_last.pt",
                        out,
                    )
                raise SystemExit(128 + stop_flag.signum)
            seconds = time.perf_counter() - t0
            eval_model = ema.model if ema else model
            # Validation in full precision: on the H100, bf16 moved googlenet_bn's top-1 by 0.5 points
            # against `googlenet eval`; the reported number must be the model's, not the precision's.
            val = evaluate(
                eval_model, val_src.batches(epoch, cfg.eval_img_size or size), nullcontext, cfg.channels_last, dist
            )
            counts = D.all_reduce_sum(
                torch.tensor(
                    [done["loss_sum"], done["samples"], done["bad_files"]], dtype=torch.float64, device=device
                ),
                dist,
            ).tolist()
            metrics = {
                "epoch": epoch + 1,
                "lr": optimizer.param_groups[0]["lr"],
                "img_size": size,
                "train_loss": counts[0] / max(counts[1], 1),
                **val,
                "images_per_s": counts[1] / seconds,
                "seconds": seconds,
                "bad_files": int(counts[2]),
            }
            if dist.is_main:
                best = max(state["best_top1"], val["val_top1"])
                ckpt = payload(epoch + 1, 0, global_step, best, metrics)
                save_checkpoint(out / "checkpoint_last.pt", ckpt)
                if val["val_top1"] > state["best_top1"]:
                    link_checkpoint(out / "checkpoint_last.pt", out / "checkpoint_best.pt")
                # Training + validation + checkpoints: what an epoch costs on the clock (plan GPU runs with it).
                line = {**metrics, "wall_s": time.perf_counter() - t0}
                with open(out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(line) + "\n")
                plot_curves(out / "metrics.jsonl", out / "curves.png")
                log.info(
                    "epoch %d/%d  train_loss %.4f  val_loss %.4f  top1 %.2f%%  top5 %.2f%%  %.0f img/s  %.1fs%s",
                    epoch + 1,
                    cfg.epochs,
                    metrics["train_loss"],
                    val["val_loss"],
                    val["val_top1"],
                    val["val_top5"],
                    metrics["images_per_s"],
                    seconds,
                    f"  ({metrics['bad_files']} unreadable images skipped)" if metrics["bad_files"] else "",
                )
            state["best_top1"] = max(state["best_top1"], val["val_top1"])
    return metrics


def _truncate_metrics(path: Path, epochs_done: int) -> None:
    """On resume, drop metric rows of epochs after the checkpoint (they will be redone)."""
    if not path.exists():
        return
    rows = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["epoch"] <= epochs_done]
    path.write_text("".join(r + "\n" for r in rows))


def _restore(path: Path, model: GoogLeNet, optimizer, ema: EMA | None, device: torch.device) -> dict[str, Any]:
    ckpt = read_checkpoint(path)
    ts = ckpt.get("train_state")
    if ts is None:
        raise ConfigError(f"{path}: holds no training state to resume (an imported or exported model?)")
    model.load_state_dict(ts["model"] if ts["model"] is not None else ckpt["model"])
    optimizer.load_state_dict(ts["optimizer"])
    if ema is not None:
        ema.model.load_state_dict(ckpt["model"])
        ema.updates = ts["ema_updates"]
    torch.set_rng_state(ts["rng_cpu"])
    if ts["rng_cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(ts["rng_cuda"], device)
    log.info("resuming from %s at epoch %d step %d", path, ts["epoch"] + 1, ts["step"])
    return dict(
        epoch=ts["epoch"],
        step=ts["step"],
        global_step=ts["global_step"],
        best_top1=ts["best_top1"],
        partial=ts.get("partial"),
    )


def plot_curves(metrics_path: Path, png_path: Path) -> None:
    """Loss and accuracy against epoch, from metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(ln) for ln in metrics_path.read_text().splitlines() if ln.strip()]
    if not rows:
        return
    epochs = [r["epoch"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [r["train_loss"] for r in rows], label="train loss (with aux)")
    ax1.plot(epochs, [r["val_loss"] for r in rows], label="val loss")
    ax1.set_xlabel("epoch")
    ax1.legend()
    ax2.plot(epochs, [r["val_top1"] for r in rows], label="val top-1 %")
    ax2.plot(epochs, [r["val_top5"] for r in rows], label="val top-5 %")
    ax2.set_xlabel("epoch")
    ax2.legend()
    fig.tight_layout()
    with replacing(png_path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
