"""Continuous batching: every request being decoded shares each forward pass, joining and leaving between steps.

One engine thread owns the model and runs the loop; requests come in through a thread-safe inbox and their tokens
go out through a callback (the server hands them to asyncio queues). Each turn of the loop admits waiting requests,
prefills up to `prefill_chunk` prompt tokens, then runs one decode step of every row in flight.

Prefill: admitted prompts are prefilled in caches of their own, several at once when they start from the same
position (right-padded: causal attention never looks at the padding), and a prompt longer than one chunk a chunk
per turn, so that the rows in flight keep decoding while it fills (chunked prefill). A prompt starts from the
longest run of its first tokens found in the prefix cache (prefix.py) and adds its own blocks to it when done.

Decoding: rows live in one batched KV cache whose columns are a shared clock: at each step every row writes its new
token's keys and values into the same column, `length`. A prefilled prompt is copied into the columns just before
that clock and from then on attends to its own columns only (a mask from its first column on) at its own positions.
Active rows are packed into the cache's first rows, so a step computes only what is in use; a row that leaves has
the last row moved into its place. When the clock reaches the end of the cache, every row is moved left by the
earliest first column among them: a row never spans the whole context (the server rejects prompt + max_tokens
beyond it), so that always makes room.

A failure while admitting, prefilling or choosing the tokens of one row ends that row alone with an error event; only
a failing decode step, which all rows share, ends every row in it.
"""

from __future__ import annotations

import codecs
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
from gpt2.serve.metrics import Metrics
from gpt2.serve.prefix import BLOCK, TOP, Block, PrefixCache, Scores

SHUTTING_DOWN = "shutting_down"  # the error code of rows ended by the server's shutdown


@dataclass
class TokenInfo:
    """One token and, when asked for, its log-probability under the model (the raw log-softmax, before
    temperature, top-k or penalties) and the likeliest alternatives at its place (the token itself among them);
    `offset`: the characters of the text before it (the completion's, or the prompt's for prompt tokens)."""

    id: int
    logprob: float | None = None
    top: list[tuple[int, float]] = field(default_factory=list)
    offset: int = 0


@dataclass
class Event:
    """What the engine says about one row: text that became final, the tokens whose text is all in it by now,
    and at the end a finish_reason ("stop", "length", or "error" with a message and maybe a code). `prompt`
    events carry the prompt's own tokens and log-probabilities (echo with logprobs)."""

    text: str = ""
    tokens: list[TokenInfo] = field(default_factory=list)
    finish_reason: str | None = None
    prompt: bool = False
    error: str | None = None
    code: str | None = None


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
    """The engine's state of one request from its admission on: its sampler, its text and the tokens held back
    with the text (characters that might begin a stop string)."""

    def __init__(self, request: Request, tokenizer: TextTokenizer, device: torch.device) -> None:
        self.request = request
        self.text = Completion(tokenizer, request.stop, stop_at_eot=True)
        self.eot = tokenizer.eot_id
        self.start = 0  # the batched cache's column of the row's first token, once it decodes
        self.position = len(request.prompt)  # the position of the next token fed
        self.last = -1  # the token to feed at the next step
        self.produced = 0
        seed = request.options.seed
        self.generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
        self.counts: dict[int, int] = {}  # generated tokens, for the penalties
        self.adjusts = bool(request.logit_bias or request.presence_penalty or request.frequency_penalty)
        self.sent = 0  # characters of text sent
        self.held: list[tuple[TokenInfo, int]] = []  # tokens not sent yet, each with the characters up to its end
        self.last_time = 0.0

    def add(self, info: TokenInfo) -> tuple[str, list[TokenInfo], str | None]:
        """Take the next token: the text that became final, the tokens whose text is all sent with it (those past a
        stop string never are) and the finish reason, if the row ends."""
        info.offset = self.sent + len(self.text.pending)
        self.produced += 1
        text = self.text.add(info.id)
        finish = None
        if self.text.done:
            finish = "stop"
        elif self.produced >= self.request.max_tokens:
            text += self.text.finish()
            finish = "length"
        self.sent += len(text)
        self.held.append((info, self.sent + len(self.text.pending)))
        if finish == "stop" and info.id != self.eot:  # cut at a stop string: a token from the cut on is left out
            ready = [t for t, _ in self.held if t.offset < self.sent]
        elif finish is None:
            ready = [t for t, end in self.held if end <= self.sent]
        else:
            ready = [t for t, _ in self.held]
        self.held = self.held[len(ready) :] if finish is None else []
        return text, ready, finish


@dataclass
class Prefill:
    """Distinct prompts being prefilled together, in a cache of their own (one row each) filled up to `done`
    for all of them; `rows` are the requests of each prompt (several for n > 1). A prompt is scored (its tokens'
    log-probabilities kept, one Scores per computed run) when a request of it echoes with logprobs."""

    prompts: list[list[int]]
    rows: list[list[Row]]
    cache: KVCache
    scores: list[list[Scores] | None]
    finished: list[bool]

    @property
    def done(self) -> int:
        return self.cache.length

    @property
    def length(self) -> int:
        return max(len(p) for p in self.prompts)


Deliver = Callable[[list[tuple[Request, Event]]], None]


class Engine:
    """The loop over one batched KV cache, in a thread of its own. `submit` from any thread.

    Events go out once per step: to `deliver(batch)` when given (the server hands each step's events to its event
    loop in one wake-up rather than one per row), else to each request's `emit`. prefill_chunk: prompt tokens
    prefilled per turn of the loop, between decode steps. prefix_cache_bytes: the prefix cache's size (0: none).
    """

    def __init__(
        self,
        model: GPT,
        tokenizer: TextTokenizer,
        max_batch: int = 32,
        deliver: Deliver | None = None,
        *,
        prefill_chunk: int = 256,
        prefix_cache_bytes: int = 0,
        metrics: Metrics | None = None,
    ) -> None:
        if max_batch < 1:
            raise GPT2Error(f"max_batch must be >= 1, got {max_batch}")
        if prefill_chunk < 1:
            raise GPT2Error(f"prefill_chunk must be >= 1, got {prefill_chunk}")
        self.model, self.tokenizer, self.max_batch = model, tokenizer, max_batch
        self.prefill_chunk = prefill_chunk
        self.device = model.lm_head.weight.device
        self.ctx = model.config.n_positions
        self.cache: KVCache | None = None  # allocated on first use, grown by doubling up to max_batch rows
        config, dtype = model.config, model.transformer.wte.weight.dtype
        per_token = 2 * config.n_layer * config.n_embd * (torch.finfo(dtype).bits // 8)
        self.prefix = PrefixCache(prefix_cache_bytes, per_token)
        self.metrics = metrics or Metrics()
        self.rows: list[Row] = []
        self.prefills: list[Prefill] = []
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
        """End every request still waiting or decoding with a shutdown error, and the thread."""
        self.stopping = True
        self.inbox.put(None)
        if self.thread is not None:
            self.thread.join(timeout)
            self.thread = None

    def submit(self, request: Request) -> None:
        if self.stopping:
            raise GPT2Error("the server is shutting down")
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
        """Requests waiting for a row or being prefilled."""
        prefilling = sum(len(rows) for p in self.prefills for rows in p.rows)
        return len(self.waiting) + self.inbox.qsize() + prefilling

    @property
    def idle(self) -> bool:
        return not self.rows and not self.prefills and not self.waiting

    # ------------------------------------------------------------------------------------------ the loop
    def _run(self) -> None:
        with torch.inference_mode():
            while not self.stopping:
                self._take_inbox(block=self.idle)
                if self.stopping:
                    break
                try:
                    self._drop_cancelled()
                    self._admit()
                    self._prefill()
                    if self.rows:
                        self._step()
                except Exception as e:  # a step all rows share failed (or a bug): end them, keep serving
                    self._fail([r.request for r in self.rows], e)
                    self.rows.clear()
                    if self.cache is not None:
                        self.cache.reset()
                self._flush()
        self._take_inbox(block=False)
        everyone = [r.request for r in self.rows] + [r.request for p in self.prefills for rs in p.rows for r in rs]
        self._fail([*everyone, *self.waiting], "the server is shutting down", SHUTTING_DOWN)
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

    def _fail(self, requests: list[Request], error: BaseException | str, code: str | None = None) -> None:
        message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        for request in requests:
            self._send(request, Event(finish_reason="error", error=message, code=code))
            self.metrics.finished.labels("error").inc()

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
        for group in self.prefills:
            for j, rows in enumerate(group.rows):
                group.rows[j] = [r for r in rows if not r.request.cancelled]
        self.prefills = [g for g in self.prefills if any(g.rows)]
        for i in reversed(range(len(self.rows))):
            if self.rows[i].request.cancelled:
                self._remove(i)
                self.metrics.finished.labels("cancelled").inc()

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

    # ------------------------------------------------------------------------------------------ admitting
    def _admit(self) -> None:
        """Turn waiting requests into prefills while rows are free: prompts that fit a chunk and resume from the
        same cached length together (a prompt repeated, n > 1, once), a longer one alone."""
        free = self.max_batch - len(self.rows) - sum(len(rows) for p in self.prefills for rows in p.rows)
        # by where they resume, and for a prompt longer than a chunk also by the prompt: its requests' prompts
        groups: dict[tuple[int, tuple[int, ...]], dict[tuple[int, ...], list[Row]]] = {}
        reused: dict[tuple[tuple[int, ...], int], list[Block]] = {}
        while self.waiting and free > 0:
            request = self.waiting.pop(0)
            try:
                row = Row(request, self.tokenizer, self.device)
            except Exception as e:  # e.g. a seed torch refuses: this request alone fails
                self._fail([request], e)
                continue
            free -= 1
            prompt = request.prompt
            blocks, cached = self.prefix.match(prompt, scored=request.echo_logprobs) if self.prefix.enabled else ([], 0)
            # the last token is always run (its logits choose the next); echo also scores the token after the reuse
            start = max(0, min(cached - 1 if request.echo_logprobs else cached, len(prompt) - 1))
            self.metrics.prefix_queried.inc(len(prompt))
            self.metrics.prefix_hits.inc(start)
            self.metrics.prompt_tokens.inc(len(prompt))
            ids = tuple(prompt)
            reused.setdefault((ids, start), blocks)
            alone = ids if len(prompt) - start > self.prefill_chunk else ()
            groups.setdefault((start, alone), {}).setdefault(ids, []).append(row)
        for (start, _), prompts in groups.items():
            self.prefills.append(self._prefill_of(prompts, start, reused))

    def _prefill_of(
        self,
        prompts: dict[tuple[int, ...], list[Row]],
        start: int,
        reused: dict[tuple[tuple[int, ...], int], list[Block]],
    ) -> Prefill:
        """A Prefill of these prompts, each resuming at `start` from its cached blocks."""
        keys = list(prompts)
        cache = self.model.new_cache(len(keys), max(len(k) for k in keys))
        scores: list[list[Scores] | None] = []
        for j, key in enumerate(keys):
            blocks = reused[(key, start)]
            for b, block in enumerate(blocks[: -(-start // BLOCK)]):
                n = min(BLOCK, start - b * BLOCK)
                cache.k[:, j, :, b * BLOCK : b * BLOCK + n] = block.k[:, :, :n]
                cache.v[:, j, :, b * BLOCK : b * BLOCK + n] = block.v[:, :, :n]
            if not any(r.request.echo_logprobs for r in prompts[key]):
                scores.append(None)
            elif start:  # the tokens up to `start` included, from the blocks (which were scored)
                scores.append([Scores.cat([b.scores for b in blocks])[: start + 1]])  # type: ignore[misc]
            else:
                nothing = torch.full((1, TOP), math.nan)
                scores.append([Scores(torch.tensor([math.nan]), torch.full((1, TOP), -1), nothing)])
        cache.length = start
        return Prefill([list(k) for k in keys], [prompts[k] for k in keys], cache, scores, [False] * len(keys))

    # ------------------------------------------------------------------------------------------ prefilling
    def _prefill(self) -> None:
        """Run up to prefill_chunk prompt tokens (at least one forward pass), the oldest prefills first."""
        spent = 0
        while self.prefills and spent < self.prefill_chunk:
            group = self.prefills[0]
            k = len(group.prompts)
            steps = min(group.length - group.done, max(1, (self.prefill_chunk - spent) // k))
            try:
                self._prefill_once(group, steps)
            except Exception as e:  # the forward pass failed: this group's prompts still prefilling alone fail
                left = [j for j, finished in enumerate(group.finished) if not finished]
                self._fail([r.request for j in left for r in group.rows[j]], e)
                self.prefills.pop(0)
                continue
            spent += k * steps
            if all(group.finished):
                self.prefills.pop(0)

    def _prefill_once(self, group: Prefill, steps: int) -> None:
        """One forward pass of the next `steps` tokens of every prompt of the group (right-padded); a prompt that
        ends in it is done: scored, cached, and its requests take their first tokens."""
        done = group.done
        tokens = torch.zeros(len(group.prompts), steps, dtype=torch.long)
        for j, prompt in enumerate(group.prompts):
            part = prompt[done : done + steps]
            tokens[j, : len(part)] = torch.tensor(part)
        h = self.model.hidden_states(tokens.to(self.device), group.cache)
        for j, prompt in enumerate(group.prompts):
            if group.finished[j]:
                continue
            n = min(steps, len(prompt) - done)
            ends = done + n == len(prompt)
            try:
                scores, last = group.scores[j], None
                if scores is not None:  # position p's logits score token p + 1
                    logits = self.model.lm_head(h[j, :n])
                    scored = n - 1 if ends else n
                    following = torch.tensor(prompt[done + 1 : done + 1 + scored], device=self.device)
                    scores.append(_score(logits[:scored], following))
                    last = logits[-1]
                elif ends:
                    last = self.model.lm_head(h[j, n - 1])
            except Exception as e:  # this prompt's requests alone fail
                group.finished[j] = True
                self._fail([r.request for r in group.rows[j]], e)
                continue
            if ends:
                group.finished[j] = True
                self._prefilled(group, j, last)
                group.rows[j] = []  # decoding or done: no longer waiting

    def _prefilled(self, group: Prefill, j: int, logits: torch.Tensor) -> None:
        """Prompt j of the group is prefilled: keep its blocks, then each request of it echoes its prompt, takes
        its first token and joins the batch to decode the rest."""
        prompt = group.prompts[j]
        parts = group.scores[j]
        scores = None if parts is None else Scores.cat(parts)
        try:
            self.prefix.insert(prompt, group.cache.k[:, j], group.cache.v[:, j], scores, len(prompt))
        except Exception as e:
            self._fail([r.request for r in group.rows[j]], e)
            return
        for row in group.rows[j]:
            request = row.request
            try:
                if request.echo_logprobs:
                    assert scores is not None
                    self._send(request, self._prompt_event(request, scores))
                if request.max_tokens == 0:  # nothing to decode; only the prompt's scores, if asked for
                    self._send(request, Event(finish_reason="length"))
                    continue
                if self._take(row, logits):
                    self._join(row, group.cache, j)
            except Exception as e:  # this request alone fails
                self._fail([request], e)

    def _join(self, row: Row, source: KVCache, j: int) -> None:
        """Copy the row's prompt from row j of `source` into the next free row of the batched cache, ending at the
        clock (moving the others right if the clock is earlier than the prompt is long)."""
        if len(self.rows) == self._capacity():
            self._grow()
        cache = self.cache
        assert cache is not None
        P = len(row.request.prompt)
        if cache.length < P:
            self._shift(P - cache.length)
        end, i = cache.length, len(self.rows)
        cache.k[:, i, :, end - P : end] = source.k[:, j, :, :P]
        cache.v[:, i, :, end - P : end] = source.v[:, j, :, :P]
        # the columns before it are masked, yet 0 x NaN is NaN: never leave uninitialised memory there
        cache.k[:, i, :, : end - P] = 0
        cache.v[:, i, :, : end - P] = 0
        row.start = end - P
        self.rows.append(row)

    def _capacity(self) -> int:
        return 0 if self.cache is None else self.cache.k.size(1)

    def _grow(self) -> None:
        """Double the cache's rows (up to max_batch, which admission keeps the rows within)."""
        have = self._capacity()
        bigger = self.model.new_cache(min(self.max_batch, max(4, 2 * have)), self.ctx)
        if self.cache is not None:
            n, rows = self.cache.length, len(self.rows)
            bigger.k[:, :rows, :, :n] = self.cache.k[:, :rows, :, :n]
            bigger.v[:, :rows, :, :n] = self.cache.v[:, :rows, :, :n]
            bigger.length = n
        self.cache = bigger

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

    def _prompt_event(self, request: Request, scores: Scores) -> Event:
        """The prompt's tokens with the log-probability of each given the ones before (none for the first), the
        likeliest alternatives and the token itself, and their character offsets."""
        k = request.logprobs or 0
        chosen = scores.logprob.tolist()
        top_ids, top_values = scores.top_ids[:, :k].tolist(), scores.top_logprobs[:, :k].tolist()
        offsets = char_offsets(self.tokenizer, request.prompt)
        infos = [TokenInfo(request.prompt[0], offset=0)]
        for t in range(1, len(request.prompt)):
            infos.append(_with_top(request.prompt[t], chosen[t], list(zip(top_ids[t], top_values[t], strict=True))))
            infos[-1].offset = offsets[t]
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
        done = []
        for i, row in enumerate(self.rows):
            try:
                if not self._take(row, logits[i], argmax[i] if plain_greedy[i] else None):
                    done.append(i)
            except Exception as e:  # this row alone fails
                self._fail([row.request], e)
                done.append(i)
        for i in reversed(done):
            self._remove(i)

    def _take(self, row: Row, logits: torch.Tensor, chosen: int | None = None) -> bool:
        """Choose the row's next token from its logits (V,) (or take `chosen`, its argmax computed for the batch)
        and emit what became final; False when the row has finished."""
        request = row.request
        scores = self._adjusted(row, logits) if row.adjusts else logits
        if chosen is not None:
            token = chosen
        elif request.options.greedy:
            token = int(scores.argmax())
        else:
            token = int(sample_next(scores[None], request.options, row.generator)[0])
        info = TokenInfo(token)
        if request.logprobs is not None:
            logp = torch.log_softmax(logits.float(), dim=-1)
            top = []
            if request.logprobs:
                values, ids = logp.topk(request.logprobs)
                top = list(zip(ids.tolist(), values.tolist(), strict=True))
            info = _with_top(token, float(logp[token]), top)
        now = time.perf_counter()
        if row.produced == 0:
            self.metrics.first_token.observe(now - request.submitted)
        else:
            self.metrics.per_token.observe(now - row.last_time)
        row.last_time = now
        row.counts[token] = row.counts.get(token, 0) + 1
        self.tokens_out += 1
        self.metrics.generation_tokens.inc()
        text, tokens, finish = row.add(info)
        if text or tokens or finish:
            self._send(request, Event(text=text, tokens=tokens, finish_reason=finish))
        if finish:
            self.metrics.finished.labels(finish).inc()
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


def _score(logits: torch.Tensor, following: torch.Tensor) -> Scores:
    """The log-probability of each following token (n,) under logits (n, V), and the TOP likeliest tokens."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    values, ids = logp.topk(TOP, dim=-1)
    return Scores(logp.gather(-1, following[:, None])[:, 0].cpu(), ids.cpu(), values.cpu())


def _with_top(token: int, logprob: float, top: list[tuple[int, float]]) -> TokenInfo:
    """A scored token; its alternatives include it, as OpenAI's do (up to logprobs + 1 of them)."""
    if all(i != token for i, _ in top):
        top = [*top, (token, logprob)]
    return TokenInfo(token, logprob, top)


def char_offsets(tokenizer: TextTokenizer, ids: Sequence[int]) -> list[int]:
    """The characters before each token in the text of ids: those that the bytes of the tokens before it complete
    (a token that continues a character begins where that character does)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    offsets, chars = [], 0
    for token in ids:
        offsets.append(chars)
        chars += len(decoder.decode(tokenizer.decode_bytes([token])))
    return offsets
