"""The output layer and its cross-entropy fused, for training: logits are made a chunk of rows at a time and
never whole, and the gradient of each chunk's logits is computed in the forward pass, then folded into the
gradients of the hidden states and of the weight before the next chunk (as Liger-Kernel's fused linear
cross-entropy does on GPUs).

Why: with GPT-2's 50,257-token vocabulary the output layer is most of a small model's compute, and the plain
path (a (B*T, V) float32 logits tensor, log-softmax, its backward) also walks that tensor about ten times through
memory. Here each chunk's logits are written once by the matmul, turned into their gradient in place, and read
by the two backward matmuls; the backward pass only scales the saved gradients.

The arithmetic is the plain path's: logits rounded to the autocast dtype when autocast is on (as the plain
path's lm_head would produce them), softmax and loss in float32, the logits' gradient rounded to the autocast
dtype before the backward matmuls. Rows of `weight` past `vocab_size` (padding that aligns the matmul) take no
part in the softmax and get a zero gradient.
"""

from __future__ import annotations

import torch

# Rows of logits per chunk: the float32 chunk stays under this many bytes. Large enough that the weight, read
# twice per chunk, costs little next to the chunk's own logits; small enough to bound memory to a fraction of
# the whole (B*T, V) tensor (412 MB at 2 x 1024 tokens of GPT-2's vocabulary).
CHUNK_BYTES = 128 * 2**20


def default_chunk_rows(padded_vocab: int) -> int:
    """Rows per chunk so that one chunk of float32 logits fills CHUNK_BYTES."""
    return max(1, CHUNK_BYTES // (4 * padded_vocab))


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
    ) -> torch.Tensor:
        acc = torch.promote_types(dtype, torch.float32)  # softmax and loss: float32 at least
        valid = targets != ignore_index
        # 1 / (number of counted rows) per row, 0 for ignored ones: the mean's weights, folded into the gradient
        row_scale = valid.to(acc) / valid.sum().clamp(min=1)
        w = weight.to(dtype)
        grad_x = torch.empty_like(x)
        grad_w = torch.zeros_like(weight, dtype=acc)
        loss = torch.zeros((), device=x.device, dtype=acc)
        with torch.autocast(x.device.type, enabled=False):
            for start in range(0, x.shape[0], chunk_rows):
                end = min(start + chunk_rows, x.shape[0])
                xs, t, v, s = x[start:end].to(dtype), targets[start:end], valid[start:end], row_scale[start:end]
                logits = (xs @ w.t()).to(acc)
                lse, chunk_loss = _chunk_loss(logits, t, v, vocab_size)
                loss += chunk_loss
                # in place: logits -> softmax * row_scale - onehot(target) * row_scale, the loss's gradient
                real = logits[:, :vocab_size]
                real.sub_((lse - s.log()).unsqueeze(1)).exp_()  # ignored rows: exp(-inf) = 0
                real.scatter_add_(1, t.clamp(min=0).unsqueeze(1), -s.unsqueeze(1))
                if vocab_size < logits.shape[1]:
                    logits[:, vocab_size:] = 0.0
                g = logits.to(dtype)
                grad_x[start:end] = g @ w
                if dtype == acc:
                    grad_w.addmm_(g.t(), xs)
                else:
                    grad_w += (g.t() @ xs).to(acc)
        ctx.save_for_backward(grad_x, grad_w.to(weight.dtype))
        return loss / valid.sum()

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_loss: torch.Tensor) -> tuple:
        grad_x, grad_w = ctx.saved_tensors
        return grad_x * grad_loss, grad_w * grad_loss, None, None, None, None, None


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
    chunk_rows = chunk_rows or default_chunk_rows(weight.shape[0])
    dtype = _compute_dtype(x)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(x, weight, targets, vocab_size, ignore_index, chunk_rows, dtype)
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
