"""Model-only speed: torchvision's googlenet (the baseline) and ours, in one process, same inputs.

Training step (SGD, both auxiliary heads, loss x0.3) and inference, images/s, median of repetitions after
warm-up; bf16 autocast + channels_last on CUDA; optional torch.compile with its compile time reported apart.
The torchvision-compatible variant loads torchvision's weights and its logits are compared, so a speed
difference never hides a different function; likewise the paper variant against itself with PyTorch's
nn.LocalResponseNorm in place of ours.

    python bench/model_speed.py                 # batch 256 at 224 px on the GPU
    python bench/model_speed.py --compile       # also compiled (minutes of compile time)
    python bench/model_speed.py --compile --models bn,bn_folded,paper   # fewer compiles
    python bench/model_speed.py --quick         # seconds on a CPU: checks the script itself
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from googlenet import GoogLeNetOutputs, create_model  # noqa: E402
from googlenet.loop import googlenet_loss  # noqa: E402

MODELS = ("bn", "bn_folded", "paper", "paper_torch_lrn")  # ours, beside torchvision's


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def pick_device(quick: bool) -> tuple[torch.device, str]:
    """The GPU unless --quick (or none is there), with its name for the table's header."""
    device = torch.device("cuda" if torch.cuda.is_available() and not quick else "cpu")
    torch.backends.cudnn.benchmark = True
    return device, torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"


def timed(fn, device, warmup: int, iters: int, reps: int) -> float:
    """Median seconds per call over ``reps`` repetitions of ``iters`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        sync(device)
        times.append((time.perf_counter() - t0) / iters)
    return statistics.median(times)


def torchvision_train_outputs(model, x):
    out = model(x)  # train mode: (logits, aux_logits2, aux_logits1)
    return out.logits, out.aux_logits1, out.aux_logits2


def ours_train_outputs(model, x):
    return tuple(model(x, with_aux=True))


def bench(name, model, outputs_fn, x, y, device, args, compile_model: bool, train: bool = True) -> dict:
    """Training (unless ``train`` is False: an inference-only model) and inference rates of ``model``."""
    use_bf16 = device.type == "cuda"
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    if device.type == "cuda":  # each row's own peak, not the largest so far
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = model.to(device, memory_format=fmt)
    x = x.to(device, memory_format=fmt)
    y = y.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    train_model = eval_model = model
    compile_s = 0.0
    if compile_model:
        train_model = torch.compile(model)
        eval_model = train_model

    def ctx():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)

    def train_step():
        with ctx():
            loss = googlenet_loss(GoogLeNetOutputs(*outputs_fn(train_model, x)), y, 0.3, 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    @torch.no_grad()
    def infer():
        with ctx():
            return eval_model(x)

    def first_call_seconds(fn) -> float:  # compilation happens in the first call
        t0 = time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - t0

    train_s = None
    if train:
        model.train()
        compile_s += first_call_seconds(train_step) if compile_model else 0.0
        train_s = timed(train_step, device, args.warmup, args.iters, args.reps)
    model.eval()
    compile_s += first_call_seconds(infer) if compile_model else 0.0
    infer_s = timed(infer, device, args.warmup, args.iters, args.reps)
    mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    row = {
        "name": name + (" compiled" if compile_model else ""),
        "train": len(x) / train_s if train_s else None,
        "infer": len(x) / infer_s,
        "compile_s": compile_s,
        "mem_gib": mem,
    }
    # Printed at once: a run stopped by a time cap still reports the rows it measured.
    train_text = f"training {row['train']:,.0f} img/s, " if train_s else ""
    print(f"# {row['name']}: {train_text}inference {row['infer']:,.0f} img/s, compile {compile_s:.0f} s", flush=True)
    return row


def paper_with_torch_lrn(paper: torch.nn.Module) -> torch.nn.Module:
    """The same paper-variant weights with PyTorch's LRN (3-D average pool) instead of ours (band GEMM)."""
    ref = create_model("googlenet")
    ref.load_state_dict(paper.state_dict())
    ref.lrn1, ref.lrn2 = (torch.nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0) for _ in range(2))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        diff = (ref.eval()(x) - paper.eval()(x)).abs().max().item()
    print(f"# logits check, paper variant, our LRN vs nn.LocalResponseNorm (fp32, eval): max |diff| {diff:.2e}")
    assert diff < 1e-3, "our LRN does not reproduce nn.LocalResponseNorm"
    return ref


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--compile", action="store_true")
    p.add_argument(
        "--models",
        type=lambda v: v.split(","),
        default=list(MODELS),
        help=f"which of ours to run beside torchvision's: {','.join(MODELS)} (each compile costs minutes)",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes on any device (a smoke test)")
    args = p.parse_args()
    if unknown := set(args.models) - set(MODELS):
        p.error(f"unknown --models {sorted(unknown)}; choose from {', '.join(MODELS)}")
    if args.quick:
        args.batch, args.img_size, args.warmup, args.iters, args.reps = 2, 64, 1, 1, 2
    return args


def check_equivalence(tv: torch.nn.Module, ours_bn: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """Assert googlenet_bn computes torchvision's function and folding keeps it; returns the folded copy."""
    with torch.no_grad():
        diff = (tv.eval()(x[:2]) - ours_bn.eval()(x[:2])).abs().max().item()
    print(f"# logits check, torchvision vs googlenet_bn with the same weights (fp32, eval): max |diff| {diff:.2e}")
    assert diff < 1e-3, "googlenet_bn does not reproduce torchvision"
    # Folding is checked on a copy with non-trivial BN statistics and weights of scale 1 (with the init's
    # std 0.01 the logits all but vanish and any folding would "match").
    check = copy.deepcopy(ours_bn)
    g = torch.Generator().manual_seed(1)
    for m in check.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        elif isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, generator=g)
    with torch.no_grad():
        ref = check(x[:2])
        diff = (copy.deepcopy(check).fold_batchnorm()(x[:2]) - ref).abs().max().item() / ref.abs().max().item()
    print(f"# logits check, googlenet_bn with BatchNorm folded vs not (fp32): max |diff| / max |logit| {diff:.2e}")
    assert diff < 1e-4, "folding BatchNorm changed googlenet_bn's function"
    return copy.deepcopy(ours_bn).fold_batchnorm()


def bench_models(tv, ours_bn, folded, x, y, device, args) -> list[dict]:
    """The rows: torchvision's model first, then each of ours that --models asks for, eager then compiled."""
    rows = []
    for compiled in [False] + ([True] if args.compile else []):
        rows.append(bench("torchvision googlenet", tv, torchvision_train_outputs, x, y, device, args, compiled))
        if "bn" in args.models:
            rows.append(bench("ours googlenet_bn", ours_bn, ours_train_outputs, x, y, device, args, compiled))
        if "bn_folded" in args.models:  # what `googlenet predict` / `eval` run
            rows.append(
                bench("ours googlenet_bn, BN folded (inference only)", folded, None, x, y, device, args, compiled,
                      train=False)
            )  # fmt: skip
        paper = create_model("googlenet")
        if "paper" in args.models:
            rows.append(bench("ours googlenet (paper)", paper, ours_train_outputs, x, y, device, args, compiled))
        if "paper_torch_lrn" in args.models:
            rows.append(
                bench("ours googlenet (paper), nn.LocalResponseNorm", paper_with_torch_lrn(paper), ours_train_outputs,
                      x, y, device, args, compiled)
            )  # fmt: skip
    return rows


def print_table(rows: list[dict]) -> None:
    """Markdown table, each row against torchvision's model run the same way (eager or compiled)."""
    base = {r["name"].endswith("compiled"): r for r in rows if r["name"].startswith("torchvision")}
    print("\n| model | train img/s | x baseline | inference img/s | x baseline | compile s | peak GiB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        b = base[r["name"].endswith("compiled")]
        train = f"{r['train']:,.0f} | {r['train'] / b['train']:.2f}" if r["train"] else "- | -"
        print(
            f"| {r['name']} | {train} | {r['infer']:,.0f} | "
            f"{r['infer'] / b['infer']:.2f} | {r['compile_s']:.0f} | {r['mem_gib']:.1f} |"
        )


def main() -> None:
    args = parse_args()
    device, gpu = pick_device(args.quick)
    print(
        f"# model speed, batch {args.batch}, {args.img_size} px, {device.type} ({gpu}); torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}, python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}; bf16 autocast + channels_last on CUDA; median of {args.reps}x{args.iters}"
    )
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size)
    y = torch.randint(0, 1000, (args.batch,))
    tv = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True)
    ours_bn = create_model("googlenet_bn")
    ours_bn.load_state_dict(tv.state_dict(), strict=True)
    folded = check_equivalence(tv, ours_bn, x)
    print_table(bench_models(tv, ours_bn, folded, x, y, device, args))


if __name__ == "__main__":
    main()
