"""GPT-2: a Transformer decoder, as in "Language Models are Unsupervised Multitask Learners" (2019).

GPT-2's changes to GPT-1's decoder, all visible below:
  * LayerNorm moved to the input of each sub-block (pre-LN), plus one final LayerNorm after the last block;
  * residual output projections initialised with std 0.02 / sqrt(2 * n_layer), one factor per residual add;
  * 1024 tokens of context and a 50,257-token byte-level BPE vocabulary.
Parameter names follow OpenAI's release as Hugging Face writes it (transformer.h.0.attn.c_attn, ...), so that
checkpoints map one to one; only the four projection matrices are stored transposed there (see checkpoint.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt2 import checkpoint, fused_loss, kernels, quantize
from gpt2.errors import GPT2Error


@dataclass
class GPTConfig:
    vocab_size: int = 50257
    n_positions: int = 1024  # context length
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0  # one rate for embeddings, attention weights and residual branches
    layer_norm_epsilon: float = 1e-5

    def __post_init__(self) -> None:
        for f in ("vocab_size", "n_positions", "n_layer", "n_head", "n_embd"):
            if not isinstance(getattr(self, f), int) or getattr(self, f) < 1:
                raise GPT2Error(f"GPTConfig.{f} must be a positive integer, got {getattr(self, f)!r}")
        if self.n_embd % self.n_head:
            raise GPT2Error(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise GPT2Error(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> GPTConfig:
        """A preset by name (see PRESETS), with any field overridden."""
        if name not in PRESETS:
            raise GPT2Error(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise GPT2Error(f"unknown GPTConfig fields: {', '.join(sorted(unknown))}")
        return cls(**d)


# The paper's four sizes (Table 2) and two small shapes for CPU work. All keep GPT-2's shape rules:
# head dimension 64, MLP 4x wide, vocabulary 50257 and context 1024 unless a run overrides them.
PRESETS: dict[str, dict[str, int]] = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 355M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
    "gpt2-mini": dict(n_layer=6, n_head=6, n_embd=384),  # 30M with GPT-2's vocabulary, 11M without it
    "gpt2-tiny": dict(n_layer=4, n_head=4, n_embd=256),  # 16M with GPT-2's vocabulary, 3M without it
}


class KVCache:
    """Keys and values of every layer, preallocated for `max_len` positions so decoding never copies them.

    Shape (n_layer, batch, n_head, max_len, head_dim); `length` positions are filled, shared by the batch
    (prompts of different lengths are left-padded and masked instead). The model appends through `update` and
    `advance`; its users reset it, roll it back, or fill it from rows of another cache.
    """

    def __init__(
        self, config: GPTConfig, batch_size: int, max_len: int, device: torch.device, dtype: torch.dtype
    ) -> None:
        shape = (config.n_layer, batch_size, config.n_head, max_len, config.head_dim)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0

    @property
    def room(self) -> int:
        """Positions that can still be appended."""
        return self.max_len - self.length

    def reset(self) -> None:
        """Forget every position (the tensors are reused)."""
        self.length = 0

    def rollback(self, n: int) -> None:
        """Forget the last n positions (drafts that were not accepted); the next append overwrites them."""
        if not 0 <= n <= self.length:
            raise GPT2Error(f"cannot roll back {n} of the {self.length} cached positions")
        self.length -= n

    def copy_rows(self, source: KVCache, rows: torch.Tensor) -> None:
        """Fill this cache's row i with row rows[i] of source's filled positions: a prefix cached once, then
        continued in several ways."""
        n = source.length
        if n > self.max_len or len(rows) != self.k.size(1):
            raise GPT2Error(f"cannot copy {len(rows)} rows of {n} positions into a cache of {tuple(self.k.shape)}")
        self.k[:, :, :, :n] = source.k[:, rows, :, :n]
        self.v[:, :, :, :n] = source.v[:, rows, :, :n]
        self.length = n

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one layer's keys and values (B, n_head, T, head_dim) after the filled positions; return that
        layer's keys and values so far. `advance(T)` makes them count once every layer has written."""
        start, end = self.length, self.length + k.size(2)
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def causal_mask(self, n: int, device: torch.device) -> torch.Tensor | None:
        """The attention mask (n, length + n) of n new positions after the filled ones, True where allowed; None
        where attention needs no mask (one new position sees everything; none filled: plain causal)."""
        if n <= 1 or self.length == 0:
            return None
        return torch.ones(n, self.length + n, dtype=torch.bool, device=device).tril(diagonal=self.length)


class Linear(nn.Linear):
    """nn.Linear whose decoding-sized products (a few rows of float32 or bfloat16, CPU, no grad) run on
    gpt2.kernels' GEMV, which reads the weights at about twice the bandwidth of torch's; the rest is torch's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.linear(x, self.weight, self.bias)


# The vocabulary matrix's rows are padded to a multiple of this (50,257 -> 50,304, nanoGPT's trick): the output
# matmul's long side then splits evenly into the tiles of GPU kernels. The padding rows are zeros that no token
# looks up, take no part in the softmax and get no gradient (so weight decay and Adam leave them at zero); state
# dicts, checkpoints, logits and samples never see them.
PAD_VOCAB_TO = 64


class _PaddedRows(nn.Module):
    """For the two modules holding the tied vocabulary matrix: rows past `vocab_size` are padding, left out of
    state dicts and added back (as zeros) on load, so checkpoints keep the vocabulary's own shape."""

    vocab_size: int
    weight: nn.Parameter

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        key = prefix + "weight"
        if key in destination and destination[key].shape[0] > self.vocab_size:
            destination[key] = destination[key][: self.vocab_size]

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        key, rows = prefix + "weight", self.weight.shape[0]
        tensor = state_dict.get(key)
        if isinstance(tensor, torch.Tensor) and tensor.dim() == 2 and tensor.shape[0] == self.vocab_size < rows:
            state_dict[key] = torch.cat([tensor, tensor.new_zeros(rows - self.vocab_size, tensor.shape[1])])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class VocabEmbedding(_PaddedRows, nn.Embedding):
    """The token embedding, `padded_rows` long of which the first `vocab_size` are tokens."""

    def __init__(self, vocab_size: int, padded_rows: int, n_embd: int) -> None:
        super().__init__(padded_rows, n_embd)
        self.vocab_size = vocab_size

    def forward(self, idx: torch.Tensor, sparse_grad: bool = False) -> torch.Tensor:
        """The rows of idx. sparse_grad: the caller adds a dense gradient of this matrix in the same backward (GPT's
        tied output layer), so a sparse one of the looked-up rows suffices; taken when training on the CPU.

        The dense lookup gradient zeroes and then adds all 50,304 rows (at 124M, 2 x 1024 tokens, 25 against 2 ms on
        a 2-core AMX Xeon; +1.6% a bf16 step of 1 x 1024). Alone, a sparse gradient would be the parameter's, which
        fused AdamW refuses: hence the caller's word. Not a module-level `sparse=True`: DistributedDataParallel would
        then expect a sparse gradient for the parameter. Not under torch.compile, which traces dense gradients only.
        """
        sparse = (
            sparse_grad
            and idx.device.type == "cpu"
            and torch.is_grad_enabled()
            and self.weight.requires_grad
            and not torch.compiler.is_compiling()
        )
        return F.embedding(idx, self.weight, sparse=sparse)


class OutputLayer(_PaddedRows, Linear):
    """The output layer (tied to the embedding): logits of the `vocab_size` real tokens only, through a
    contiguous view of the weight's first rows, so every caller gets exactly the vocabulary's logits."""

    def __init__(self, n_embd: int, padded_rows: int, vocab_size: int) -> None:
        super().__init__(n_embd, padded_rows, bias=False)
        self.vocab_size = vocab_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.linear(x, self.weight[: self.vocab_size], None)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer  # which of the KV cache's layers is this one's
        self.n_head = config.n_head
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd)  # query, key, value projections at once
        self.c_proj = Linear(config.n_embd, config.n_embd)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        B, T, C = x.shape
        qkv = self.c_attn(x)
        plain_causal = cache is None and attn_mask is None and T > 1 and not (self.training and self.dropout > 0)
        if plain_causal and kernels.causal_attention_applies(qkv, self.n_head):  # CPU training
            return self.resid_dropout(self.c_proj(kernels.causal_attention(qkv, self.n_head)))
        q, k, v = qkv.split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is not None:  # append this step's keys/values, then attend over everything so far
            k, v = cache.update(self.layer, k, v)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=attn_mask is None and T > 1,  # callers pass a mask whenever T > 1 and keys precede q
        )
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # GPT-2 uses the tanh approximation of GELU ("gelu_new" in Hugging Face's naming).
        return self.dropout(self.c_proj(kernels.gelu_tanh(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, attn_mask)  # pre-LN: normalise the input of each sub-block
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.padded_vocab = -(-config.vocab_size // PAD_VOCAB_TO) * PAD_VOCAB_TO
        self.transformer = nn.ModuleDict(
            dict(
                wte=VocabEmbedding(config.vocab_size, self.padded_vocab, config.n_embd),
                wpe=nn.Embedding(config.n_positions, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon),
            )
        )
        self.lm_head = OutputLayer(config.n_embd, self.padded_vocab, config.vocab_size)
        self.lm_head.weight = self.transformer.wte.weight  # tied: the output layer reuses the embedding
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # 2 residual adds per block accumulate: scale by 1/sqrt(2N)
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        with torch.no_grad():
            self.transformer.wte.weight[config.vocab_size :] = 0.0

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        """Number of parameters, the tied embedding counted once (124,439,808 for `gpt2`)."""
        padding = (self.padded_vocab - self.config.vocab_size) * self.config.n_embd  # not parameters of the model
        return sum(p.numel() for p in self.parameters()) - padding

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, return_logits: bool = True
    ) -> torch.Tensor | tuple[torch.Tensor | None, torch.Tensor]:
        """Logits (B, T, vocab) for token ids (B, T); with targets (B, T) also the mean cross-entropy.

        Targets equal to -1 are ignored in the loss (padding). With targets and return_logits=False the pair is
        (None, loss), the loss computed by gpt2.fused_loss without ever holding the (B*T, vocab) logits: what
        training uses, the same loss and gradients at a fraction of the output layer's memory traffic.
        """
        tied = self.lm_head.weight is self.transformer.wte.weight  # its dense gradient joins the lookup's
        h = self.hidden_states(idx, sparse_lookup=tied)
        if targets is None:
            return self.lm_head(h)
        if not return_logits:
            weight, vocab = self.lm_head.weight, self.config.vocab_size
            return None, fused_loss.linear_cross_entropy(h.flatten(0, 1), weight, targets.flatten(), vocab)
        logits = self.lm_head(h)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1)
        return logits, loss

    def forward_cached(
        self,
        idx: torch.Tensor,
        cache: KVCache,
        position_ids: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the new tokens idx (B, T) after the `cache.length` cached ones; logits of the last position (B, V).

        position_ids (B, T) default to cache.length + arange(T); attn_mask (B, 1, T, cache.length + T), True
        where attention is allowed, is needed for padding or when T > 1 follows cached positions.
        """
        return self.lm_head(self.hidden_states(idx, cache, position_ids, attn_mask)[:, -1])

    def hidden_states(
        self,
        idx: torch.Tensor,
        cache: KVCache | None = None,
        position_ids: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        *,
        sparse_lookup: bool = False,
    ) -> torch.Tensor:
        """The final LayerNorm's outputs (B, T, n_embd) for token ids (B, T); lm_head of them are the logits.

        Scoring needs the logits of a few positions only and projects just those, skipping most of the
        vocabulary matmul (a third of GPT-2 small's compute). With a cache this runs as forward_cached does.
        sparse_lookup: the token embedding's gradient may be sparse (VocabEmbedding), for callers that also put the
        tied output layer in the graph.
        """
        B, T = idx.shape
        start = 0 if cache is None else cache.length
        if cache is None and self.config.n_positions < T:
            raise GPT2Error(f"sequence of {T} tokens is longer than the context ({self.config.n_positions})")
        if cache is not None and cache.room < T:
            raise GPT2Error(f"KV cache holds {cache.max_len} positions; {start + T} were asked for")
        if position_ids is None:
            position_ids = torch.arange(start, start + T, device=idx.device).expand(B, T)
        if cache is not None and attn_mask is None:
            attn_mask = cache.causal_mask(T, idx.device)
        x = self.transformer.drop(self.transformer.wte(idx, sparse_lookup) + self.transformer.wpe(position_ids))
        for block in self.transformer.h:
            x = block(x, cache, attn_mask)
        if cache is not None:
            cache.advance(T)
        return self.transformer.ln_f(x)

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache on this model's device and dtype."""
        p = self.transformer.wte.weight  # the activations' dtype, also when the output layer is int8
        return KVCache(self.config, batch_size, max_len or self.config.n_positions, p.device, p.dtype)

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        lookahead: int = 0,
    ) -> torch.Tensor:
        """Continue each row of idx (B, T) by max_new_tokens sampled tokens -> (B, T + max_new_tokens).

        temperature=0 is greedy decoding; lookahead=k (one row) checks k tokens drafted from earlier in the
        text per forward pass. See gpt2.generate for text, streaming, padding and stop strings.
        """
        # A convenience over gpt2.generate, which sits above this module: imported here, and gpt2.generate
        # imports nothing of this module at run time, so the two make no import circle.
        from gpt2.generate import SamplingOptions, generate_ids

        options = SamplingOptions(temperature, top_k, top_p, seed, lookahead)
        return generate_ids(self, idx, max_new_tokens, options)

    @classmethod
    def from_pretrained(
        cls,
        path_or_name: str | Path,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
    ) -> GPT:
        """Load a Hugging Face GPT-2 folder (config.json + model.safetensors or pytorch_model.bin), or download
        the official weights by name: gpt2, gpt2-medium, gpt2-large, gpt2-xl.

        dtype="int8" quantises the decoder's matrices and the output layer to int8 as it loads (gpt2.quantize;
        the rest stays float32). A folder saved from such a model loads as int8, exactly as it was saved, when
        dtype is None or "int8"; any other dtype for it is refused rather than silently dequantised."""
        int8 = dtype in ("int8", torch.int8)
        if isinstance(dtype, str) and not int8:
            raise GPT2Error(f"dtype must be a torch dtype or 'int8', got {dtype!r}")
        folder = checkpoint.resolve(path_or_name)
        settings = checkpoint.read_config(folder)
        try:
            config = GPTConfig(**settings)
        except GPT2Error as e:
            raise GPT2Error(f"{folder / 'config.json'}: {e}") from None
        quantized = checkpoint.read_quantization(folder)
        if quantized is not None:
            quantize.check_format(quantized, str(folder / "config.json"))
            if dtype is not None and not int8:
                raise GPT2Error(f"{folder} holds int8 weights; load it with dtype='int8' (or --dtype int8)")
        tensors, source = checkpoint.read_tensors(folder)
        with torch.device("meta"):  # no time spent on random init of weights that are overwritten next
            model = cls(config)
            if quantized is not None:
                quantize.int8_skeleton(model)
        skeleton = model.state_dict()
        expected = {k: v.shape for k, v in skeleton.items() if k != checkpoint.TIED or quantized is not None}
        int8_names = {k for k, v in skeleton.items() if v.dtype == torch.int8}
        state = checkpoint.hf_to_ours(tensors, expected, config.n_layer, source, int8=int8_names)
        if quantized is not None:
            quantize.check_scales(state, str(source))
        model.load_state_dict(state, strict=False, assign=True)
        if quantized is None:
            model.lm_head.weight = model.transformer.wte.weight  # assign=True replaced wte; re-tie
        float_dtype = torch.float32 if int8 or dtype is None else dtype
        model = model.to(device=device or "cpu", dtype=float_dtype)  # int8 tensors keep their dtype
        if int8 and quantized is None:
            quantize.quantize_int8(model)
        return model.eval()

    def save_pretrained(self, path: str | Path, tokenizer: Any = None) -> None:
        """Write config.json + model.safetensors in Hugging Face's GPT-2 layout (and the tokenizer files)."""
        quantization = quantize.FORMAT if quantize.is_quantized(self) else None
        checkpoint.write_model_folder(path, self.state_dict(), self.config.to_dict(), tokenizer, quantization)
