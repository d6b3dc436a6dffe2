"""From a validated request to the engine's rows, and from the engine's events back to OpenAI's response shapes.

plan_rows checks what pydantic cannot (token ids, the context, counts), tokenizes, and lays out the rows (each
prompt times n, in OpenAI's order); Choice assembles one choice's text and logprobs (tokens, their
log-probabilities, the top alternatives and character offsets) from the events of its row.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from gpt2.errors import GPT2Error
from gpt2.generate import SamplingOptions, TextTokenizer, encode_prompt
from gpt2.serve.batcher import Event, Request, TokenInfo
from gpt2.serve.schemas import MAX_ROWS, APIError, CompletionRequest


def token_text(tokenizer: TextTokenizer, token: int) -> str:
    """A token's text for logprobs; a token that is not whole UTF-8 is written as OpenAI does, bytes:\\xNN..."""
    raw = tokenizer.decode_bytes([token])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


class Plan:
    """A validated request turned into rows: token ids per prompt, sampling options, and the choices (prompt
    index, sample index) in OpenAI's order (each prompt's n samples together)."""

    def __init__(self, body: CompletionRequest, prompts: list[list[int]], texts: list[str]) -> None:
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.prompts, self.texts = prompts, texts
        n = body.n or 1
        self.choices = [(p, j) for p in range(len(prompts)) for j in range(n)]
        self.max_tokens = 16 if body.max_tokens is None else body.max_tokens
        temperature = 1.0 if body.temperature is None else body.temperature
        top_k = 40 if body.top_k is None else body.top_k
        top_p = None if body.top_p is None or body.top_p >= 1.0 else body.top_p
        try:
            self.options = SamplingOptions(temperature, top_k if top_k > 0 else None, top_p, body.seed)
        except GPT2Error as e:
            raise APIError(400, str(e), code="invalid_value") from None
        self.stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        self.logprobs = body.logprobs
        self.echo = bool(body.echo)
        self.echo_logprobs = self.echo and body.logprobs is not None
        self.logit_bias = {int(k): float(v) for k, v in (body.logit_bias or {}).items()}
        self.presence_penalty = body.presence_penalty or 0.0
        self.frequency_penalty = body.frequency_penalty or 0.0

    def row(self, index: int, emit: Callable[[Event], None]) -> Request:
        """The engine's request for choice `index`; sample j of a seeded prompt draws with seed + j."""
        prompt, j = self.choices[index]
        options = self.options if self.options.seed is None else replace(self.options, seed=self.options.seed + j)
        return Request(self.prompts[prompt], self.max_tokens, emit, options, self.stop, self.logprobs,
                       self.echo_logprobs, self.logit_bias, self.presence_penalty, self.frequency_penalty)  # fmt: skip

    def usage(self, completion_tokens: int) -> dict[str, int]:
        prompt_tokens = sum(len(p) for p in self.prompts)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}  # fmt: skip


def plan_rows(body: CompletionRequest, tokenizer: TextTokenizer, ctx: int, vocab: int) -> Plan:
    """Check what pydantic cannot (token ids, the context, counts) and tokenize; APIError 400 otherwise."""
    raw = body.prompt
    if isinstance(raw, str):
        items: list[str | list[int]] = [raw]
    elif raw and all(isinstance(x, int) for x in raw):
        items = [list(raw)]  # type: ignore[arg-type]
    else:
        items = list(raw)  # type: ignore[arg-type]
    n = body.n or 1
    if body.best_of is not None and body.best_of != n:
        raise APIError(400, "best_of other than n is not supported", param="best_of", code="unsupported")
    if len(items) * n > MAX_ROWS:
        raise APIError(400, f"{len(items)} prompts x n={n} is more than {MAX_ROWS} completions in one request",
                       param="n", code="invalid_value")  # fmt: skip
    prompts, texts = [], []
    for item in items:
        if isinstance(item, str):
            ids = encode_prompt(tokenizer, item)
            text = item
        else:
            bad = next((t for t in item if not 0 <= t < vocab), None)
            if bad is not None:
                raise APIError(400, f"token id {bad} is outside the vocabulary (0..{vocab - 1})", param="prompt",
                               code="invalid_value")  # fmt: skip
            ids, text = item, tokenizer.decode_bytes(item).decode("utf-8", errors="replace")
        prompts.append(ids)
        texts.append(text)
    max_tokens = 16 if body.max_tokens is None else body.max_tokens
    longest = max(len(p) for p in prompts)
    if longest + max_tokens > ctx:
        param = "prompt" if longest >= ctx else "max_tokens"
        raise APIError(
            400,
            f"this model's maximum context length is {ctx} tokens, however you requested {longest + max_tokens} "
            f"tokens ({longest} in your prompt; {max_tokens} for the completion); reduce the prompt or max_tokens",
            param=param,
            code="context_length_exceeded",
        )
    if max_tokens == 0 and not body.echo:
        raise APIError(400, "max_tokens 0 returns nothing without echo", param="max_tokens", code="invalid_value")
    if body.logit_bias and any(int(k) >= vocab for k in body.logit_bias):
        raise APIError(400, f"logit_bias names a token id outside the vocabulary (0..{vocab - 1})",
                       param="logit_bias", code="invalid_value")  # fmt: skip
    return Plan(body, prompts, texts)


class Choice:
    """One choice's answer, built from the engine's events: its text, its tokens and their log-probabilities."""

    def __init__(self, tokenizer: TextTokenizer, plan: Plan, index: int) -> None:
        self.tokenizer, self.plan, self.index = tokenizer, plan, index
        self.prompt_index = plan.choices[index][0]
        self.text = ""
        self.tokens: list[dict[str, Any]] = []  # OpenAI's logprobs, one dict of lists per event, joined at the end
        self.finish_reason: str | None = None
        self.error: tuple[str, str | None] | None = None  # message and code
        self.completion_tokens = 0
        # completion tokens' offsets count from the end of the echoed prompt
        self.base = len(plan.texts[self.prompt_index]) if plan.echo else 0

    def piece(self, event: Event) -> dict[str, Any]:
        """Take an event; return its part of a streamed chunk (text, logprobs of its tokens, finish_reason)."""
        text = event.text
        if event.prompt and self.plan.echo:
            text = self.plan.texts[self.prompt_index]
        if event.error:
            self.error = (event.error, event.code)
        if not event.prompt:
            self.completion_tokens += len(event.tokens)
        logprobs = None
        if self.plan.logprobs is not None and (event.tokens or event.prompt):
            logprobs = self._logprobs(event.tokens, 0 if event.prompt else self.base)
            self.tokens.append(logprobs)
        self.text += text
        self.finish_reason = event.finish_reason or self.finish_reason
        return {"text": text, "index": self.index, "logprobs": logprobs, "finish_reason": event.finish_reason}

    def _logprobs(self, tokens: list[TokenInfo], base: int) -> dict[str, Any]:
        name = lambda token: token_text(self.tokenizer, token)  # noqa: E731
        return {
            "tokens": [name(t.id) for t in tokens],
            "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [None if t.logprob is None else {name(i): lp for i, lp in t.top} for t in tokens],
            "text_offset": [base + t.offset for t in tokens],
        }

    def final(self) -> dict[str, Any]:
        logprobs = None
        if self.plan.logprobs is not None:
            keys = ("tokens", "token_logprobs", "top_logprobs", "text_offset")
            logprobs = {key: [x for part in self.tokens for x in part[key]] for key in keys}
        return {"text": self.text, "index": self.index, "logprobs": logprobs, "finish_reason": self.finish_reason}
