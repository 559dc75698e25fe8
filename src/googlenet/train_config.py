"""What `googlenet train` reads: :class:`TrainConfig`, resolved as defaults < recipe (--config) < flags."""

from __future__ import annotations

from dataclasses import dataclass

from googlenet.batches import Augmentation
from googlenet.config import ConfigError, option
from googlenet.devices import DEVICE_CHOICES
from googlenet.finetune import FREEZE_CHOICES
from googlenet.limits import MAX_INPUT_SIZE
from googlenet.model import MIN_INPUT_SIZE, list_models

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's modes


@dataclass
class TrainConfig:
    """Everything `googlenet train` reads. Defaults < recipe (--config) < flags."""

    model: str = option("googlenet", "model variant", choices=list_models())
    data: str = option(
        "fashion-mnist", "'fashion-mnist', a folder with train/<class>/* and val/, or one from `googlenet prepare`"
    )
    init: str | None = option(
        None, "fine-tune: start from this checkpoint or run folder (its weights, normalisation, input remapping)"
    )
    freeze: str = option(
        "none",
        "with --init: keep fixed nothing, everything below fc (a linear probe), or the layers up to and "
        "including LAYER in forward order (conv1 ... inception5b, e.g. inception4e)",
        metavar="none|features|LAYER",
    )
    head_lr_mult: float = option(1.0, "with --init: learning-rate multiplier of the heads made anew")
    epochs: int = option(10, "training epochs (ignored with --time-budget)")
    time_budget: float | None = option(
        None,
        "train for this many minutes of wall time, validation and checkpoints included: the schedule follows "
        "the minutes spent instead of the epochs, and the run ends annealed when they are spent",
        metavar="MINUTES",
    )
    batch_size: int = option(128, "global batch size, split evenly across torchrun processes")
    img_size: int = option(32, "training crop size in px (the final size with progressive resizing)")
    img_size_start: int | None = option(
        None, "progressive resizing: first-epoch size, ramped to img_size by 75% of epochs"
    )
    eval_img_size: int | None = option(None, "validation crop size in px (default: img_size)")
    lr: float = option(0.05, "peak learning rate for the global batch")
    momentum: float = option(0.9, "SGD momentum")
    nesterov: bool = option(False, "Nesterov momentum")
    weight_decay: float = option(5e-4, "L2 weight decay")
    decay_bias_and_norm: bool = option(False, "also decay biases and BatchNorm parameters")
    schedule: str = option("cosine", "learning-rate schedule after warm-up", choices=["step", "cosine", "linear"])
    warmup_epochs: float = option(0.0, "linear warm-up from 0 over this many epochs")
    step_epochs: float = option(8.0, "step schedule: epochs between decays (paper: 8)")
    step_gamma: float = option(0.96, "step schedule: multiplier per step (paper: 0.96, i.e. -4%)")
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy")
    grad_clip: float | None = option(None, "clip the global gradient norm to this (stabilises the BN-free network)")
    aux_logits: bool | None = option(
        None, "train with the two auxiliary classifiers (default: yes; with --init, where the source has trained ones)"
    )
    aux_weight: float = option(0.3, "weight of each auxiliary loss (paper: 0.3)")
    dropout: float | None = option(None, "main-head dropout (default: the variant's, 0.4 paper / 0.2 bn)")
    aux_dropout: float = option(0.7, "auxiliary-head dropout (paper: 0.7)")
    ema: bool = option(False, "evaluate and save an exponential moving average of the weights (Polyak averaging)")
    ema_decay: float = option(0.999, "EMA decay per optimizer step")
    crop: bool = option(True, "random-resized crops (else plain resize)")
    crop_scale_min: float = option(0.08, "smallest crop, as a fraction of the image area (paper: 0.08)")
    crop_ratio_max: float = option(4 / 3, "largest crop aspect ratio; the smallest is its inverse (paper: 4/3)")
    hflip: bool = option(True, "random horizontal mirror")
    photometric: float = option(0.0, "brightness/contrast/saturation jitter strength (Howard); 0 = off")
    random_interpolation: bool = option(False, "random resize interpolation per image (folder data; paper)")
    erase: float = option(0.0, "random-erasing probability per image (Zhong et al. 2017); 0 = off")
    bf16: bool | None = option(
        None, "bfloat16 autocast (default: where the device computes bf16 natively, AVX512-BF16 or AMX on a CPU)"
    )
    channels_last: bool = option(False, "channels-last memory format (faster convolutions on GPUs)")
    compile: bool = option(False, "torch.compile the training model")
    compile_mode: str = option(
        "default",
        "torch.compile mode; reduce-overhead replays the model's forward and backward as CUDA graphs",
        choices=list(COMPILE_MODES),
    )
    seed: int = option(0, "random seed (data order, crops, initial weights)")
    device: str = option("auto", "auto, cpu or cuda", choices=list(DEVICE_CHOICES))
    processes: int = option(
        1,
        "on a CPU: train in this many processes (DistributedDataParallel, started for you) that share the "
        "cores, each with its part of the same global batch; often faster than one process using every core",
    )
    workers: int = option(4, "loader processes for folder data")
    decode_on_device: bool = option(
        False, "folder data: workers only read files; decode (nvJPEG) and crop on the device"
    )
    out: str = option("runs/latest", "run folder")
    resume: str | None = option(None, "checkpoint file or run folder to continue from (in that folder)")
    overwrite: bool = option(False, "start afresh in a --out folder that holds a run: its files are deleted")
    train_subset: int | None = option(None, "use only this many training images (seeded choice)")
    val_subset: int | None = option(None, "use only this many validation images (seeded choice)")
    log_every: int = option(50, "steps between log lines when not on a terminal")

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.time_budget is None or self.time_budget > 0, "time_budget must be > 0 minutes"),
            (
                self.time_budget is None or self.schedule != "step",
                "--time-budget decays the learning rate with the minutes spent: use --schedule cosine or linear",
            ),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.processes >= 1, "processes must be >= 1"),
            (
                self.batch_size % max(self.processes, 1) == 0,
                f"batch_size {self.batch_size} is not divisible by the {self.processes} processes",
            ),
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
            (self.head_lr_mult > 0, "head_lr_mult must be > 0"),
            (
                self.freeze in FREEZE_CHOICES,
                f"freeze {self.freeze!r} is not a layer of the network; valid: {', '.join(FREEZE_CHOICES)}",
            ),
            (self.init or self.freeze == "none", "--freeze keeps pretrained layers fixed; it needs --init"),
            (all(n is None or n >= 1 for n in (self.train_subset, self.val_subset)), "subsets must be >= 1 image"),
        ]
        for size_name in ("img_size", "img_size_start", "eval_img_size"):
            size = getattr(self, size_name)
            low = MIN_INPUT_SIZE[self.model]
            if size is not None and not low <= size <= MAX_INPUT_SIZE:
                checks.append((False, f"{size_name} {size} is outside {self.model}'s range {low}-{MAX_INPUT_SIZE}"))
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
