"""Continuous batching: every request being decoded shares each forward pass, joining and leaving between steps.

One engine thread owns the model and runs the decode loop; requests come in through a thread-safe inbox and
their tokens go out through a callback (the server hands them to asyncio queues). Rows live in one batched KV
cache whose columns are a shared clock: at each step every row writes its new token's keys and values into the
same column, `length`. A row that joins is prefilled alone straight into the columns just before that clock,
so it needs no copy, and from then on it attends to its own columns only (a mask from its first column on) at
its own positions. Active rows are packed into the cache's first rows, so a step computes only what is in use;
a row that leaves has the last row moved into its place. When the clock reaches the end of the cache, every row
is moved left by the earliest first column among them: a row never spans the whole context (the server rejects
prompt + max_tokens beyond it), so that always makes room.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from gpt2.errors import GPT2Error
from gpt2.generate import Completion, SamplingOptions, TextTokenizer, sample_next
from gpt2.model import GPT, KVCache


@dataclass
class TokenInfo:
    """One token and, when asked for, its log-probability under the model (the raw log-softmax, before
    temperature, top-k or penalties) and the likeliest alternatives at its place."""

    id: int
    logprob: float | None = None
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Event:
    """What the engine says about one row: text that became final, the tokens it produced since the last event,
    and at the end a finish_reason ("stop", "length", or "error" with a message). `prompt` events carry the
    prompt's own tokens and log-probabilities (echo with logprobs)."""

    text: str = ""
    tokens: list[TokenInfo] = field(default_factory=list)
    finish_reason: str | None = None
    prompt: bool = False
    error: str | None = None


@dataclass
class Request:
    """One row to decode: a prompt continued by up to max_tokens tokens. `emit` is called from the engine thread
    with each Event, the last one with a finish_reason; set `cancelled` to drop the row at the next step."""

    prompt: list[int]
    max_tokens: int
    emit: Callable[[Event], None]
    options: SamplingOptions = SamplingOptions()
    stop: Sequence[str] = ()
    logprobs: int | None = None  # top alternatives per token; None: no log-probabilities at all
    echo_logprobs: bool = False  # also score the prompt's tokens
    logit_bias: dict[int, float] = field(default_factory=dict)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    cancelled: bool = False
    submitted: float = field(default_factory=time.perf_counter)


class SlotCache(KVCache):
    """A window onto some rows and columns of a larger cache's tensors: the model's writes land in place."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, length: int) -> None:  # noqa: D107 (no super: a view)
        self.k, self.v, self.max_len, self.length = k, v, k.size(3), length


class Row:
    """The engine's state of one active request."""

    def __init__(self, request: Request, tokenizer: TextTokenizer, start: int, device: torch.device) -> None:
        self.request = request
        self.text = Completion(tokenizer, request.stop, stop_at_eot=True)
        self.start = start  # the cache column of the row's first token
        self.position = len(request.prompt)  # the position of the next token fed
        self.last = -1  # the token to feed at the next step
        self.produced = 0
        seed = request.options.seed
        self.generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
        self.counts: dict[int, int] = {}  # generated tokens, for the penalties
        self.adjusts = bool(request.logit_bias or request.presence_penalty or request.frequency_penalty)


Deliver = Callable[[list[tuple[Request, Event]]], None]


class Engine:
    """The decode loop over one batched KV cache, in a thread of its own. `submit` from any thread.

    Events go out once per step: to `deliver(batch)` when given (the server hands each step's events to its event
    loop in one wake-up rather than one per row), else to each request's `emit`.
    """

    def __init__(
        self, model: GPT, tokenizer: TextTokenizer, max_batch: int = 32, deliver: Deliver | None = None
    ) -> None:
        if max_batch < 1:
            raise GPT2Error(f"max_batch must be >= 1, got {max_batch}")
        self.model, self.tokenizer, self.max_batch = model, tokenizer, max_batch
        self.device = model.lm_head.weight.device
        self.ctx = model.config.n_positions
        self.cache: KVCache | None = None  # allocated on first use, grown by doubling up to max_batch rows
        self.rows: list[Row] = []
        self.waiting: list[Request] = []
        self.inbox: queue.SimpleQueue[Request | None] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self.stopping = False
        self.deliver = deliver
        self.outbox: list[tuple[Request, Event]] = []
        self.steps = 0
        self.tokens_out = 0

    # ------------------------------------------------------------------------------------------ outside API
    def start(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="gpt2-serve-engine", daemon=True)
            self.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping = True
        self.inbox.put(None)
        if self.thread is not None:
            self.thread.join(timeout)
            self.thread = None

    def submit(self, request: Request) -> None:
        if request.max_tokens < 0:
            raise GPT2Error(f"max_tokens must be >= 0, got {request.max_tokens}")
        if len(request.prompt) + request.max_tokens > self.ctx or not request.prompt:
            raise GPT2Error(f"a prompt of 1..{self.ctx} tokens plus max_tokens must fit the context ({self.ctx})")
        self.inbox.put(request)

    @property
    def active(self) -> int:
        return len(self.rows)

    @property
    def queued(self) -> int:
        return len(self.waiting) + self.inbox.qsize()

    # ------------------------------------------------------------------------------------------ the loop
    def _run(self) -> None:
        with torch.inference_mode():
            while not self.stopping:
                self._take_inbox(block=not self.rows and not self.waiting)
                if self.stopping:
                    break
                try:
                    self._drop_cancelled()
                    self._admit()
                    if self.rows:
                        self._step()
                except Exception as e:  # a bug or out of memory: fail the rows in flight, keep serving
                    message = f"{type(e).__name__}: {e}"
                    for row in self.rows:
                        self._send(row.request, Event(finish_reason="error", error=message))
                    self.rows.clear()
                    if self.cache is not None:
                        self.cache.reset()
                self._flush()
        for request in [*(r.request for r in self.rows), *self.waiting]:
            self._send(request, Event(finish_reason="error", error="the server is shutting down"))
        self._flush()

    def _take_inbox(self, block: bool) -> None:
        try:
            item = self.inbox.get(timeout=0.5) if block else self.inbox.get_nowait()
            while True:
                if item is not None:
                    self.waiting.append(item)
                item = self.inbox.get_nowait()
        except queue.Empty:
            pass

    def _send(self, request: Request, event: Event) -> None:
        self.outbox.append((request, event))

    def _flush(self) -> None:
        batch, self.outbox = self.outbox, []
        if not batch:
            return
        try:
            if self.deliver is not None:
                self.deliver(batch)
                return
        except Exception:  # the receiving side is gone (its event loop closed): nobody to decode for
            for request, _ in batch:
                request.cancelled = True
            return
        for request, event in batch:
            try:
                request.emit(event)
            except Exception:
                request.cancelled = True

    def _drop_cancelled(self) -> None:
        self.waiting = [r for r in self.waiting if not r.cancelled]
        for i in reversed(range(len(self.rows))):
            if self.rows[i].request.cancelled:
                self._remove(i)

    def _remove(self, i: int) -> None:
        """Free row i: the last row moves into its place, so active rows stay packed at the front."""
        last = len(self.rows) - 1
        cache = self.cache
        assert cache is not None
        if i != last:
            n = cache.length
            cache.k[:, i, :, :n] = cache.k[:, last, :, :n]
            cache.v[:, i, :, :n] = cache.v[:, last, :, :n]
            self.rows[i] = self.rows[last]
        self.rows.pop()
        if not self.rows:
            cache.reset()

    # ------------------------------------------------------------------------------------------ joining
    def _capacity(self) -> int:
        return 0 if self.cache is None else self.cache.k.size(1)

    def _grow(self) -> bool:
        """Double the cache's rows (up to max_batch); False when it is at max_batch already."""
        have = self._capacity()
        if have >= self.max_batch:
            return False
        bigger = self.model.new_cache(min(self.max_batch, max(4, 2 * have)), self.ctx)
        if self.cache is not None:
            n, rows = self.cache.length, len(self.rows)
            bigger.k[:, :rows, :, :n] = self.cache.k[:, :rows, :, :n]
            bigger.v[:, :rows, :, :n] = self.cache.v[:, :rows, :, :n]
            bigger.length = n
        self.cache = bigger
        return True

    def _shift(self, by: int) -> None:
        """Move every row's columns by `by` (right if positive, left if negative)."""
        cache = self.cache
        assert cache is not None
        n, rows = cache.length, len(self.rows)
        if rows:
            src = slice(max(0, -by), n)
            dst = slice(max(0, by), n + by)
            cache.k[:, :rows, :, dst] = cache.k[:, :rows, :, src].clone()
            cache.v[:, :rows, :, dst] = cache.v[:, :rows, :, src].clone()
        for row in self.rows:
            row.start += by
        cache.length = n + by

    def _admit(self) -> None:
        """Prefill waiting requests into free rows, together in one forward pass; each samples its first token
        and joins the next step."""
        batch: list[Request] = []
        while self.waiting:
            request = self.waiting[0]
            if request.max_tokens == 0:  # nothing to decode; only the prompt's scores, if asked for
                self.waiting.pop(0)
                if request.echo_logprobs:
                    h = self.model.hidden_states(torch.tensor([request.prompt], device=self.device))
                    self._send(request, self._prompt_event(request, self.model.lm_head(h[0])))
                self._send(request, Event(finish_reason="length"))
                continue
            if len(self.rows) + len(batch) == self._capacity() and not self._grow():
                break
            batch.append(self.waiting.pop(0))
        if batch:
            self._join(batch)

    def _join(self, batch: list[Request]) -> None:
        """Prefill the prompts of `batch` into the next free rows, right-aligned to end at the clock (left padding
        masked, positions from each prompt's start), a prompt repeated (n > 1) once; then take first tokens."""
        cache = self.cache
        assert cache is not None
        longest = max(len(r.prompt) for r in batch)
        if cache.length < longest:  # the prompts go just before the clock: make room on the left
            self._shift(longest - cache.length)
        end, first = cache.length, len(self.rows)
        seen: dict[tuple[int, ...], int] = {}
        order: list[Request] = []
        copies: list[tuple[Request, int]] = []
        for r in batch:  # the rows that run the model first, then the copies of repeated prompts
            key = tuple(r.prompt)
            if r.echo_logprobs or key not in seen:  # echo scores every position of its own row
                seen.setdefault(key, first + len(order))
                order.append(r)
            else:
                copies.append((r, seen[key]))
        k = len(order)
        tokens = torch.zeros(k, longest, dtype=torch.long)
        valid = torch.zeros(k, longest, dtype=torch.bool)
        for j, r in enumerate(order):
            tokens[j, longest - len(r.prompt) :] = torch.tensor(r.prompt)
            valid[j, longest - len(r.prompt) :] = True
        tokens, valid = tokens.to(self.device), valid.to(self.device)
        window = SlotCache(
            cache.k[:, first : first + k, :, end - longest :], cache.v[:, first : first + k, :, end - longest :], 0
        )
        mask = positions = None
        if not bool(valid.all()):
            positions = (valid.cumsum(dim=1) - 1).clamp(min=0)  # padding does not advance the position
            causal = torch.ones(longest, longest, dtype=torch.bool, device=self.device).tril()
            # every query sees itself, so rows of pure padding stay finite (their outputs are never used)
            mask = (causal & valid[:, None, None, :]) | torch.eye(longest, dtype=torch.bool, device=self.device)
        h = self.model.hidden_states(tokens, window, positions, mask)
        logits = self.model.lm_head(h[:, -1])
        for j, r in enumerate(order):
            if r.echo_logprobs:
                self._send(r, self._prompt_event(r, self.model.lm_head(h[j, longest - len(r.prompt) :])))
        for c, (r, source) in enumerate(copies):
            i, P = first + k + c, len(r.prompt)
            cache.k[:, i, :, end - P : end] = cache.k[:, source, :, end - P : end]
            cache.v[:, i, :, end - P : end] = cache.v[:, source, :, end - P : end]
        rows = order + [r for r, _ in copies]
        first_logits = [logits[j] for j in range(k)] + [logits[source - first] for _, source in copies]
        for r in rows:
            self.rows.append(Row(r, self.tokenizer, end - len(r.prompt), self.device))
        finished = [first + j for j in range(len(rows)) if not self._take(first + j, first_logits[j])]
        for i in reversed(finished):
            self._remove(i)

    def _prompt_event(self, request: Request, logits: torch.Tensor) -> Event:
        """The prompt's tokens with the log-probability of each given the ones before (none for the first)."""
        logp = torch.log_softmax(logits.float(), dim=-1)
        infos = [TokenInfo(request.prompt[0])]
        k = request.logprobs or 0
        top_v, top_i = logp[:-1].topk(k, dim=-1) if k else (None, None)
        ids = torch.tensor(request.prompt[1:], device=logp.device)
        chosen = logp[:-1].gather(-1, ids[:, None])[:, 0].tolist() if len(ids) else []
        for t, token in enumerate(request.prompt[1:]):
            top = list(zip(top_i[t].tolist(), top_v[t].tolist(), strict=True)) if k else []
            infos.append(TokenInfo(token, chosen[t], top))
        return Event(tokens=infos, prompt=True)

    # ------------------------------------------------------------------------------------------ a step
    def _step(self) -> None:
        cache = self.cache
        assert cache is not None
        if cache.room == 0:  # the clock reached the end: move everyone left by the earliest first column
            self._shift(-min(row.start for row in self.rows))
        n, L = len(self.rows), cache.length
        tokens = torch.tensor([[row.last] for row in self.rows], device=self.device)
        positions = torch.tensor([[row.position] for row in self.rows], device=self.device)
        starts = [row.start for row in self.rows]
        mask = None  # every row from column 0 (one client, or several that started together): no mask needed
        if any(starts):
            first = torch.tensor(starts, device=self.device)[:, None]
            mask = (torch.arange(L + 1, device=self.device)[None] >= first)[:, None, None, :]
        view = SlotCache(cache.k[:, :n], cache.v[:, :n], L)
        logits = self.model.forward_cached(tokens, view, positions, mask)
        cache.length = L + 1
        self.steps += 1
        for row in self.rows:
            row.position += 1
        plain_greedy = [row.request.options.greedy and not row.adjusts for row in self.rows]
        argmax = logits.argmax(dim=-1).tolist() if any(plain_greedy) else []  # one call (one sync on a GPU)
        done = [i for i in range(n) if not self._take(i, logits[i], argmax[i] if plain_greedy[i] else None)]
        for i in reversed(done):
            self._remove(i)

    def _take(self, i: int, logits: torch.Tensor, chosen: int | None = None) -> bool:
        """Choose row i's next token from its logits (V,) (or take `chosen`, its argmax computed for the batch)
        and emit it; False when the row has finished."""
        row = self.rows[i]
        request = row.request
        scores = logits
        if row.adjusts:
            scores = self._adjusted(row, scores)
        if chosen is not None:
            token = chosen
        elif request.options.greedy:
            token = int(scores.argmax())
        else:
            token = int(sample_next(scores[None], request.options, row.generator)[0])
        info = TokenInfo(token)
        if request.logprobs is not None:
            logp = torch.log_softmax(logits.float(), dim=-1)
            info.logprob = float(logp[token])
            if request.logprobs:
                values, ids = logp.topk(request.logprobs)
                info.top = list(zip(ids.tolist(), values.tolist(), strict=True))
        row.produced += 1
        row.counts[token] = row.counts.get(token, 0) + 1
        self.tokens_out += 1
        text = row.text.add(token)
        finish = None
        if row.text.done:
            finish = "stop"
        elif row.produced >= request.max_tokens:
            text += row.text.finish()
            finish = "length"
        self._send(request, Event(text=text, tokens=[info], finish_reason=finish))
        row.last = token
        return finish is None and not request.cancelled

    def _adjusted(self, row: Row, scores: torch.Tensor) -> torch.Tensor:
        """Logit bias and OpenAI's presence and frequency penalties, on this row's logits."""
        request = row.request
        scores = scores.float().clone()
        if request.logit_bias:
            ids = torch.tensor(list(request.logit_bias), device=scores.device)
            scores[ids] += torch.tensor(list(request.logit_bias.values()), device=scores.device)
        if row.counts and (request.presence_penalty or request.frequency_penalty):
            ids = torch.tensor(list(row.counts), device=scores.device)
            counts = torch.tensor(list(row.counts.values()), device=scores.device, dtype=scores.dtype)
            scores[ids] -= counts * request.frequency_penalty + request.presence_penalty
        scores[torch.isnan(scores)] = -math.inf
        return scores
