"""Weight-only int8 quantisation for decoding: one byte per weight instead of four (float32) or two (bfloat16).

Decoding reads every weight once per token, so on a CPU its speed is memory bandwidth and a quarter of the
bytes is the next step after bfloat16. Each of the decoder's four matrices per block and the output layer is
stored as int8 with one float32 scale per output row (symmetric: scale = max |w| of the row / 127, no zero
point), and multiplied by gpt2.kernels.linear_int8, which widens the weights in registers and accumulates in
float32; activations, LayerNorms, biases and the embeddings stay in floating point. The output layer is tied to
the token embedding, so it gets its own int8 copy of the vocabulary's rows while the embedding lookup keeps the
float matrix (a lookup reads one row per token, so its size costs no speed).

Per-row scales were measured against per-group ones as the issue asked (README, "int8 decoding"); rows suffice
for GPT-2's matrices, so there is one format. A quantised model saves as a model folder whose config.json
carries a `quantization` entry (FORMAT) and whose model.safetensors holds each int8 matrix beside its
`<name>.weight_scale`; `GPT.from_pretrained` reads it back exactly. Only this package reads that format.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from gpt2 import kernels
from gpt2.errors import GPT2Error

if TYPE_CHECKING:
    from gpt2.model import GPT

# config.json's `quantization` entry for a quantised folder; a folder with any other entry is refused.
FORMAT: dict[str, Any] = {"method": "int8-weight-only", "scales": "per-output-row", "symmetric": True, "version": 1}
QMAX = 127  # -128 is left out, so that w and -w quantise alike


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 q and float32 scale (one per row) with q * scale[:, None] the nearest such matrix to weight (out, in)."""
    w = weight.detach().to(torch.float32)
    scale = w.abs().amax(dim=1) / QMAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row: any scale is exact
    q = torch.round(w / scale[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
    return q.contiguous(), scale.contiguous()


class Int8Linear(nn.Module):
    """y = x (weight * weight_scale[:, None])^T + bias with weight int8 (out, in) and weight_scale float32 (out,).

    Inference only: the weights are frozen (int8 tensors cannot take gradients)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        # A parameter rather than a buffer, so that parameter counts and byte counts include it; Module.to(dtype)
        # converts floating-point tensors only, so the weight stays int8 whatever dtype the model moves to.
        self.weight = nn.Parameter(
            torch.empty(out_features, in_features, dtype=torch.int8, device=device), requires_grad=False
        )
        self.register_buffer("weight_scale", torch.empty(out_features, dtype=torch.float32, device=device))
        self.bias = (
            nn.Parameter(torch.empty(out_features, dtype=dtype, device=device), requires_grad=False) if bias else None
        )

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> Int8Linear:
        """The int8 layer for a float weight (out, in) and bias."""
        out_features, in_features = weight.shape
        layer = cls(in_features, out_features, bias is not None, device=weight.device, dtype=weight.dtype)
        q, scale = quantize_rows(weight)
        with torch.no_grad():
            layer.weight.copy_(q)
            layer.weight_scale.copy_(scale)
            if bias is not None:
                layer.bias.copy_(bias.detach())
        return layer

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float matrix this layer stands for (the plain-PyTorch reference of its products)."""
        return kernels.dequantize(self.weight, self.weight_scale, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.linear_int8(x, self.weight, self.weight_scale, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def is_quantized(model: nn.Module) -> bool:
    """Whether `model` holds int8 layers (quantize_int8's work, or a quantised folder loaded)."""
    return any(isinstance(m, Int8Linear) for m in model.modules())


def _decoder_linears(model: GPT) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, layer) for every nn.Linear inside the blocks: the four matrices of each block."""
    found = []
    for parent in model.transformer.h.modules():
        for attr, child in parent.named_children():
            if isinstance(child, nn.Linear):
                found.append((parent, attr, child))
    return found


def quantize_int8(model: GPT) -> GPT:
    """Replace `model`'s decoder matrices and output layer by int8 ones (in place; also returned).

    The output layer becomes an int8 copy of the embedding's first `vocab_size` rows (the embedding may hold
    padding rows past them), untied from the float embedding, which lookups keep using."""
    if is_quantized(model):
        raise GPT2Error("the model is already quantised to int8")
    for parent, attr, layer in _decoder_linears(model):
        setattr(parent, attr, Int8Linear.from_float(layer.weight, layer.bias))
    vocab = model.config.vocab_size
    model.lm_head = Int8Linear.from_float(model.transformer.wte.weight[:vocab], None)
    return model.eval()


def int8_skeleton(model: GPT) -> GPT:
    """Replace the same layers as quantize_int8 by empty int8 ones of the right shapes (in place), for loading a
    quantised folder's tensors into; nothing is computed, so this is instant on the meta device."""
    for parent, attr, layer in _decoder_linears(model):
        new = Int8Linear(layer.in_features, layer.out_features, layer.bias is not None, device=layer.weight.device)
        setattr(parent, attr, new)
    device = model.transformer.wte.weight.device
    model.lm_head = Int8Linear(model.config.n_embd, model.config.vocab_size, bias=False, device=device)
    return model


def check_format(entry: Any, source: str) -> None:
    """Refuse a config.json `quantization` entry this package does not write (another tool's, a newer version)."""
    if entry != FORMAT:
        raise GPT2Error(
            f"{source}: config.json's quantization entry {entry!r} is not one this version reads (expected {FORMAT!r})"
        )


def check_scales(state: dict[str, torch.Tensor], source: str) -> None:
    """Refuse scales that cannot come from quantize_rows (non-finite or not positive): a corrupt file."""
    for name, t in state.items():
        if name.endswith("weight_scale") and not bool(torch.isfinite(t).all() and (t > 0).all()):
            raise GPT2Error(f"{source}: {name} holds scales that are not finite and positive; the file is corrupt")
