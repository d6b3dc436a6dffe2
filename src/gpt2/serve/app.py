"""The HTTP side of `gpt2 serve`: OpenAI's completions API (FastAPI, pydantic), streaming, errors, the playground.

Every request is validated into CompletionRequest, split into rows (each prompt times n), handed to the Engine
(batcher.py) and answered from the events it sends back through an asyncio queue. Errors take OpenAI's shape,
{"error": {"message", "type", "param", "code"}}, with a 4xx status whenever the request is at fault.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from gpt2.errors import GPT2Error
from gpt2.generate import SamplingOptions, TextTokenizer, encode_prompt
from gpt2.model import GPT
from gpt2.serve.batcher import Engine, Event, TokenInfo
from gpt2.serve.batcher import Request as Row

STATIC = Path(__file__).parent / "static"
MAX_BODY = 2 * 1024 * 1024  # bytes; a full context of token ids is ~10 KB, of text a few
MAX_ROWS = 128  # prompts x n in one request
MAX_STOP = 16


# -------------------------------------------------------------------------------------------------- schemas
class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class CompletionRequest(BaseModel):
    """POST /v1/completions, as OpenAI defines it, plus top_k (default 40, the paper's samples)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=0)
    temperature: float | None = Field(1.0, ge=0.0, le=2.0)
    top_p: float | None = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(40, ge=-1, description="sample from the k likeliest tokens; 0 or -1: all of them")
    n: int | None = Field(1, ge=1, le=MAX_ROWS)
    best_of: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool | None = False
    presence_penalty: float | None = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    suffix: str | None = None
    user: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt_not_empty_list(cls, v: Any) -> Any:
        if isinstance(v, list) and (not v or any(isinstance(p, list) and not p for p in v)):
            raise ValueError("a prompt list needs at least one prompt, and each list of token ids one token")
        return v

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, v: Any) -> Any:
        if isinstance(v, list) and len(v) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings")
        return v

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, v: str | None) -> str | None:
        if v:
            raise ValueError("suffix (insertion) is not supported: GPT-2 only continues text")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _bias_range(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for key, value in (v or {}).items():
            if not key.isdigit():
                raise ValueError(f"logit_bias keys are token ids, got {key!r}")
            if not -100 <= value <= 100:
                raise ValueError(f"logit_bias values lie in [-100, 100], got {value}")
        return v


class APIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type_: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.param, self.code, self.type)


def error_response(
    status: int, message: str, param: str | None = None, code: str | None = None, type_: str = "invalid_request_error"
) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


def token_text(tokenizer: TextTokenizer, token: int) -> str:
    """A token's text for logprobs; a token that is not whole UTF-8 is written as OpenAI does, bytes:\\xNN..."""
    raw = tokenizer.decode_bytes([token])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


# -------------------------------------------------------------------------------------------------- the app
class Gate:
    """ASGI middleware, before anything reads the request: the API key on /v1 (a 401 without it, whatever the
    body), and a body over `limit` bytes gets a 413 (a declared Content-Length at once, a chunked body as it
    arrives)."""

    def __init__(self, app: Callable[..., Awaitable[None]], limit: int, api_key: str | None) -> None:
        self.app, self.limit, self.api_key = app, limit, api_key

    def authorized(self, scope: dict) -> bool:
        if self.api_key is None or not scope.get("path", "").startswith("/v1/"):
            return True
        given = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = given.partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(token.strip().encode(), self.api_key.encode())

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if not self.authorized(scope):
            message = "missing or incorrect API key: send it as the header `Authorization: Bearer KEY`"
            return await error_response(401, message, code="invalid_api_key")(scope, receive, send)
        too_big = error_response(413, f"the request body is larger than {self.limit} bytes", code="body_too_large")
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await too_big(scope, receive, send)
        seen = 0
        started = False

        async def counted_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooBig(413, f"the request body is larger than {self.limit} bytes")
            return message

        async def tracked_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooBig:
            if not started:
                await too_big(scope, receive, send)


class _TooBig(StarletteHTTPException):
    """Raised while reading a body: FastAPI passes HTTP exceptions on as they are (others become a 400)."""


def served_names(model_name: str) -> set[str]:
    """The names a request may give for the one model served: as given to --model, and its last path part."""
    return {model_name, Path(model_name.rstrip("/")).name}


def create_app(
    model: GPT,
    tokenizer: TextTokenizer,
    model_name: str,
    *,
    api_key: str | None = None,
    max_batch: int = 32,
    max_body: int = MAX_BODY,
) -> FastAPI:
    """The server for one model: the OpenAI routes under /v1, /health, and the playground at /."""
    engine = Engine(model, tokenizer, max_batch=max_batch)
    ctx = model.config.n_positions
    created = int(time.time())

    from contextlib import asynccontextmanager

    def dispatch(batch: list[tuple[Row, Event]]) -> None:
        for row, event in batch:
            row.emit(event)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        engine.deliver = lambda batch: loop.call_soon_threadsafe(dispatch, batch)  # one wake-up per step
        engine.start()
        yield
        engine.stop()

    app = FastAPI(title="gpt2 serve", version="1", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.engine = engine
    app.add_middleware(Gate, limit=max_body, api_key=api_key)

    # ---------------------------------------------------------------------------------------------- errors
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"msg": "invalid request", "loc": ()}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        # a union (prompt's four forms) reports each alternative as a loc part; the field is the first
        param = loc[0] if loc else None
        if first.get("type") == "json_invalid":
            message, param = "the request body is not valid JSON", None
        elif param == "prompt" and first.get("type") != "value_error":
            message = "prompt must be a string, a list of strings, a list of token ids or a list of lists of them"
        elif first.get("type") == "extra_forbidden":
            message = f"unrecognized request argument supplied: {param}"
        else:
            message = f"{param}: {first.get('msg', 'invalid')}" if param else first.get("msg", "invalid request")
        return error_response(400, message, param, code="invalid_value" if param else "invalid_json")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see /docs"
            return error_response(404, message, code="not_found")
        if isinstance(exc, _TooBig):
            return error_response(413, str(exc.detail), code="body_too_large")
        if exc.status_code == 405:
            return error_response(405, f"{request.method} is not allowed on {request.url.path}", code="bad_method")
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}", type_="server_error")

    def check_model(name: str) -> None:
        if name not in served_names(model_name):
            raise APIError(404, f"the model {name!r} does not exist here; this server has {model_name!r}",
                           param="model", code="model_not_found")  # fmt: skip

    # ---------------------------------------------------------------------------------------------- routes
    @app.get("/", include_in_schema=False)
    async def playground() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        alive = engine.thread is not None and engine.thread.is_alive()
        return {"status": "ok" if alive else "starting", "model": model_name, "active": engine.active,
                "queued": engine.queued}  # fmt: skip

    def model_card() -> dict[str, Any]:
        return {"id": model_name, "object": "model", "created": created, "owned_by": "gpt2", "max_model_len": ctx}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def one_model(name: str, request: Request) -> dict[str, Any]:
        check_model(name)
        return model_card()

    @app.api_route("/v1/chat/completions", methods=["GET", "POST"], include_in_schema=False)
    async def chat(request: Request) -> JSONResponse:
        message = ("GPT-2 is not a chat model, so this server has no /v1/chat/completions: "
                   "send text to continue to POST /v1/completions")  # fmt: skip
        return error_response(404, message, code="not_found")

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> JSONResponse | StreamingResponse:
        check_model(body.model)
        plan = plan_rows(body, tokenizer, ctx, model.config.vocab_size)
        if body.stream:
            return StreamingResponse(
                stream(body, plan, request),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return JSONResponse(await gather(body, plan, request))

    # ---------------------------------------------------------------------------------------------- running
    def submit(plan: Plan) -> tuple[asyncio.Queue[tuple[int, Event]], list[Row]]:
        events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        rows = []
        for index, (prompt_index, j) in enumerate(plan.choices):
            ids = plan.prompts[prompt_index]

            def emit(event: Event, index: int = index) -> None:  # in the event loop's thread (dispatch)
                events.put_nowait((index, event))

            options = plan.options if plan.options.seed is None else _reseed(plan.options, plan.options.seed + j)
            rows.append(Row(ids, plan.max_tokens, emit, options, plan.stop, plan.logprobs, plan.echo_logprobs,
                            plan.logit_bias, plan.presence_penalty, plan.frequency_penalty))  # fmt: skip
        for row in rows:
            engine.submit(row)
        return events, rows

    async def gather(body: CompletionRequest, plan: Plan, request: Request) -> dict[str, Any]:
        events, rows = submit(plan)
        choices = [Choice(tokenizer, plan, i) for i in range(len(rows))]
        if plan.echo and not plan.echo_logprobs:  # with logprobs, the engine sends the prompt's tokens instead
            for c in choices:
                c.add(Event(prompt=True))
        left = len(rows)
        try:
            while left:
                try:
                    index, event = await asyncio.wait_for(events.get(), timeout=1.0)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return {}
                    continue
                choices[index].add(event)
                left -= event.finish_reason is not None
        finally:
            for row in rows:
                row.cancelled = True  # a no-op for finished rows; frees the rest when the client has gone
        failed = next((c.error for c in choices if c.error), None)
        if failed:
            raise APIError(500, f"decoding failed: {failed}", type_="server_error")
        return {
            "id": plan.id,
            "object": "text_completion",
            "created": plan.created,
            "model": model_name,
            "choices": [c.final() for c in choices],
            "usage": plan.usage(sum(c.completion_tokens for c in choices)),
            "system_fingerprint": None,
        }

    async def stream(body: CompletionRequest, plan: Plan, request: Request) -> AsyncIterator[str]:
        events, rows = submit(plan)
        choices = [Choice(tokenizer, plan, i) for i in range(len(rows))]
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        left = len(rows)

        def chunk(piece: dict[str, Any] | None, usage: dict[str, Any] | None = None) -> str:
            out: dict[str, Any] = {"id": plan.id, "object": "text_completion", "created": plan.created,
                                   "model": model_name, "choices": [piece] if piece else []}  # fmt: skip
            if usage is not None:
                out["usage"] = usage
            return f"data: {json.dumps(out, ensure_ascii=False)}\n\n"

        try:
            if plan.echo:  # the prompt first, as its own chunk, before anything is decoded
                for c in choices:
                    if not plan.echo_logprobs:
                        yield chunk(c.piece(Event(prompt=True)))
            while left:
                index, event = await events.get()
                c = choices[index]
                piece = c.piece(event)
                left -= event.finish_reason is not None
                if c.error:
                    message = {"message": f"decoding failed: {c.error}", "type": "server_error", "param": None,
                               "code": None}  # fmt: skip
                    yield f"data: {json.dumps({'error': message})}\n\n"
                    break
                usage = None
                if not left and not include_usage:  # the last chunk carries the usage (OpenAI's clients keep it)
                    usage = plan.usage(sum(c.completion_tokens for c in choices))
                if piece["text"] or piece["finish_reason"] or piece["logprobs"] or usage:
                    yield chunk(piece, usage)
            if include_usage:
                yield chunk(None, plan.usage(sum(c.completion_tokens for c in choices)))
            yield "data: [DONE]\n\n"
        finally:  # also when the client disconnects: Starlette cancels this generator, and the rows go at once
            for row in rows:
                row.cancelled = True

    return app


def _reseed(options: SamplingOptions, seed: int) -> SamplingOptions:
    from dataclasses import replace

    return replace(options, seed=seed)


# -------------------------------------------------------------------------------------------------- requests
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
        self.tokens: list[TokenInfo] = []
        self.offsets: list[int] = []
        self.chars = 0  # characters of this choice's text so far, for text_offset
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.completion_tokens = 0

    def add(self, event: Event) -> None:
        self.piece(event)

    def piece(self, event: Event) -> dict[str, Any]:
        """Take an event; return its part of a streamed chunk (text, logprobs of its tokens, finish_reason)."""
        text = event.text
        if event.prompt and self.plan.echo:
            text = self.plan.texts[self.prompt_index]
        if event.error:
            self.error = event.error
        if not event.prompt:
            self.completion_tokens += len(event.tokens)
        logprobs = None
        if self.plan.logprobs is not None and (event.tokens or event.prompt):
            logprobs = self._logprobs(event.tokens)
        self.text += text
        self.chars += len(text)
        self.finish_reason = event.finish_reason or self.finish_reason
        return {"text": text, "index": self.index, "logprobs": logprobs, "finish_reason": event.finish_reason}

    def _logprobs(self, tokens: list[TokenInfo]) -> dict[str, Any]:
        names = [token_text(self.tokenizer, t.id) for t in tokens]
        offsets, at = [], self.chars  # the offsets of tokens within the text sent so far
        for name in names:
            offsets.append(at)
            at += len(name)
        self.tokens += tokens
        self.offsets += offsets
        return {
            "tokens": names,
            "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [
                None if t.logprob is None else {token_text(self.tokenizer, i): lp for i, lp in t.top} for t in tokens
            ],
            "text_offset": offsets,
        }

    def final(self) -> dict[str, Any]:
        logprobs = None
        if self.plan.logprobs is not None:
            names = [token_text(self.tokenizer, t.id) for t in self.tokens]
            logprobs = {
                "tokens": names,
                "token_logprobs": [t.logprob for t in self.tokens],
                "top_logprobs": [
                    None if t.logprob is None else {token_text(self.tokenizer, i): lp for i, lp in t.top}
                    for t in self.tokens
                ],
                "text_offset": self.offsets,
            }
        return {"text": self.text, "index": self.index, "logprobs": logprobs, "finish_reason": self.finish_reason}


# -------------------------------------------------------------------------------------------------- running
class BackgroundServer:
    """uvicorn serving an app in a thread, on a loopback port chosen by the system: for tests and benchmarks.

    with BackgroundServer(app) as url: ...   # url is http://127.0.0.1:PORT
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise GPT2Error("the test server did not start")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()
