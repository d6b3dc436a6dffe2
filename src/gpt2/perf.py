"""Training's performance tools, apart from the loop: the measured matmul peak and the FLOPs per token behind MFU,
the decision to run a compiled model, and gradient-norm clipping in fewer passes over memory on the CPU."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable

import torch

from gpt2.errors import GPT2Error
from gpt2.model import GPT

_PEAKS: dict[tuple[str, str], float] = {}

# compile = "auto" on a CPU compiles only a run that would take at least this long uncompiled (at the speed the
# warm-up measures): compiling costs minutes on a small CPU, which a gain of 10-45% repays only over half an hour
# or more (benchmarks/bench_train.py --compile measures both). `gpt2 demo` stays eager, so its stated time holds.
COMPILE_MIN_SECONDS = 1800.0
COMPILE_MODES = ("auto", "true", "false")


def matmul_peak(device: torch.device, dtype: torch.dtype | None, refresh: bool = False, seconds: float = 0.3) -> float:
    """This machine's measured matmul FLOP/s in the training dtype: the denominator of MFU, here and in
    benchmarks/bench_train.py. Measured, not the datasheet's peak: the best of groups of four n x n matmuls
    (n = 2048 on a CPU, 4096 on a GPU) over `seconds`, so MFU reads "of what this device's matmul reaches",
    which is higher than against the hardware's theoretical peak. Timed once per process; refresh=True times
    it again and keeps the faster of the two (a first timing under load reads low)."""
    key = (str(device), str(dtype))
    if key not in _PEAKS or refresh:
        n = 4096 if device.type == "cuda" else 2048
        g = torch.Generator(device=device).manual_seed(0)  # not the global RNG: resumed runs must replay it exactly
        a, b = (torch.randn(n, n, device=device, dtype=dtype or torch.float32, generator=g) for _ in range(2))
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        a @ b
        sync()
        best, groups, t_end = 0.0, 0, time.perf_counter() + seconds
        while time.perf_counter() < t_end or groups < 2:
            t0 = time.perf_counter()
            for _ in range(4):
                a @ b
            sync()
            best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t0))
            groups += 1
        _PEAKS[key] = max(_PEAKS.get(key, 0.0), best)
    return _PEAKS[key]


def flops_per_token(model: GPT, seq_len: int) -> float:
    """Training FLOPs per token: 6N for the weights' forward and backward, 12 L d T for attention scores."""
    c = model.config
    return 6 * model.num_params() + 12 * c.n_layer * c.n_embd * seq_len


def compile_if_faster(
    model: torch.nn.Module,
    mode: str,
    device: torch.device,
    probe: Callable[[torch.nn.Module, int], tuple[float, float]],
    micro_steps_left: int,
    agree: Callable[[bool], bool],
) -> tuple[torch.nn.Module, str]:
    """The model to train (compiled per `mode`) and a note on how compiling went. `probe(model, reps)` times reps
    forward + backward passes (the first's seconds, the others' median); `agree(flag)` is flag on every process.
    "auto" on a CPU compiles only a run long enough to repay it, and keeps the compiled model only if it measured
    at least 5% faster; a compile that fails falls back to eager with one warning."""
    if mode not in COMPILE_MODES:
        raise GPT2Error(f"compile must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    if mode == "false" or (mode == "auto" and device.type not in ("cuda", "cpu")):
        return model, ""
    measure = mode == "auto" and device.type == "cpu"
    eager = 0.0
    if measure:
        eager = probe(model, 3)[1]
        remaining = micro_steps_left * eager
        if not agree(remaining >= COMPILE_MIN_SECONDS):
            return model, f"not compiled: about {remaining:.0f} s of training, too short to repay it"
    candidate = torch.compile(model)
    try:
        first, compiled = probe(candidate, 3 if measure else 1)
        ok = True
    except Exception as e:  # dynamo and inductor raise many types; any of them means "use eager"
        message = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        warnings.warn(
            f"torch.compile failed ({type(e).__name__}: {message}); training continues uncompiled", stacklevel=3
        )
        ok = False
    if not agree(ok):
        return model, "not compiled: compiling failed"
    took = first - compiled if measure else first
    if measure and not agree(compiled < 0.95 * eager):
        times = f"compiled {compiled:.2f} s vs eager {eager:.2f} s per micro-step"
        return model, f"not compiled: {times} (compiling took {took:.0f} s)"
    return candidate, f"compiled in {took:.0f} s" + (
        f" ({compiled:.2f} s vs eager {eager:.2f} s per micro-step)" if measure else ""
    )


def clip_grad_norm(parameters: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ (the gradients scaled to a total norm of at most max_norm; their norm before)
    in fewer passes over memory where every gradient is a plain float32 CPU tensor, as in one process training on
    the CPU: the norm from BLAS's float32 dot products, and no pass at all where nothing is clipped (torch multiplies
    by 1). Its norm and clipped gradients match torch's to float32 rounding (benchmarks/bench_train.py --ablate
    clipping measures the gain). Elsewhere (GPUs, sharded or other dtypes, a norm that overflows float32) it is
    torch's. max_norm = inf only measures the norm (training without clipping still logs it), with no pass over the
    gradients in any path."""
    grads = [p.grad for p in parameters if p.grad is not None]
    plain = all(
        type(g) is torch.Tensor and g.device.type == "cpu" and g.dtype == torch.float32 and g.is_contiguous()
        for g in grads
    )
    if grads and plain:
        flat = [g.view(-1) for g in grads]
        norm = torch.stack([torch.dot(f, f) for f in flat]).sum().sqrt()
        if math.isfinite(total := norm.item()):
            coef = max_norm / (total + 1e-6)  # torch's coefficient, clamped at 1 as there
            if coef < 1.0:
                for g in grads:
                    g.mul_(coef)
            return norm
    if math.isinf(max_norm):  # torch's would multiply every gradient by 1
        return torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])) if grads else torch.tensor(0.0)
    return torch.nn.utils.clip_grad_norm_(parameters, max_norm)
