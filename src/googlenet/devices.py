"""Which device a command runs on, and what the CPU can do."""

from __future__ import annotations

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks this process's GPU (``local_rank`` under torchrun) when there is one, else the CPU."""
    if name not in DEVICE_CHOICES:
        raise ValueError(f"device must be one of {', '.join(DEVICE_CHOICES)}, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA device is available")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX) that oneDNN's convolutions use.

    Without them bf16 autocast is emulated, many times slower than float32; with them it trained the
    paper variant 1.19x (32 px) and 1.48x (64 px) faster than float32 on a 2-core CPU (README, Results). The
    probes are torch's own (private, hence the fallback), the ones its compiler uses to pick kernels.
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def has_native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively: a CUDA GPU with bf16 units, or a CPU with AVX512-BF16 or AMX.

    Training uses bf16 autocast exactly there unless told otherwise (--bf16 / --no-bf16). Emulated bf16 is no
    bargain: on a 2-core AVX2 CPU a training step of the paper variant ran 11-15x slower under bf16 autocast
    than in float32 (bench/results/speed/cpu-2core-avx2-train-bf16).
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return cpu_has_native_bf16()
