"""Which device and which number format a command runs in: one rule for training, sampling and evaluation.

`auto` is the GPU when torch sees one, else the CPU. bfloat16 is offered only where the hardware computes it
natively (CUDA GPUs that support it; CPUs with AVX-512 BF16 or AMX), since elsewhere it is emulated and slow.
"""

from __future__ import annotations

import ctypes
import platform
import sys

import torch

from gpt2.errors import GPT2Error

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def pick_device(name: str = "auto") -> torch.device:
    """`auto` is the GPU when there is one, else the CPU; other names (cpu, cuda, cuda:N) must be usable here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise GPT2Error(f"device {name!r} is not a device name (try cpu, cuda, cuda:1 or auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GPT2Error(f"device {name}: this machine has no CUDA GPU that torch can use; try cpu")
    return device


def bf16_supported(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 natively."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = torch.cpu
        return bool(
            getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
            or getattr(cpu, "_is_amx_tile_supported", lambda: False)()
        )
    return False


def pick_dtype(name: str, device: torch.device, *, training: bool = False) -> torch.dtype:
    """The dtype called `name` (float32, bfloat16, float16, or fp32/bf16/fp16), or for `auto` bfloat16 where the
    device computes it natively, except that decoding and evaluation on the CPU keep float32 (whose greedy output
    matches transformers'); training's bfloat16 is autocast, on the GPU or on a CPU with native bfloat16."""
    name = ALIASES.get(name, name)
    if name == "auto":
        native = bf16_supported(device) and (training or device.type == "cuda")
        return torch.bfloat16 if native else torch.float32
    if name not in DTYPES:
        raise GPT2Error(f"dtype must be auto, {', '.join(DTYPES)}, got {name!r}")
    dtype = DTYPES[name]
    if training and dtype == torch.float16:
        raise GPT2Error("training in float16 needs loss scaling, which gpt2 does not do; use bfloat16 or float32")
    if training and dtype == torch.bfloat16 and not bf16_supported(device):
        raise GPT2Error(f"bfloat16 was asked for, but {device} has no native bfloat16 arithmetic")
    return dtype


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep the memory a training step frees for the next step rather than give it back to the
    kernel; True where it applied (Linux with glibc), for the rest of the process.

    By default every block of 128 KB or more (GPT-2's activations, autocast's weight copies, the gradients of the
    50,257-row embedding) is mapped afresh for each step and unmapped after it, so each step faults its memory in
    page by page again, the kernel zeroing every page first: at 124M, 1 x 1024 tokens, bf16 autocast, ~300,000 page
    faults and 0.8 s of system time per step, and 2.0 instead of 2.7 s a step without them (a 2-core AMD EPYC VM).
    With no mapped blocks and no trimming, the heap grows to one step's peak and each later step reuses it; the
    memory is not returned between steps, and the peak grew by 2% there (2.83 to 2.88 GB).
    """
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1)
    except (OSError, AttributeError):
        return False
