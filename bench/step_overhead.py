"""Host-device syncs in the training loop, and what they cost: Fashion-MNIST, in one process.

The training loop (`googlenet.loop.train_one_epoch` fed by the in-memory Fashion-MNIST source, with the
recipe's crops, flips, erasing, EMA and gradient clipping) is timed twice on the same model and batches:
- "pageable copies": every per-batch CPU -> GPU copy (batch indices, crop boxes, flip flags, erase boxes,
  normalisation constants) made with a plain `.to(device)`, as before. PyTorch synchronises the stream after
  such a copy, so the host waits for the previous step's kernels before it prepares the next batch;
- "pinned, non-blocking": the same copies through `googlenet.augment.host_to_device` (the code as it is).
For each it counts the operations that made the host wait (`torch.cuda.set_sync_debug_mode("warn")`) per
step and prints where they happen. The batches are identical; only how they reach the GPU differs.

    python bench/step_overhead.py             # GPU: the recipe's 64 px, batch 512, eager (and --compile,
                                              # --compile-mode reduce-overhead for CUDA graphs)
    python bench/step_overhead.py --profile   # also where a step's time goes (torch.profiler, eager)
    python bench/step_overhead.py --quick     # seconds on a CPU: checks the script (no syncs to count)
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import itertools
import statistics
import sys
import time
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from model_speed import pick_device, sync  # noqa: E402

from googlenet import augment, batches  # noqa: E402
from googlenet import distributed as D  # noqa: E402
from googlenet.config import resolve  # noqa: E402
from googlenet.devices import has_native_bf16  # noqa: E402
from googlenet.ema import EMA  # noqa: E402
from googlenet.loop import StepContext, train_one_epoch  # noqa: E402
from googlenet.model import create_model  # noqa: E402
from googlenet.train import param_groups  # noqa: E402
from googlenet.train_config import COMPILE_MODES, TrainConfig  # noqa: E402
from googlenet.train_data import build_train_data  # noqa: E402


def _pageable_to_device(t, device, dtype=None):
    return t.to(device=device, dtype=dtype)


@contextmanager
def pageable_copies(source):
    """The copies as they were before host_to_device: plain `.to(device)`, and the normalisation constants
    built from Python numbers on every batch (`new_tensor`, a blocking copy each)."""
    mean, std = (t.flatten().tolist() for t in (source.mean, source.std))

    def normalize_as_before(images, _mean, _std):
        return (images - images.new_tensor(mean).view(1, -1, 1, 1)) / images.new_tensor(std).view(1, -1, 1, 1)

    saved = augment.host_to_device, batches.host_to_device, batches.normalize
    augment.host_to_device = batches.host_to_device = _pageable_to_device
    batches.normalize = normalize_as_before
    try:
        yield
    finally:
        augment.host_to_device, batches.host_to_device, batches.normalize = saved


def fresh_model(cfg: TrainConfig, device):
    """The same initial weights for every row, in the recipe's memory format."""
    torch.manual_seed(0)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    return create_model(cfg.model, num_classes=10).to(device, memory_format=memory_format)


def run_steps(model, source, cfg: TrainConfig, device, steps: int, epoch: int, count_syncs: bool, around=None):
    """Seconds for ``steps`` training steps (after the loop's own first batch) and the syncs seen, by place.

    ``around``: a context manager entered around the timed steps only (the profiler), not the warm-up."""
    train_model = torch.compile(model, mode=cfg.compile_mode) if cfg.compile else model
    optimizer = torch.optim.SGD(
        param_groups(model, cfg.weight_decay, False), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov
    )
    ctx = StepContext(
        optimizer,
        lambda s: cfg.lr,
        cfg.grad_clip,
        cfg.aux_weight,
        cfg.label_smoothing,
        lambda: torch.autocast(device.type, dtype=torch.bfloat16) if cfg.bf16 else nullcontext(),
        cfg.channels_last,
        EMA(model, cfg.ema_decay) if cfg.ema else None,
        lambda: False,
    )
    warm = list(itertools.islice(source.batches(epoch, cfg.img_size), 2))  # compile / cudnn autotuning
    train_one_epoch(train_model, iter(warm), ctx, 0, lambda *_: False)
    sync(device)
    places: collections.Counter[str] = collections.Counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if count_syncs:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            with around or nullcontext():
                t0 = time.perf_counter()
                batches = itertools.islice(source.batches(epoch + 1, cfg.img_size), steps)
                train_one_epoch(train_model, batches, ctx, 0, lambda *_: False)
                sync(device)
                seconds = time.perf_counter() - t0
        finally:
            if count_syncs:
                torch.cuda.set_sync_debug_mode(0)
    for w in caught:
        if "synchroniz" in str(w.message).lower():
            places[f"{Path(w.filename).name}:{w.lineno}"] += 1
    return seconds, places


def print_profile(model, source, cfg: TrainConfig, device, steps: int) -> None:
    """Where a step's time goes, as the code is (pinned copies, eager): torch.profiler's heaviest operators,
    and on a GPU the share of the wall time its kernels kept it busy. Well under 100% means the host (Python,
    dispatch, launches) is the limit, which CUDA graphs or compiling address; near 100% means the kernels are."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    on_gpu = device.type == "cuda"
    prof = profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else []))
    seconds, _ = run_steps(model, source, cfg, device, steps, 0, False, around=prof)
    events = prof.key_averages()
    sort_by = "self_cpu_time_total"
    print(
        f"\n## Profile: pinned copies, eager, {steps} steps, {steps * cfg.batch_size / seconds:,.0f} img/s (profiled)"
    )
    if on_gpu:
        sort_by = "self_device_time_total"
        # The kernels' own rows only: an operator's row also counts the kernels it launched.
        kernel_us = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA)
        print(
            f"GPU busy {kernel_us / 1e6 / seconds:.0%} of the wall time: {kernel_us / 1e3 / steps:.1f} ms of "
            f"kernels in {seconds * 1e3 / steps:.1f} ms per step"
        )
    print("\n```\n" + events.table(sort_by=sort_by, row_limit=15, max_name_column_width=60) + "\n```")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="also compiled (minutes of compile time)")
    p.add_argument(
        "--compile-mode",
        default="default",
        choices=COMPILE_MODES,
        help="torch.compile mode of the compiled rows (reduce-overhead: CUDA graphs)",
    )
    p.add_argument("--profile", action="store_true", help="also profile the steps as the code is (eager)")
    p.add_argument("--quick", action="store_true", help="tiny sizes on the CPU (a smoke test)")
    args = p.parse_args()
    device, name = pick_device(args.quick)
    overrides = {"device": device.type, "compile": False, "compile_mode": args.compile_mode}
    if args.quick:
        overrides.update(img_size=32, batch_size=16, train_subset=256, val_subset=16, bf16=False, channels_last=False)
        args.steps, args.reps = 3, 2
    cfg = resolve(TrainConfig, "fashion-mnist", overrides)
    if cfg.bf16 is None:  # the default, resolved as training resolves it
        cfg = dataclasses.replace(cfg, bf16=has_native_bf16(device))
    count_syncs = device.type == "cuda"
    print(
        f"# training-loop overhead, Fashion-MNIST recipe ({cfg.model}, {cfg.img_size} px, batch {cfg.batch_size}, "
        f"bf16 {cfg.bf16}, channels_last {cfg.channels_last}), {device.type} ({name}); torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}; {args.steps} steps, median of {args.reps}"
    )
    train_src = build_train_data(cfg, device, D.DistInfo()).train
    rows = []
    for compiled in [False] + ([True] if args.compile else []):
        cfg_c = dataclasses.replace(cfg, compile=compiled)
        for label, mode in (("pageable copies", pageable_copies), ("pinned, non-blocking", lambda _: nullcontext())):
            model = fresh_model(cfg, device)
            with mode(train_src):
                times = [
                    run_steps(model, train_src, cfg_c, device, args.steps, 2 * r, False)[0] for r in range(args.reps)
                ]
                # Counted apart: the sync debug mode's warnings (with stack traces) would slow the timed passes.
                places = run_steps(model, train_src, cfg_c, device, args.steps, 2 * args.reps, count_syncs)[1]
            rate = args.steps * cfg.batch_size / statistics.median(times)
            syncs = places.total() / args.steps if count_syncs else float("nan")
            kind = f", compiled ({cfg.compile_mode})" if compiled else ", eager"
            rows.append((label + kind, syncs, rate, places))
            print(f"# {rows[-1][0]}: {syncs:.1f} host syncs per step, {rate:,.0f} img/s", flush=True)
    print("\n| per-batch copies | host syncs per step | training img/s | x pageable |\n|---|---|---|---|")
    for i, (label, syncs, rate, _) in enumerate(rows):
        base = rows[i - i % 2][2]
        counted = f"{syncs:.1f}" if count_syncs else "n/a (CPU)"
        print(f"| {label} | {counted} | {rate:,.0f} | {rate / base:.2f} |")
    for label, _, _, places in rows:
        if places:
            where = ", ".join(f"{k} x{v}" for k, v in places.most_common(8))
            print(f"\nSyncs, {label}: {where}")
    if args.profile:
        print_profile(fresh_model(cfg, device), train_src, cfg, device, args.steps)


if __name__ == "__main__":
    main()
