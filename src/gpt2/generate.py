"""Sampling from a GPT: greedy, temperature, top-k (the paper's samples use k=40) and top-p, with a KV cache.

Layers, from the bottom up:
  * candidates / sample_next: the sampling rules, on one step's logits.
  * Decoder: a batch of prompts in one preallocated KV cache. Prompts of different lengths are left-padded and
    masked; each step feeds one token per row, so no step repeats work on the past; when a row outgrows the
    context, the cache is rebuilt from the most recent 3/4 of it.
  * iter_tokens: the sampling loop, one (B,) tensor of new tokens per step; generate_ids (GPT.generate) on top.
  * generate / generate_stream: text in, text out, with stop strings, <|endoftext|> and streaming.
How tokens are chosen travels as one SamplingOptions; the text functions and GPT.generate take its fields as
keywords. This module uses the model only through its methods and imports gpt2.model for type hints alone, so
GPT.generate can call it without an import circle.
"""

from __future__ import annotations

import codecs
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, overload

import torch

from gpt2.errors import GPT2Error

if TYPE_CHECKING:
    from gpt2.model import GPT


class TextTokenizer(Protocol):
    eot_id: int

    def encode(self, text: str, *, allowed_special: Any = ...) -> list[int]: ...

    def decode_bytes(self, ids: Sequence[int]) -> bytes: ...


@dataclass(frozen=True)
class SamplingOptions:
    """How each next token is chosen. temperature 0 is greedy; top_k keeps the k likeliest tokens (the paper's
    samples use 40) and top_p then the smallest set holding that much probability; the same seed gives the same
    draws; lookahead=k checks up to k tokens drafted from earlier in the text per forward pass (one row only:
    the same tokens when greedy, the same distribution when sampling)."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    lookahead: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise GPT2Error(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise GPT2Error(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise GPT2Error(f"top_p must be in (0, 1], got {self.top_p}")
        if self.lookahead < 0:
            raise GPT2Error(f"lookahead must be >= 0, got {self.lookahead}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def candidates(
    logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens that sampling may pick from, per row of logits (B, V): (values, indices), sorted by value,
    with -inf on those outside. top_k keeps the k likeliest; top_p then keeps the smallest prefix whose
    probability mass reaches top_p (at least one token)."""
    if top_k is not None and top_k < logits.size(-1):
        values, indices = torch.topk(logits, top_k, dim=-1)  # sorted, so top-p works on k values only
    else:
        values, indices = torch.sort(logits, dim=-1, descending=True)
    if top_p is not None and top_p < 1.0:
        probs = torch.softmax(values, dim=-1)
        outside = probs.cumsum(dim=-1) - probs >= top_p  # the mass before this token already reaches top_p
        values = values.masked_fill(outside, float("-inf"))
    return values, indices


def sample_next(
    logits: torch.Tensor, options: SamplingOptions, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One token id per row of logits (B, V): argmax when greedy, else a draw from the temperature-scaled
    distribution restricted to candidates(top_k, top_p)."""
    if options.greedy:
        return logits.argmax(dim=-1)
    probs, indices = distribution(logits, options)
    choice = torch.multinomial(probs, 1, generator=generator)
    return (choice if indices is None else indices.gather(-1, choice)).squeeze(-1)


def distribution(logits: torch.Tensor, options: SamplingOptions) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What sampling draws from, per row of logits (B, V), temperature > 0: probabilities, and the token ids
    they belong to (candidates' order), or None when they cover the whole vocabulary in id order."""
    logits = logits.float() / options.temperature
    if options.top_k is None and (options.top_p is None or options.top_p >= 1.0):
        return torch.softmax(logits, dim=-1), None
    values, indices = candidates(logits, options.top_k, options.top_p)
    return torch.softmax(values, dim=-1), indices


class Decoder:
    """Incremental decoding of a batch of prompts (lists of ids) through one preallocated KV cache.

    Prompts of different lengths are left-padded; the padding is masked out of attention and does not advance
    the positions, so each row computes what it would compute alone. Each step feeds one token per row, so no
    step repeats work on the past. When a row outgrows the context, the cache is rebuilt from the most recent
    3/4 of it (a sliding window, re-prefilled once every ctx/4 tokens rather than at every step).
    """

    def __init__(self, model: GPT, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> None:
        if not prompts or any(len(p) == 0 for p in prompts):
            raise GPT2Error("every prompt needs at least one token (use <|endoftext|> for unconditional samples)")
        vocab = model.config.vocab_size
        if any(not 0 <= i < vocab for p in prompts for i in p):
            bad = next(i for p in prompts for i in p if not 0 <= i < vocab)
            raise GPT2Error(f"token id {bad} is outside the model's vocabulary (0..{vocab - 1})")
        ctx = model.config.n_positions
        if any(len(p) > ctx for p in prompts):
            longest = max(len(p) for p in prompts)
            warnings.warn(
                f"prompt of {longest} tokens is longer than the context ({ctx}); keeping its last {ctx} tokens",
                stacklevel=4,
            )
            prompts = [p[-ctx:] for p in prompts]
        self.model = model
        self.device = device = model.lm_head.weight.device
        B, T0 = len(prompts), max(len(p) for p in prompts)
        self.tokens = torch.zeros(B, T0 + max_new_tokens, dtype=torch.long)
        self.valid = torch.ones(B, T0 + max_new_tokens, dtype=torch.bool)  # False on the left padding
        for row, p in enumerate(prompts):
            self.tokens[row, T0 - len(p) : T0] = torch.as_tensor(p, dtype=torch.long)
            self.valid[row, : T0 - len(p)] = False
        self.tokens, self.valid = self.tokens.to(device), self.valid.to(device)
        self.padded = not bool(self.valid[:, :T0].all())
        self.cache = model.new_cache(B, min(ctx, T0 + max_new_tokens))
        self.keep = max(1, 3 * ctx // 4)
        self.lo, self.end = 0, T0  # the cache holds tokens[:, lo:end]
        self.next_position = self.valid[:, :T0].sum(dim=1, keepdim=True)  # (B, 1), used only with padding

    def prefill(self) -> torch.Tensor:
        """Fill the cache with tokens[:, lo:end]; the logits (B, vocab) of the last position."""
        lo, hi = self.lo, self.end
        self.cache.reset()
        if not self.padded:
            return self.model.forward_cached(self.tokens[:, lo:hi], self.cache)
        v = self.valid[:, lo:hi]
        positions = (v.cumsum(dim=1) - 1).clamp(min=0)  # padding does not advance the position
        causal = torch.ones(hi - lo, hi - lo, dtype=torch.bool, device=self.device).tril()
        # every query may see itself, so rows of pure padding stay finite (their outputs are never used)
        mask = (causal & v[:, None, None, :]) | torch.eye(hi - lo, dtype=torch.bool, device=self.device)
        self.next_position = v.sum(dim=1, keepdim=True)
        return self.model.forward_cached(self.tokens[:, lo:hi], self.cache, positions, mask)

    def extend(self, new: torch.Tensor) -> torch.Tensor:
        """Append several tokens (T,) to the one unpadded row at once; the logits (T, vocab) after each of
        them. Needs cache.room >= T."""
        cur, T = self.end, new.numel()
        self.tokens[0, cur : cur + T] = new
        self.end = cur + T
        return self.model.lm_head(self.model.hidden_states(self.tokens[:, cur : cur + T], self.cache))[0]

    def rollback(self, n: int) -> None:
        """Forget the last n tokens (drafts that were not accepted): their cache entries are overwritten next."""
        self.end -= n
        self.cache.rollback(n)

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """Append one token per row (B,); the logits (B, vocab) that follow it."""
        cur = self.end
        self.tokens[:, cur] = token
        self.end = cur + 1
        if self.cache.room == 0:  # context full: slide the window
            self.lo = self.end - self.keep
            return self.prefill()
        if not self.padded:
            return self.model.forward_cached(self.tokens[:, cur : cur + 1], self.cache)
        mask = self.valid[:, None, None, self.lo : cur + 1]
        logits = self.model.forward_cached(self.tokens[:, cur : cur + 1], self.cache, self.next_position, mask)
        self.next_position = self.next_position + 1
        return logits


class NgramLookup:
    """Drafts for prompt-lookup decoding: find the text's last n tokens (n = max_n down to min_n) earlier in
    the text and propose the tokens that followed their most recent occurrence. Text repeats itself (names,
    code, quotations of the prompt, and GPT-2's own loops), and checking k drafts costs one forward pass of
    k + 1 rows, which reads the weights once, as one token does. One matching token predicts too little: with
    min_n=1, sampling text that does not repeat ran 8% slower (drafts checked and refused); with 2, as fast
    as without drafts, and repeating text gained as much (bench_generate.py's shapes)."""

    def __init__(self, ids: Sequence[int], max_n: int = 3, min_n: int = 2) -> None:
        self.ids: list[int] = []
        self.max_n, self.min_n = max_n, min_n
        self.followed: dict[tuple[int, ...], int] = {}  # n-gram -> index of what followed its latest occurrence
        for token in ids:
            self.append(token)

    def append(self, token: int) -> None:
        ids = self.ids
        for n in range(1, min(self.max_n, len(ids)) + 1):
            self.followed[tuple(ids[-n:])] = len(ids)
        ids.append(token)

    def draft(self, k: int) -> list[int]:
        ids = self.ids
        for n in range(min(self.max_n, len(ids)), self.min_n - 1, -1):
            at = self.followed.get(tuple(ids[-n:]))
            if at is not None:  # what followed; past the end of the text, the loop it found goes on
                period = len(ids) - at
                return [ids[at + i % period] for i in range(k)]
        return []


def verify(logits: torch.Tensor, draft: int, options: SamplingOptions, generator: torch.Generator | None) -> int:
    """The token that follows logits (V,) when `draft` was proposed: the draft itself if accepted, else a
    replacement. Greedy accepts exactly the argmax. Sampling accepts with probability p(draft) and otherwise
    draws from p without the draft, so each token has exactly the distribution sample_next gives it
    (speculative sampling with a draft distribution that is certain of its token)."""
    if options.greedy:
        return int(logits.argmax())
    probs, indices = distribution(logits[None], options)
    probs, ids = probs[0], None if indices is None else indices[0]
    if ids is None:
        where: int | None = draft
    else:  # the draft's place among the candidates, if it is one
        hit = (ids == draft).nonzero()
        where = int(hit[0, 0]) if hit.numel() else None
    p_draft = 0.0 if where is None else float(probs[where])
    if float(torch.rand((), generator=generator, device=probs.device)) < p_draft:
        return draft
    if where is not None:
        probs[where] = 0.0
    choice = int(torch.multinomial(probs, 1, generator=generator))
    return choice if ids is None else int(ids[choice])


@torch.inference_mode()  # torch switches the mode around each resumption of a generator, not across yields
def iter_tokens(
    model: GPT, prompts: Sequence[Sequence[int]], max_new_tokens: int, options: SamplingOptions = SamplingOptions()
) -> Iterator[torch.Tensor]:
    """Yield the next token of every prompt, (B,) per step, max_new_tokens times (stop early by breaking).

    options.lookahead=k > 0 (one prompt only) checks up to k drafted tokens per forward pass (see NgramLookup):
    the same tokens as without it when greedy, the same distribution (not the same draws of a seed) when sampling.
    """
    lookahead = options.lookahead
    if max_new_tokens < 0:
        raise GPT2Error(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if lookahead and len(prompts) != 1:
        raise GPT2Error(f"lookahead needs a single prompt, got {len(prompts)}")
    decoder = Decoder(model, prompts, max_new_tokens)
    if max_new_tokens == 0:
        return
    seed = options.seed
    generator = None if seed is None else torch.Generator(device=decoder.device).manual_seed(seed)
    token = sample_next(decoder.prefill(), options, generator)
    lookup = NgramLookup(decoder.tokens[0, : decoder.end].tolist()) if lookahead else None
    produced = 0
    while True:
        yield token
        produced += 1
        if produced == max_new_tokens:
            return
        drafts = []
        if lookup is not None:
            lookup.append(int(token))
            room = min(lookahead, max_new_tokens - produced, decoder.cache.room - 1)  # fed: the token and the drafts
            drafts = lookup.draft(room) if room > 0 else []
        if not drafts:
            token = sample_next(decoder.step(token), options, generator)
            continue
        fed = torch.tensor([int(token), *drafts], device=decoder.device)
        logits = decoder.extend(fed)  # row j: what follows the token and the first j drafts
        accepted = 0
        for j, draft in enumerate(drafts):
            chosen = verify(logits[j], draft, options, generator)
            token = torch.tensor([chosen], device=fed.device)
            if chosen != draft:
                break
            yield token
            produced += 1
            accepted += 1
            lookup.append(draft)
            if produced == max_new_tokens:
                return
        else:  # every draft accepted: the last row gives one more token
            token = sample_next(logits[-1:], options, generator)
        decoder.rollback(len(drafts) - accepted)


def generate_ids(
    model: GPT, idx: torch.Tensor, max_new_tokens: int, options: SamplingOptions = SamplingOptions()
) -> torch.Tensor:
    """idx (B, T) continued by max_new_tokens tokens -> (B, T + max_new_tokens); see GPT.generate."""
    steps = iter_tokens(model, idx.tolist(), max_new_tokens, options)
    new = [token.to(idx.device) for token in steps]  # joined outside inference mode: an ordinary tensor
    return torch.cat([idx, torch.stack(new, dim=1)], dim=1) if new else idx.clone()


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
        self.done = False

    def add(self, token: int) -> str:
        """Take one token; return the text that became final."""
        if token == self.eot_id:
            return self.finish()
        window = self.pending + self.decoder.decode(self.tokenizer.decode_bytes([token]))
        hits = [i for i in (window.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.done, self.pending = True, ""
            return window[: min(hits)]
        cut = len(window) - self.hold
        self.pending = window[cut:] if cut > 0 else window
        return window[:cut] if cut > 0 else ""

    def finish(self) -> str:
        """End the row; return the held-back rest."""
        if self.done:
            return ""
        self.done = True
        rest, self.pending = self.pending + self.decoder.decode(b"", final=True), ""
        hits = [i for i in (rest.find(s) for s in self.stop) if i >= 0]
        return rest[: min(hits)] if hits else rest


def encode_prompt(tokenizer: TextTokenizer, prompt: str) -> list[int]:
    """Prompt ids; an empty prompt starts from <|endoftext|>, as GPT-2's unconditional samples do."""
    return tokenizer.encode(prompt, allowed_special="all") or [tokenizer.eot_id]


def complete(
    model: GPT,
    tokenizer: TextTokenizer,
    prompts: Sequence[str],
    max_new_tokens: int,
    options: SamplingOptions = SamplingOptions(),
    *,
    stop: Sequence[str] = (),
    stop_at_eot: bool = True,
) -> Iterator[tuple[int, str]]:
    """Sample every prompt as one padded batch; yield (row, text) as pieces of each completion become final.

    A completion excludes its prompt and ends at max_new_tokens, at <|endoftext|> (unless stop_at_eot is False)
    or before the first stop string; decoding stops when every row has ended.
    """
    rows = [Completion(tokenizer, stop, stop_at_eot) for _ in prompts]
    steps = iter_tokens(model, [encode_prompt(tokenizer, p) for p in prompts], max_new_tokens, options)
    for tokens in steps:
        for i, (row, token) in enumerate(zip(rows, tokens.tolist(), strict=True)):
            if not row.done and (piece := row.add(token)):
                yield i, piece
        if all(row.done for row in rows):
            return
    for i, row in enumerate(rows):
        if piece := row.finish():
            yield i, piece


def collect(pieces: Iterable[tuple[int, str]], rows: int) -> list[str]:
    """The whole text of each of `rows` rows, from complete()'s (row, piece) pairs."""
    texts = [""] * rows
    for i, piece in pieces:
        texts[i] += piece
    return texts


@overload
def generate(model: GPT, tokenizer: TextTokenizer, prompt: str, max_new_tokens: int = ..., **kw: Any) -> list[str]: ...
@overload
def generate(
    model: GPT, tokenizer: TextTokenizer, prompt: list[str], max_new_tokens: int = ..., **kw: Any
) -> list[list[str]]: ...


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
    lookahead: int = 0,
) -> list[str] | list[list[str]]:
    """Continue a prompt (num_samples completions, a list of str) or a list of prompts (one list each).

    The completions exclude the prompt and end at max_new_tokens, at <|endoftext|> (unless stop_at_eot is
    False) or before the first stop string. All rows are decoded together as one padded batch; lookahead
    (prompt-lookup drafts, see iter_tokens) needs a single row. The sampling keywords are SamplingOptions'.
    """
    options = SamplingOptions(temperature, top_k, top_p, seed, lookahead)
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if num_samples < 1:
        raise GPT2Error(f"num_samples must be >= 1, got {num_samples}")
    rows = [p for p in prompts for _ in range(num_samples)]
    pieces = complete(model, tokenizer, rows, max_new_tokens, options, stop=stop, stop_at_eot=stop_at_eot)
    texts = collect(pieces, len(rows))
    grouped = [texts[i : i + num_samples] for i in range(0, len(texts), num_samples)]
    return grouped[0] if isinstance(prompt, str) else grouped


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
    lookahead: int = 0,
) -> Iterator[str]:
    """Like generate for one prompt and one sample, yielding pieces of text as soon as they are final."""
    options = SamplingOptions(temperature, top_k, top_p, seed, lookahead)
    for _, piece in complete(model, tokenizer, [prompt], max_new_tokens, options, stop=stop, stop_at_eot=stop_at_eot):
        yield piece
