"""Sampling from a GPT: greedy, temperature, top-k (the paper's samples use k=40) and top-p, with a KV cache.

Layers, from the bottom up:
  * iter_tokens: the decoding loop over token ids. Prompts of different lengths are left-padded and masked;
    each step feeds one token per row through a preallocated KV cache, so no step repeats work on the past;
    when a row outgrows the context, the cache is rebuilt from the most recent 3/4 of it.
  * generate_ids (GPT.generate): ids in, ids out.
  * generate / generate_stream: text in, text out, with stop strings, <|endoftext|> and streaming.
"""

from __future__ import annotations

import codecs
import io
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, overload

import torch

from gpt2.errors import GPT2Error
from gpt2.model import GPT


class TextTokenizer(Protocol):
    eot_id: int

    def encode(self, text: str, *, allowed_special: Any = ...) -> list[int]: ...

    def decode_bytes(self, ids: Sequence[int]) -> bytes: ...


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if temperature < 0:
        raise GPT2Error(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise GPT2Error(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise GPT2Error(f"top_p must be in (0, 1], got {top_p}")


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token id per row of logits (B, V): argmax when temperature is 0, else a draw from the
    temperature-scaled distribution restricted to the top_k tokens and then to the top_p probability mass."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is None and (top_p is None or top_p >= 1.0):
        return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator).squeeze(-1)
    if top_k is not None and top_k < logits.size(-1):
        values, indices = torch.topk(logits, top_k, dim=-1)  # sorted, so top-p can work on k values only
    else:
        values, indices = torch.sort(logits, dim=-1, descending=True)
    if top_p is not None and top_p < 1.0:
        probs = torch.softmax(values, dim=-1)
        outside = probs.cumsum(dim=-1) - probs > top_p  # keep the smallest prefix whose mass reaches top_p
        values = values.masked_fill(outside, float("-inf"))
    choice = torch.multinomial(torch.softmax(values, dim=-1), 1, generator=generator)
    return indices.gather(-1, choice).squeeze(-1)


def iter_tokens(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every prompt, (B,) per step, max_new_tokens times (stop early by breaking)."""
    check_sampling(temperature, top_k, top_p)
    if not prompts or any(len(p) == 0 for p in prompts):
        raise GPT2Error("every prompt needs at least one token (use <|endoftext|> for unconditional samples)")
    ctx = model.config.n_positions
    if any(len(p) > ctx for p in prompts):
        longest = max(len(p) for p in prompts)
        warnings.warn(
            f"prompt of {longest} tokens is longer than the context ({ctx}); keeping its last {ctx} tokens",
            stacklevel=3,
        )
        prompts = [p[-ctx:] for p in prompts]
    device = model.lm_head.weight.device
    generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
    B, T0 = len(prompts), max(len(p) for p in prompts)
    total = T0 + max_new_tokens
    tokens = torch.zeros(B, total, dtype=torch.long)
    valid = torch.ones(B, total, dtype=torch.bool)  # False on the left padding of shorter prompts
    for row, p in enumerate(prompts):
        tokens[row, T0 - len(p) : T0] = torch.as_tensor(p, dtype=torch.long)
        valid[row, : T0 - len(p)] = False
    tokens, valid = tokens.to(device), valid.to(device)
    padded = not bool(valid[:, :T0].all())
    cache = model.new_cache(B, min(ctx, total))
    keep = max(1, 3 * ctx // 4)  # when the context is full, restart from the last 3/4 of it

    def prefill(lo: int, hi: int) -> torch.Tensor:
        cache.length = 0
        if not padded:
            return model.forward_cached(tokens[:, lo:hi], cache)
        v = valid[:, lo:hi]
        positions = (v.cumsum(dim=1) - 1).clamp(min=0)  # padding does not advance the position
        causal = torch.ones(hi - lo, hi - lo, dtype=torch.bool, device=device).tril()
        # every query may see itself, so rows of pure padding stay finite (their outputs are never used)
        mask = (causal & v[:, None, None, :]) | torch.eye(hi - lo, dtype=torch.bool, device=device)
        return model.forward_cached(tokens[:, lo:hi], cache, positions, mask)

    lo = 0
    logits = prefill(0, T0)
    next_position = valid[:, :T0].sum(dim=1, keepdim=True)  # (B, 1), used only with padding
    for step in range(max_new_tokens):
        token = sample_next(logits, temperature, top_k, top_p, generator)
        yield token
        cur = T0 + step
        tokens[:, cur] = token
        if step == max_new_tokens - 1:
            break
        if cache.length == cache.max_len:
            lo = cur + 1 - keep
            logits = prefill(lo, cur + 1)
            next_position = valid[:, lo : cur + 1].sum(dim=1, keepdim=True)
        elif padded:
            mask = valid[:, None, None, lo : cur + 1]
            logits = model.forward_cached(tokens[:, cur : cur + 1], cache, next_position, mask)
            next_position = next_position + 1
        else:
            logits = model.forward_cached(tokens[:, cur : cur + 1], cache)


@torch.no_grad()
def generate_ids(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
) -> torch.Tensor:
    """idx (B, T) continued by max_new_tokens tokens -> (B, T + max_new_tokens); see GPT.generate."""
    out = torch.empty(idx.size(0), idx.size(1) + max_new_tokens, dtype=torch.long, device=idx.device)
    out[:, : idx.size(1)] = idx
    steps = iter_tokens(
        model, idx.tolist(), max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed
    )
    for i, token in enumerate(steps):
        out[:, idx.size(1) + i] = token
    return out


class Completion:
    """The text of one sampled row, decoded token by token, cut at the first stop string.

    Incremental UTF-8 decoding keeps a character split across tokens whole; the last len(stop) - 1
    characters are held back until it is certain that they do not begin a stop string.
    """

    def __init__(self, tokenizer: TextTokenizer, stop: Sequence[str], stop_at_eot: bool) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.eot_id = tokenizer.eot_id if stop_at_eot else None
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.pending = ""
        self.out = io.StringIO()
        self.done = False

    def add(self, token: int) -> str:
        """Take one token; return the text that became final."""
        if token == self.eot_id:
            return self.finish()
        window = self.pending + self.decoder.decode(self.tokenizer.decode_bytes([token]))
        hits = [i for i in (window.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.done, self.pending = True, ""
            return self._emit(window[: min(hits)])
        cut = len(window) - self.hold
        self.pending = window[cut:] if cut > 0 else window
        return self._emit(window[:cut] if cut > 0 else "")

    def finish(self) -> str:
        """End the row; return the held-back rest."""
        if self.done:
            return ""
        self.done = True
        rest, self.pending = self.pending + self.decoder.decode(b"", final=True), ""
        hits = [i for i in (rest.find(s) for s in self.stop) if i >= 0]
        return self._emit(rest[: min(hits)] if hits else rest)

    def _emit(self, text: str) -> str:
        self.out.write(text)
        return text

    @property
    def text(self) -> str:
        return self.out.getvalue()


def encode_prompt(tokenizer: TextTokenizer, prompt: str) -> list[int]:
    """Prompt ids; an empty prompt starts from <|endoftext|>, as GPT-2's unconditional samples do."""
    return tokenizer.encode(prompt, allowed_special="all") or [tokenizer.eot_id]


@overload
def generate(model: GPT, tokenizer: TextTokenizer, prompt: str, max_new_tokens: int = ..., **kw: Any) -> list[str]: ...
@overload
def generate(
    model: GPT, tokenizer: TextTokenizer, prompt: list[str], max_new_tokens: int = ..., **kw: Any
) -> list[list[str]]: ...


@torch.no_grad()
def generate(
    model: GPT,
    tokenizer: TextTokenizer,
    prompt: str | list[str],
    max_new_tokens: int = 128,
    *,
    temperature: float = 1.0,
    top_k: int | None = 40,
    top_p: float | None = None,
    seed: int | None = None,
    num_samples: int = 1,
    stop: Sequence[str] = (),
    stop_at_eot: bool = True,
) -> list[str] | list[list[str]]:
    """Continue a prompt (num_samples completions, a list of str) or a list of prompts (one list each).

    The completions exclude the prompt and end at max_new_tokens, at <|endoftext|> (unless stop_at_eot is
    False) or before the first stop string. All rows are decoded together as one padded batch.
    """
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if num_samples < 1:
        raise GPT2Error(f"num_samples must be >= 1, got {num_samples}")
    ids = [encode_prompt(tokenizer, p) for p in prompts for _ in range(num_samples)]
    rows = [Completion(tokenizer, stop, stop_at_eot) for _ in ids]
    steps = iter_tokens(model, ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    for tokens in steps:
        for row, token in zip(rows, tokens.tolist(), strict=True):
            if not row.done:
                row.add(token)
        if all(row.done for row in rows):
            break
    for row in rows:
        row.finish()
    texts = [row.text for row in rows]
    grouped = [texts[i : i + num_samples] for i in range(0, len(texts), num_samples)]
    return grouped[0] if isinstance(prompt, str) else grouped


@torch.no_grad()
def generate_stream(
    model: GPT,
    tokenizer: TextTokenizer,
    prompt: str,
    max_new_tokens: int = 128,
    *,
    temperature: float = 1.0,
    top_k: int | None = 40,
    top_p: float | None = None,
    seed: int | None = None,
    stop: Sequence[str] = (),
    stop_at_eot: bool = True,
) -> Iterator[str]:
    """Like generate for one prompt and one sample, yielding pieces of text as soon as they are final."""
    row = Completion(tokenizer, stop, stop_at_eot)
    steps = iter_tokens(
        model,
        [encode_prompt(tokenizer, prompt)],
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
    )
    for tokens in steps:
        if piece := row.add(int(tokens[0])):
            yield piece
        if row.done:
            return
    if piece := row.finish():
        yield piece
