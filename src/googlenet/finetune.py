"""Fine-tuning (`googlenet train --init CKPT`): start from another checkpoint's weights, on new classes.

What travels from the source checkpoint: its weights (by name), its input normalisation (mean/std) and the
model's input remapping (``transform_input`` / ``caffe_input``), so that the fine-tuned model keeps seeing
input prepared the way its backbone was trained. What is made anew: the classifier when the class list
differs, and auxiliary heads that the source lacks or never trained. ``--freeze`` keeps the lower layers
fixed (out of the optimizer, BatchNorm statistics included); ``--head-lr-mult`` scales the learning rate of
the new heads. The trainer only calls the functions here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from googlenet.checkpoint import CheckpointError, read_checkpoint, strip_wrapper_prefixes
from googlenet.config import ConfigError
from googlenet.model import INCEPTION_SPECS
from googlenet.preprocessing import Preprocessing, PreprocessingError

if TYPE_CHECKING:
    from googlenet.train_config import TrainConfig

log = logging.getLogger("googlenet")

# The top-level modules of both variants in the order forward() runs them (the auxiliary heads aside).
FORWARD_ORDER = (
    *("conv1", "maxpool1", "lrn1", "conv2", "conv3", "lrn2", "maxpool2"),
    *("inception3a", "inception3b", "maxpool3"),
    *("inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4"),
    *("inception5a", "inception5b", "avgpool", "dropout", "fc"),
)
# Each auxiliary head trains the layers below the module it hangs on; it is frozen when that module is.
AUX_HANGS_ON = {"aux1": "inception4a", "aux2": "inception4d"}
# What --freeze accepts: nothing, everything below fc (a linear probe), or the layers up to a module with
# weights (in forward order).
FREEZE_LAYERS = ("conv1", "conv2", "conv3", *INCEPTION_SPECS)
FREEZE_CHOICES = ("none", "features", *FREEZE_LAYERS)
INPUT_FLAGS = ("transform_input", "caffe_input")


@dataclass
class InitSource:
    """What a fine-tuning run takes from its source checkpoint.

    On ``--resume`` the run's own checkpoint stands in: it carries the same input conventions, and its
    weights are restored by the resume itself (``weights`` None).
    """

    path: str
    variant: str
    class_names: list[str]
    preprocessing: Preprocessing
    input_flags: dict[str, bool]
    has_aux: bool
    aux_trained: bool
    weights: dict[str, Tensor] | None
    new_modules: list[str] | None = None  # on resume: the heads the run made anew


def read_init(cfg: TrainConfig, resumed: dict[str, Any] | None) -> InitSource | None:
    """The source of a fine-tuning run (None without ``--init``); a different variant is a ConfigError."""
    if not cfg.init:
        return None
    if resumed is not None:
        source = _source(str(cfg.resume), resumed, with_weights=False)
        source.new_modules = list((resumed.get("train_state") or {}).get("new_modules") or [])
        return source
    source = _source(cfg.init, read_checkpoint(cfg.init), with_weights=True)
    if source.variant != cfg.model:
        raise ConfigError(
            f"--init {cfg.init} holds a {source.variant} model, not {cfg.model}; "
            f"fine-tune it with --model {source.variant}"
        )
    return source


def _source(path: str, ckpt: dict[str, Any], with_weights: bool) -> InitSource:
    model_config = ckpt.get("model_config") or {}
    try:
        preprocessing = Preprocessing.from_dict(ckpt.get("preprocess"))
    except PreprocessingError as e:
        raise CheckpointError(f"{path}: {e}") from None
    has_aux = bool(model_config.get("aux_logits", False))
    return InitSource(
        path=path,
        variant=str(model_config.get("variant", "googlenet")),
        class_names=list(ckpt.get("class_names") or []),
        preprocessing=preprocessing,
        input_flags={flag: bool(model_config.get(flag, False)) for flag in INPUT_FLAGS},
        has_aux=has_aux,
        aux_trained=has_aux and _aux_trained(ckpt.get("config") or {}),
        weights=strip_wrapper_prefixes(ckpt["model"]) if with_weights else None,
    )


def _aux_trained(config: dict[str, Any]) -> bool:
    """Whether a checkpoint's auxiliary heads learned anything: imports record it; a training run trained
    them unless its auxiliary loss weight was 0."""
    if "aux_trained" in config:
        return bool(config["aux_trained"])
    return float(config.get("aux_weight", 1.0)) > 0


def resolve_aux_logits(cfg: TrainConfig, source: InitSource | None) -> tuple[bool, str | None]:
    """``--aux-logits`` as given, else automatic: kept where the source has trained heads that would train
    something, else dropped. Returns the choice and, when heads are dropped automatically, why."""
    if cfg.aux_logits is not None:
        return cfg.aux_logits, None
    if source is None:
        return True, None
    hint = "; --aux-logits makes new ones"
    if not source.has_aux:
        return False, f"auxiliary heads dropped: {source.path} has none{hint}"
    if not source.aux_trained:
        return False, f"auxiliary heads dropped: {source.path}'s were never trained{hint}"
    if all(on in frozen_modules(cfg.freeze) for on in AUX_HANGS_ON.values()):
        return False, f"auxiliary heads dropped: --freeze {cfg.freeze} fixes the layers they train"
    return True, None


def normalisation(source: InitSource | None) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The source's mean and std, which the new run's data must use (None: the data's own)."""
    return None if source is None else (source.preprocessing.mean, source.preprocessing.std)


def input_flags(source: InitSource | None) -> dict[str, bool]:
    """The model options that remap the input the way the source's weights expect it."""
    return {} if source is None else dict(source.input_flags)


def heads_made_anew(model: nn.Module, source: InitSource, classes: list[str]) -> list[str]:
    """The modules that start from fresh weights: the classifier (and the auxiliary heads' last layers) for
    a different class list (same names in the same order keep them), whole auxiliary heads the source
    cannot supply."""
    new_classes = list(classes) != source.class_names
    heads = ["fc"] if new_classes else []
    for aux in AUX_HANGS_ON:
        if getattr(model, aux, None) is None:
            continue
        if not source.aux_trained:
            heads.append(aux)
        elif new_classes:
            heads.append(f"{aux}.fc2")
    return heads


def _under(name: str, modules: Iterable[str]) -> str | None:
    return next((m for m in modules if name == m or name.startswith(m + ".")), None)


def _module_names(tensors: Iterable[str], modules: Iterable[str]) -> list[str]:
    """Tensor names summarised by module: one of ``modules`` where under it, else the top-level module."""
    modules = list(modules)
    names = [_under(t, modules) or t.split(".")[0] for t in tensors]
    return list(dict.fromkeys(names))


@dataclass
class LoadReport:
    loaded: list[str]
    new: list[str]
    dropped: list[str]


def load_by_name(model: nn.Module, weights: dict[str, Tensor], new_modules: list[str]) -> LoadReport:
    """Copy every source tensor whose name the model has, except those of the modules made anew.

    The variant matches, so a tensor of the same name and a different shape means a corrupt source.
    """
    target = model.state_dict()
    take = {k: v for k, v in weights.items() if k in target and not _under(k, new_modules)}
    for key, value in take.items():
        if value.shape != target[key].shape:
            raise CheckpointError(
                f"--init: {key} has shape {tuple(value.shape)}, the model needs {tuple(target[key].shape)}"
            )
    model.load_state_dict(take, strict=False)
    new = [k for k in target if k not in take]
    dropped = [k for k in weights if k not in take]
    return LoadReport(list(take), new, dropped)


def report_lines(report: LoadReport, new_modules: list[str], source: InitSource, classes: list[str]) -> list[str]:
    """One line each for what was loaded, made anew and dropped: counts and module names, not tensors."""
    new, dropped = _module_names(report.new, new_modules), _module_names(report.dropped, new_modules)
    if "fc" in new_modules:
        why = (
            f"{len(classes)} classes here, {len(source.class_names)} in the source"
            if len(classes) != len(source.class_names)
            else "the class names differ from the source's"
        )
    else:
        why = "the class list is the source's, its classifier is kept"
    return [
        f"init: loaded {len(report.loaded)} tensors from {source.path}",
        f"init: made anew {len(report.new)} tensors ({', '.join(new) or 'none'}): {why}",
        f"init: dropped {len(report.dropped)} tensors ({', '.join(dropped) or 'none'})",
    ]


def start_from(model: nn.Module, source: InitSource | None, classes: list[str]) -> tuple[list[str], list[str]]:
    """Load the source's weights into ``model`` (a fresh run) and name the heads made anew; on resume only
    name them (the run's checkpoint restores the weights). Returns (heads made anew, log lines)."""
    if source is None:
        return [], []
    if source.weights is None:
        return list(source.new_modules or []), []
    new_modules = heads_made_anew(model, source, classes)
    report = load_by_name(model, source.weights, new_modules)
    return new_modules, report_lines(report, new_modules, source, classes)


def frozen_modules(freeze: str) -> list[str]:
    """The top-level modules ``--freeze`` fixes: all up to and including the named one in forward order
    (``features``: all below fc), with each auxiliary head whose module is among them."""
    if freeze == "none":
        return []
    last = "dropout" if freeze == "features" else freeze
    trunk = list(FORWARD_ORDER[: FORWARD_ORDER.index(last) + 1])
    return trunk + [aux for aux, on in AUX_HANGS_ON.items() if on in trunk]


def freeze(model: nn.Module, spec: str, new_modules: list[str]) -> tuple[list[nn.Module], str | None]:
    """Fix the parameters ``spec`` names (requires_grad False) and return the BatchNorm layers among them,
    which must stay in eval mode so that their running statistics stay fixed too; and a log line.

    Modules made anew are never fixed: they have nothing learned to keep (an auxiliary head on a frozen
    layer still trains its new classifier).
    """
    if spec == "none":
        return [], None
    frozen = frozen_modules(spec)
    bns: list[nn.Module] = []
    fixed = 0
    for name, module in model.named_modules():
        if not _under(name, frozen) or _under(name, new_modules):
            continue
        for p in module.parameters(recurse=False):
            p.requires_grad_(False)
            fixed += p.numel()
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            bns.append(module)
    total = sum(p.numel() for p in model.parameters())
    return bns, f"freeze {spec}: {fixed:,} of {total:,} parameters fixed, {total - fixed:,} trained"


def keep_in_eval(modules: list[nn.Module]) -> Callable[[], None] | None:
    """What to call after ``model.train()``: frozen BatchNorm back to eval, so it normalises with its stored
    statistics and never updates them (None when there is none)."""
    if not modules:
        return None

    def to_eval() -> None:
        for m in modules:
            m.eval()

    return to_eval


def split_groups(groups: list[dict], model: nn.Module, new_modules: list[str], head_lr_mult: float) -> list[dict]:
    """The optimizer's parameter groups without frozen parameters, each split into the loaded part
    (``lr_mult`` 1) and the new heads' part (``lr_mult`` ``head_lr_mult``), which exists only for a run with
    new heads. The structure depends only on the model, the config and ``new_modules``, so a resumed run
    rebuilds it exactly and the saved optimizer state fits."""
    new_ids = {id(p) for name, p in model.named_parameters() if _under(name, new_modules)}
    loaded, heads = [], []
    for group in groups:
        trainable = [p for p in group["params"] if p.requires_grad]
        loaded.append({**group, "params": [p for p in trainable if id(p) not in new_ids], "lr_mult": 1.0})
        heads.append({**group, "params": [p for p in trainable if id(p) in new_ids], "lr_mult": head_lr_mult})
    return loaded + (heads if new_ids else [])
