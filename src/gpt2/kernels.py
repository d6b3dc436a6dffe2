"""The project's CPU kernels (csrc/*.cpp, one library built on first use): decoding's matrix-vector product,
training's softmax cross-entropy, GPT-2's GELU, causal attention's forward and backward passes and a row-split
matmul.

Decoding reads every weight once per token, so batch-1 speed is memory bandwidth. torch's matmul for a single
row reads GPT-2's matrices at ~18 GB/s (MKL, float32) and ~24 GB/s (oneDNN, bfloat16) on a 2-core machine where
a plain streaming loop reaches ~40-45; csrc/gemv.cpp is that loop (benchmarks/bench_generate.py shows both).
`linear` sends the few-row, no-grad CPU products of decoding there and everything else to torch.
`linear_int8` does the same for int8 weights with per-row scales (gpt2.quantize): the kernel widens them in
registers; elsewhere (more rows, a GPU, no kernel) the weights are dequantised for torch's matmul.
`softmax_xent_kernel` is csrc/cross_entropy.cpp's op, which gpt2.fused_loss uses to turn a chunk of logits into
the loss and its gradient in one pass over memory per row (torch's ops walk the chunk about ten times).
`gelu_tanh` is GPT-2's activation (the tanh approximation) and its gradient, csrc/gelu.cpp: one pass over memory
where torch's CPU kernel for approximate="tanh" computes slowly (~6x its erf GELU's time on an AVX-512 CPU).
`causal_attention` is csrc/attention.cpp's forward and backward, which skip the causal mask's masked half: in
bfloat16 on CPUs whose oneDNN has the bfloat16 micro-kernels (AMX), the backward 2.2x faster than torch's flash
backward (a 124M layer at 1 x 1024 tokens, 8.8 against 19.4 ms on a 2-core AMX Xeon) and the forward at par with
torch's flash forward (4.8 against 4.7 ms); in bfloat16 on CPUs with AVX512-BF16 and no AMX (Zen 4), on a
micro-kernel of our own, forward and backward 2.0x torch's (23.5 against 47.1 ms on a 2-core Zen 4); in float32
through BLAS's sgemm where torch carries it (its x86 builds), the forward 1.2-1.4x torch's (10.8 against 12.7 ms on
the AMX Xeon).
`matmul` is a bfloat16 product with its rows split across the threads, each part one single-threaded torch matmul
(csrc/matmul.cpp), for the training shapes where oneDNN leaves a core idle (`split_rows_applies`); in training under
CPU bfloat16 autocast, `linear` takes F.linear's forward and input-gradient products there (gpt2.fused_loss the
output layer's input gradient).

The library is compiled once per machine with torch's extension builder (a C++ compiler and ninja; about 10 s)
and cached under $TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions), named after the CPU, torch's
version and the sources' hash, so that an edited kernel is rebuilt. Where that is not possible (no compiler,
not Linux) decoding uses torch's matmul and training torch's ops, after one warning. GPT2_CPU_KERNELS=0 turns
the kernels off.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

from gpt2.io import report

ATTENTION_HEAD_DIM = 64  # csrc/attention.cpp's (every GPT-2 size has heads of 64)
MAX_ROWS = 8  # the float kernel's limit; more rows are a real matmul, where torch's kernels are good
# int8 weights: up to this many rows (8 at a time) the kernel beats dequantising the weights for torch's matmul
# (measured on GPT-2's matrices: 4-10x at 8-32 rows, about even at 64, slower from 128): decoding, lookahead,
# small batches and short prompts.
INT8_KERNEL_ROWS = 64
# Up to where the kernel beats torch (bench_generate's shapes). For bfloat16 the built kernel says (its
# bf16_fast_rows): 8 where it has the CPU's bfloat16 dot product (AVX512-BF16), as oneDNN's matmul has it; 2 with
# AVX-512 without it; 0 (oneDNN throughout) with AVX2, where oneDNN's one-row product was the faster.
FAST_ROWS = {torch.float32: MAX_ROWS, torch.bfloat16: 2}
# Every C++ source in csrc/ goes into one library (one build, one cache entry, one warning where it fails).
SOURCES = sorted((Path(__file__).parent / "csrc").glob("*.cpp"))
HEADERS = sorted((Path(__file__).parent / "csrc").glob("*.h"))  # what they include: part of the build's name
STALE_LOCK_SECONDS = 300
_lock = threading.Lock()
_gemv: Callable[..., torch.Tensor] | None = None
_tried = False
_off = 0  # > 0 inside `disabled()`


def _cpu_fingerprint() -> str:
    """Names the build after the CPU, because -march=native code can crash on another one (shared homes)."""
    flags = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features", "model name")):
                flags += line
    except OSError:
        pass
    return hashlib.sha256(f"{flags}|{torch.__version__}".encode()).hexdigest()[:12]


def build_name() -> str:
    """The build's name: the CPU, torch's version and the kernels' sources and headers, so that a changed one is rebuilt
    (torch's builder would otherwise load the cached library of the old one)."""
    source = hashlib.sha256(b"".join(p.read_bytes() for p in SOURCES + HEADERS)).hexdigest()[:8]
    return f"gpt2_gemv_{_cpu_fingerprint()}_{source}"


def _build() -> Callable[..., torch.Tensor] | None:
    if os.environ.get("GPT2_CPU_KERNELS", "1") == "0":
        return None
    if not sys.platform.startswith("linux"):
        return None  # torch's OpenMP runtime and a matching compiler are only a given on Linux
    arch = {"x86_64": ["-march=native"], "aarch64": ["-mcpu=native"]}.get(platform.machine(), [])
    try:
        from torch.utils import cpp_extension

        name = build_name()
        root = os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions"
        build_dir = Path(root) / name
        build_dir.mkdir(parents=True, exist_ok=True)
        # torch's builder waits, without limit, for the lock file of a build in progress; a build killed
        # outright (SIGKILL, power loss) leaves it behind and every later run would hang. A build takes ~10 s.
        lock = build_dir / "lock"
        if lock.exists() and time.time() - lock.stat().st_mtime > STALE_LOCK_SECONDS:
            lock.unlink(missing_ok=True)
        if not (build_dir / f"{name}.so").exists():  # the first decode on this machine waits for the compiler
            report(f"gpt2: compiling the CPU kernels once for this machine (about 10 s; cached in {build_dir})")
        cpp_extension.load(
            name=name,
            sources=[str(p) for p in SOURCES],
            extra_cflags=["-O3", "-fopenmp", *arch],  # OpenMP: the threads of torch's own parallel_for
            extra_ldflags=["-fopenmp"],
            build_directory=str(build_dir),
            is_python_module=False,
        )
        FAST_ROWS[torch.bfloat16] = torch.ops.gpt2_kernels.bf16_fast_rows()
        return torch.ops.gpt2_kernels.gemv
    except Exception as e:  # compiler, ninja or headers missing: decoding still works, at torch's speed
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        warnings.warn(
            f"gpt2: the CPU kernels could not be built ({reason[:200]}); using torch's matmul, 2-3x slower for "
            "batch-1 float32 decoding, and for int8 weights torch's matmul of dequantised copies, correct but slower "
            "than float32; training's loss and the GELU use torch's ops, correct but slower. Set GPT2_CPU_KERNELS=0 "
            "to skip the attempt.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


def gemv_kernel() -> Callable[..., torch.Tensor] | None:
    """The compiled kernel `gemv(x, weight, bias)`, built on the first call; None where it cannot be."""
    global _gemv, _tried
    if not _tried:
        with _lock:
            if not _tried:
                _gemv = _build()
                _tried = True
    return _gemv


def gemv_int8_kernel() -> Callable[..., torch.Tensor] | None:
    """The compiled kernel `gemv_int8(x, weight, scale, bias)` (built with `gemv`); None where it cannot be."""
    # derived from _gemv, not kept apart, so the two can never disagree (one library registers both)
    return None if gemv_kernel() is None else torch.ops.gpt2_kernels.gemv_int8


def _eager_cpu(x: torch.Tensor) -> bool:
    """What every kernel entry point asks first: a CPU tensor, outside `disabled()` and torch.compile's tracing
    (which traces torch's ops in their place)."""
    return not _off and x.device.type == "cpu" and not torch.compiler.is_compiling()


def softmax_xent_kernel() -> Callable[..., torch.Tensor] | None:
    """The compiled op `softmax_xent_grad_(logits, targets, row_scale, vocab_size) -> loss per row`
    (csrc/cross_entropy.cpp, built with `gemv`) that gpt2.fused_loss uses on the CPU; None where it cannot be
    built and inside `disabled()`."""
    return None if _off or gemv_kernel() is None else torch.ops.gpt2_kernels.softmax_xent_grad_


class _GeluTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.ops.gpt2_kernels.gelu_tanh(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return torch.ops.gpt2_kernels.gelu_tanh_backward(grad.to(x.dtype), x)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """F.gelu(x, approximate="tanh"), GPT-2's activation, through csrc/gelu.cpp (forward and gradient) for float32
    and bfloat16 CPU tensors; torch's kernel elsewhere, under torch.compile (which fuses it) and in `disabled()`."""
    if _eager_cpu(x) and x.dtype in (torch.float32, torch.bfloat16) and gemv_kernel() is not None:
        if torch.is_grad_enabled() and x.requires_grad:
            return _GeluTanh.apply(x)
        return torch.ops.gpt2_kernels.gelu_tanh(x)
    return F.gelu(x, approximate="tanh")


class _CausalAttention(torch.autograd.Function):
    """Causal self-attention of the fused projection's output, forward and backward through csrc/attention.cpp
    (which reads q, k and v in place from qkv, writes the output whole and the gradient of qkv whole, with no
    split, transpose or concatenation between)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, qkv: torch.Tensor, n_head: int) -> torch.Tensor:
        y, lse = torch.ops.gpt2_kernels.causal_attention_forward(qkv, ATTENTION_HEAD_DIM**-0.5)
        ctx.save_for_backward(qkv, y, lse)
        return y

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_y: torch.Tensor) -> tuple:
        qkv, y, lse = ctx.saved_tensors
        scale = ATTENTION_HEAD_DIM**-0.5  # the forward's (torch's default)
        return torch.ops.gpt2_kernels.causal_attention_backward(grad_y.to(qkv.dtype), qkv, y, lse, scale), None


def causal_attention_applies(qkv: torch.Tensor, n_head: int) -> bool:
    """Whether `causal_attention` takes this fused projection output: training (a gradient wanted) on the CPU,
    heads of 64, the library built; in float32 where torch carries BLAS's sgemm (x86 builds), in bfloat16 where
    oneDNN has the bfloat16 micro-kernels (AMX Xeons) or the CPU AVX512-BF16 (Zen 4, Cooper Lake)."""
    return (
        _eager_cpu(qkv)
        and qkv.dtype in (torch.float32, torch.bfloat16)
        and qkv.dim() == 3
        and qkv.shape[2] == 3 * n_head * ATTENTION_HEAD_DIM
        and torch.is_grad_enabled()
        and qkv.requires_grad
        and gemv_kernel() is not None
        and torch.ops.gpt2_kernels.causal_attention_supported(qkv.dtype)
    )


def causal_attention(qkv: torch.Tensor, n_head: int) -> torch.Tensor:
    """Causal self-attention (no dropout) of qkv (B, T, 3C: queries, keys, values) -> (B, T, C), where
    `causal_attention_applies`: forward and backward through csrc/attention.cpp."""
    return _CausalAttention.apply(qkv, n_head)


# Where csrc/matmul.cpp's row split replaces torch's bfloat16 matmul in training: two threads, 768 to 1,200 rows,
# 513 to 768 columns. There the split measured 1.4-1.9x faster than oneDNN 3.12, which runs the 1,024 x 768 products
# on one core (2-core AMX Xeon; inner dimensions 768 and 3,072, and 50,304 for the output layer's input gradient,
# 1.5x). Outside that band (1,536 rows and more, 640 and fewer, 384 columns and fewer, 1,024) it measured from 0.7x
# to 1.8x.
SPLIT_THREADS = 2
SPLIT_ROWS = (768, 1200)
SPLIT_COLUMNS = (513, 768)


def split_rows_applies(rows: int, columns: int) -> bool:
    """Whether a bfloat16 CPU product with this many output rows and columns goes through csrc/matmul.cpp's row
    split: the shapes, thread count and CPU (oneDNN on AMX) it measured faster on (SPLIT_*)."""
    return (
        SPLIT_ROWS[0] <= rows <= SPLIT_ROWS[1]
        and SPLIT_COLUMNS[0] <= columns <= SPLIT_COLUMNS[1]
        and torch.get_num_threads() == SPLIT_THREADS
        and gemv_kernel() is not None
        and torch.ops.gpt2_kernels.split_rows_supported()
    )


def matmul(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b (+ bias) of 2-D a and b, no autograd: through csrc/matmul.cpp's row split for bfloat16 on the CPU where
    `split_rows_applies` (outside `disabled()` and torch.compile's tracing), else torch's."""
    if _eager_cpu(a) and a.dtype == torch.bfloat16 and split_rows_applies(a.shape[0], b.shape[1]):
        return torch.ops.gpt2_kernels.split_rows_matmul(a, b, bias)
    return a @ b if bias is None else torch.addmm(bias, a, b)


class _TrainingLinear(torch.autograd.Function):
    """F.linear under CPU bfloat16 autocast, as autocast runs it (input, weight and bias rounded to bfloat16, the
    products in bfloat16, the weight's and bias's gradients returned in float32), with its forward and input-gradient
    products through `matmul`."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        dtype = torch.bfloat16
        x2, w = x.reshape(-1, x.shape[-1]).to(dtype), weight.to(dtype)
        y = matmul(x2, w.t(), None if bias is None else bias.to(dtype))
        ctx.save_for_backward(x2, w)
        ctx.input_dtype = x.dtype
        return y.view(*x.shape[:-1], w.shape[0])

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_y: torch.Tensor) -> tuple:
        x2, w = ctx.saved_tensors
        g = grad_y.reshape(-1, grad_y.shape[-1]).to(x2.dtype)
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x = matmul(g, w).to(ctx.input_dtype).view(*grad_y.shape[:-1], w.shape[1]) if need_x else None
        grad_w = (g.t() @ x2).float() if need_w else None  # (out, in) at once: contiguous, as a .grad is kept
        grad_b = g.sum(0).float() if need_b else None
        return grad_x, grad_w, grad_b


def training_linear_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `linear` runs through _TrainingLinear: a gradient wanted under CPU bfloat16 autocast, a float32
    weight, and one of its two row-split products applying (the output's columns or, for the input's gradient, the
    input's)."""
    if not (_eager_cpu(x) and torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        return False
    if not (torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16):
        return False
    if weight.dtype != torch.float32 or x.dtype not in (torch.float32, torch.bfloat16) or x.dim() < 2:
        return False
    rows = x.numel() // x.shape[-1]
    return split_rows_applies(rows, weight.shape[0]) or split_rows_applies(rows, weight.shape[1])


@contextmanager
def disabled() -> Iterator[None]:
    """Within this block `linear` is torch's F.linear throughout, `gelu_tanh` torch's F.gelu and the fused loss
    uses torch's ops (for comparisons and debugging)."""
    global _off
    _off += 1
    try:
        yield
    finally:
        _off -= 1


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias), through the kernel when x is a few rows (FAST_ROWS) on the CPU, the weight a
    contiguous (out, in) matrix, both float32 or both bfloat16, and no gradient is wanted (decoding's products);
    through _TrainingLinear's row-split products where `training_linear_applies`; else torch's."""
    if (
        _eager_cpu(x)
        and x.dtype in FAST_ROWS
        and weight.dtype == x.dtype
        and 0 < x.numel() <= FAST_ROWS[x.dtype] * weight.shape[1]
        and weight.is_contiguous()
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    ):
        gemv = gemv_kernel()
        if gemv is not None:
            return gemv(x, weight, bias)
    if training_linear_applies(x, weight):
        with torch.autocast("cpu", enabled=False):
            return _TrainingLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


def dequantize(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The float matrix an int8 weight (out, in) with one scale per row stands for: weight * scale, in dtype."""
    return (weight.to(torch.float32) * scale.to(torch.float32)[:, None]).to(dtype)


def linear_int8(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """F.linear(x, weight * scale[:, None], bias) for int8 weights (out, in) with float32 per-row scales: through
    the kernel for up to INT8_KERNEL_ROWS rows of float32 or bfloat16 on the CPU (decoding, lookahead, small
    batches, short prompts), else through torch's matmul of a dequantised copy (long prompts and evaluation,
    where the matmul's compute outweighs the copy; torch's own int8 matmul, aten._weight_int8pack_mm, measured
    2-30x slower on a CPU of an earlier session)."""
    if (
        _eager_cpu(x)
        and x.dtype in FAST_ROWS
        and 0 < x.numel() <= INT8_KERNEL_ROWS * weight.shape[1]
        and weight.is_contiguous()
    ):
        gemv_int8 = gemv_int8_kernel()
        if gemv_int8 is not None:
            return gemv_int8(x, weight, scale, bias)
    return F.linear(x, dequantize(weight, scale, x.dtype), bias)
