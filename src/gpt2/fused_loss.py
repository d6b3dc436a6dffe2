"""The output layer and its cross-entropy fused, for training: logits are made a chunk of rows at a time and
never whole, and the gradient of each chunk's logits is computed in the forward pass, then folded into the
gradients of the hidden states and of the weight before the next chunk (as Liger-Kernel's fused linear
cross-entropy does on GPUs).

Why: with GPT-2's 50,257-token vocabulary the output layer is most of a small model's compute, and the plain
path (a (B*T, V) float32 logits tensor, log-softmax, its backward) also walks that tensor about ten times through
memory. Here each chunk's logits are written once by the matmul, turned into their gradient in place, and read
by the two backward matmuls; the backward pass only scales the saved gradients. On the CPU, for float32 and
bfloat16 logits, that in-place step is one C++ op (csrc/cross_entropy.cpp, via gpt2.kernels): torch's ops
(a float32 copy, logsumexp, exp, scatter, the copy back) walk each chunk about ten times through memory and
measured about as slow as the matmuls around them; the op reads and writes each row once (its later passes
find the row in the core's cache). Elsewhere (GPUs, float64, no compiler, under
torch.compile, `kernels.disabled()`) torch's ops do it.

The arithmetic is the plain path's: logits rounded to the autocast dtype when autocast is on (as the plain
path's lm_head would produce them), softmax and loss in float32, the logits' gradient rounded to the autocast
dtype before the backward matmuls. Rows of `weight` past `vocab_size` (padding that aligns the matmul) take no
part in the softmax and get a zero gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from gpt2 import kernels

# Rows of logits per chunk: the float32 chunk stays under this many bytes. Large enough that the weight, read
# twice per chunk, costs little next to the chunk's own logits; small enough to bound memory to a fraction of
# the whole (B*T, V) tensor (412 MB at 2 x 1024 tokens of GPT-2's vocabulary).
CHUNK_BYTES = 128 * 2**20
# The same where csrc/cross_entropy.cpp does the elementwise work (training on the CPU, float32 or bfloat16).
# There the chunk costs little beyond its matmuls, and what each chunk adds is fixed: the weight read twice, the
# weight gradient's (V, C) product written and added into the float32 sum (77 MB of float32 at GPT-2's
# vocabulary and width 384), and a matmul whose inner dimension is the chunk's rows: larger chunks amortise it.
# Measured at gpt2-mini 16 x 256 on a 2-core AVX-512 CPU, bfloat16 autocast, tokens/s: 64 MB 972, 128 MB 1042,
# 256 MB 1102, 512 MB 1224, 1 GB 1203 (float32: 701-721 from 128 MB to 1 GB, flat). The bfloat16 chunk this
# allows is 256 MB, the size of the whole bfloat16 logits of 2,668 tokens, which the plain path holds.
KERNEL_CHUNK_BYTES = 512 * 2**20


def default_chunk_rows(padded_vocab: int, chunk_bytes: int | None = None) -> int:
    """Rows per chunk so that one chunk of float32 logits fills chunk_bytes (default CHUNK_BYTES)."""
    return max(1, (chunk_bytes or CHUNK_BYTES) // (4 * padded_vocab))


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the output matmul runs in: autocast's where it is on for x's device, else x's."""
    device = x.device.type
    if torch.is_autocast_enabled(device) and x.dtype == torch.float32:
        return torch.get_autocast_dtype(device)
    return x.dtype


def _chunk_loss(
    logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, vocab_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row log-sum-exp of the real columns and the summed loss of the valid rows of one float32 chunk."""
    real = logits[:, :vocab_size]
    lse = torch.logsumexp(real, dim=1)
    picked = real.gather(1, targets.clamp(min=0).unsqueeze(1)).squeeze(1)
    return lse, torch.where(valid, lse - picked, 0.0).sum()


def _chunk_loss_grad_(
    logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, row_scale: torch.Tensor, vocab_size: int
) -> torch.Tensor:
    """The summed loss of one float32 chunk, its logits turned in place into the loss's gradient:
    softmax * row_scale - onehot(target) * row_scale, zero in the padding columns (torch's ops; what
    csrc/cross_entropy.cpp does in one pass per row on the CPU)."""
    lse, chunk_loss = _chunk_loss(logits, targets, valid, vocab_size)
    real = logits[:, :vocab_size]
    real.sub_((lse - row_scale.log()).unsqueeze(1)).exp_()  # ignored rows: exp(-inf) = 0
    real.scatter_add_(1, targets.clamp(min=0).unsqueeze(1), -row_scale.unsqueeze(1))
    if vocab_size < logits.shape[1]:
        logits[:, vocab_size:] = 0.0
    return chunk_loss


def _xent_kernel(x: torch.Tensor, dtype: torch.dtype) -> Callable[..., torch.Tensor] | None:
    """csrc/cross_entropy.cpp's op where it applies: CPU tensors of float32 or bfloat16, not under torch.compile
    (which traces the torch path instead), the library built and not turned off (gpt2.kernels)."""
    if x.device.type != "cpu" or dtype not in (torch.float32, torch.bfloat16) or torch.compiler.is_compiling():
        return None
    return kernels.softmax_xent_kernel()


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        vocab_size: int,
        ignore_index: int,
        chunk_rows: int,
        dtype: torch.dtype,
        kernel: Callable[..., torch.Tensor] | None,
    ) -> torch.Tensor:
        acc = torch.promote_types(dtype, torch.float32)  # softmax and loss: float32 at least
        valid = targets != ignore_index
        # 1 / (number of counted rows) per row, 0 for ignored ones: the mean's weights, folded into the gradient
        row_scale = valid.to(acc) / valid.sum().clamp(min=1)
        kernel_targets = torch.where(valid, targets, -1) if kernel is not None else None  # the op: < 0 = ignored
        w = weight.to(dtype)
        grad_x = torch.empty_like(x)
        grad_w = None
        loss = torch.zeros((), device=x.device, dtype=acc)
        with torch.autocast(x.device.type, enabled=False):
            for start in range(0, x.shape[0], chunk_rows):
                end = min(start + chunk_rows, x.shape[0])
                xs, t, v, s = x[start:end].to(dtype), targets[start:end], valid[start:end], row_scale[start:end]
                if kernel is not None:  # the logits in dtype become their gradient in place, in one C++ op
                    g = xs @ w.t()
                    loss += kernel(g, kernel_targets[start:end], s, vocab_size).sum()
                else:  # torch's ops, in float32 (at least) and then rounded to dtype
                    logits = (xs @ w.t()).to(acc)
                    loss += _chunk_loss_grad_(logits, t, v, s, vocab_size)
                    g = logits.to(dtype)
                grad_x[start:end] = kernels.matmul(g, w)  # torch's, or its row split where that is faster
                if grad_w is None:  # the first chunk's product is the sum so far (no zeros to add it to)
                    grad_w = (g.t() @ xs).to(acc)
                elif dtype == acc:
                    grad_w.addmm_(g.t(), xs)
                else:  # the product in dtype, added in float32 without a float32 copy of it
                    grad_w.add_(g.t() @ xs)
        if grad_w is None:  # no rows
            grad_w = torch.zeros_like(weight, dtype=acc)
        ctx.save_for_backward(grad_x, grad_w.to(weight.dtype))
        return loss / valid.sum()

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_loss: torch.Tensor) -> tuple:
        grad_x, grad_w = ctx.saved_tensors
        # No new (V, C) gradient (154 MB in float32 at GPT-2's width 768): the saved ones are this op's own, used
        # nowhere else. Where the loss was not scaled (grad_loss 1, read without a device sync on the CPU, and not
        # under torch.compile, where reading it would break the graph) they go out as they are; else they are
        # scaled in place (a second backward through a retained graph then fails on their version counter rather
        # than scale them twice).
        unscaled = grad_loss.device.type == "cpu" and not torch.compiler.is_compiling() and grad_loss.item() == 1.0
        if not unscaled:
            grad_x.mul_(grad_loss)
            grad_w.mul_(grad_loss)
        return grad_x, grad_w, None, None, None, None, None, None


def linear_cross_entropy(
    x: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    vocab_size: int | None = None,
    ignore_index: int = -1,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of the logits x @ weight[:vocab_size].T against targets, never holding them whole.

    x (N, C) hidden states, weight (V_padded, C), targets (N,) with ignore_index where no loss is counted. Equal
    to F.cross_entropy(x @ weight[:vocab_size].T, targets, ignore_index=ignore_index) and to its gradients up to
    float32 rounding; NaN when every target is ignored, as there.
    """
    vocab_size = weight.shape[0] if vocab_size is None else vocab_size
    dtype = _compute_dtype(x)
    train = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    kernel = _xent_kernel(x, dtype) if train else None  # the C++ op serves training's gradient only
    if chunk_rows is None:  # as many rows as the chunk's bytes allow, in chunks of equal size (no small remainder)
        most = default_chunk_rows(weight.shape[0], KERNEL_CHUNK_BYTES if kernel is not None else CHUNK_BYTES)
        rows = x.shape[0]
        chunk_rows = -(-rows // -(-rows // most)) if rows else most
    if train:
        return _LinearCrossEntropy.apply(x, weight, targets, vocab_size, ignore_index, chunk_rows, dtype, kernel)
    # no gradient wanted (evaluation): the same chunked loss, without the gradient's work
    acc = torch.promote_types(dtype, torch.float32)
    valid = targets != ignore_index
    w = weight.to(dtype)
    loss = torch.zeros((), device=x.device, dtype=acc)
    with torch.autocast(x.device.type, enabled=False):
        for start in range(0, x.shape[0], chunk_rows):
            end = min(start + chunk_rows, x.shape[0])
            logits = (x[start:end].to(dtype) @ w.t()).to(acc)
            loss += _chunk_loss(logits, targets[start:end], valid[start:end], vocab_size)[1]
    return loss / valid.sum()
