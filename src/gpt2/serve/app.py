"""The HTTP side of `gpt2 serve`: OpenAI's completions API (FastAPI), streaming, errors, metrics, the playground.

Every request is validated into CompletionRequest (schemas.py), split into rows (completions.py), handed to the
Engine (batcher.py) and answered from the events it sends back through an asyncio queue. A request whose client
leaves, streamed or not, has its rows dropped at once. `drain` is the graceful shutdown: new requests get a 503
while those in flight finish, for up to a grace period, after which the rest end with an error.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

from gpt2.errors import GPT2Error
from gpt2.generate import TextTokenizer
from gpt2.model import GPT
from gpt2.serve.batcher import SHUTTING_DOWN, Engine, Event
from gpt2.serve.batcher import Request as Row
from gpt2.serve.completions import Choice, Plan, plan_rows
from gpt2.serve.metrics import Metrics
from gpt2.serve.schemas import ERRORS, MAX_BODY, APIError, CompletionRequest, error_body, error_response

STATIC = Path(__file__).parent / "static"
SHUTDOWN_MESSAGE = "the server is shutting down: it finishes the completions in flight and takes no new ones"


class Gate:
    """ASGI middleware, before anything reads the request: the API key on /v1 (a 401 without it, whatever the
    body), and a body over `limit` bytes gets a 413 (a declared Content-Length at once, a chunked body as it
    arrives). It also counts every response by route and status for /metrics."""

    def __init__(self, app: Callable[..., Awaitable[None]], limit: int, api_key: str | None, metrics: Metrics) -> None:
        self.app, self.limit, self.api_key, self.metrics = app, limit, api_key, metrics

    def authorized(self, scope: dict) -> bool:
        if self.api_key is None or not scope.get("path", "").startswith("/v1/"):
            return True
        given = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = given.partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(token.strip().encode(), self.api_key.encode())

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracked_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                self.metrics.request(scope.get("path", ""), message["status"])
            await send(message)

        if not self.authorized(scope):
            message = "missing or incorrect API key: send it as the header `Authorization: Bearer KEY`"
            return await error_response(401, message, code="invalid_api_key")(scope, receive, tracked_send)
        too_big = error_response(413, f"the request body is larger than {self.limit} bytes", code="body_too_large")
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await too_big(scope, receive, tracked_send)
        seen = 0

        async def counted_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooBig(413, f"the request body is larger than {self.limit} bytes")
            return message

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooBig:
            if not started:
                await too_big(scope, receive, tracked_send)


class _TooBig(StarletteHTTPException):
    """Raised while reading a body: FastAPI passes HTTP exceptions on as they are (others become a 400)."""


def create_app(
    model: GPT,
    tokenizer: TextTokenizer,
    model_name: str,
    *,
    aliases: Sequence[str] = (),
    api_key: str | None = None,
    max_batch: int = 32,
    max_body: int = MAX_BODY,
    prefill_chunk: int = 256,
    prefix_cache_mb: float = 1024,
) -> FastAPI:
    """The server for one model: the OpenAI routes under /v1, /health, /metrics, /docs and the playground at /.

    model_name is the model's id in the API; requests may also name it by any of `aliases`. prefill_chunk: prompt
    tokens prefilled between two decode steps; prefix_cache_mb: the prefix cache's size (0: no prefix caching).
    """
    metrics = Metrics()
    engine = Engine(model, tokenizer, max_batch=max_batch, prefill_chunk=prefill_chunk,
                    prefix_cache_bytes=int(prefix_cache_mb * 2**20), metrics=metrics)  # fmt: skip
    metrics.watch(lambda: engine.active, lambda: engine.queued)
    ctx = model.config.n_positions
    created = int(time.time())
    names = {model_name, *aliases}
    state = {"shutting_down": False, "open": 0}  # open: completions being answered

    def dispatch(batch: list[tuple[Row, Event]]) -> None:
        for row, event in batch:
            row.emit(event)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        engine.deliver = lambda batch: loop.call_soon_threadsafe(dispatch, batch)  # one wake-up per step
        engine.start()
        yield
        await asyncio.to_thread(engine.stop)

    # Swagger UI's scripts and styles from fastapi-offline's copy, not a CDN: /docs works without the internet
    app = FastAPIOffline(title="gpt2 serve", version="1", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.engine = engine
    app.state.metrics = metrics
    app.add_middleware(Gate, limit=max_body, api_key=api_key, metrics=metrics)

    async def drain(grace: float, hurry: asyncio.Event | None = None) -> None:
        """Refuse new completions (503), let those in flight finish for up to `grace` seconds (or until `hurry`
        is set), then end the rest with an error, and wait for their responses to go out."""
        state["shutting_down"] = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while state["open"] and loop.time() < deadline and not (hurry and hurry.is_set()):
            await asyncio.sleep(0.05)
        await asyncio.to_thread(engine.stop)
        deadline = loop.time() + 10
        while state["open"] and loop.time() < deadline:
            await asyncio.sleep(0.02)

    app.state.drain = drain

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
        if name not in names:
            raise APIError(404, f"the model {name!r} does not exist here; this server has {model_name!r}",
                           param="model", code="model_not_found")  # fmt: skip

    # ---------------------------------------------------------------------------------------------- routes
    @app.get("/", include_in_schema=False)
    async def playground() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/health")
    async def health() -> JSONResponse:
        """ok (200); starting or shutting down (503, so that a load balancer sends requests elsewhere)."""
        alive = engine.thread is not None and engine.thread.is_alive()
        status = "shutting down" if state["shutting_down"] else "ok" if alive else "starting"
        body = {"status": status, "model": model_name, "active": engine.active, "queued": engine.queued}
        return JSONResponse(body, status_code=200 if status == "ok" else 503)

    @app.get("/metrics", response_class=Response)
    async def prometheus() -> Response:
        """Prometheus' text format: requests by status, tokens in and out, latencies, rows, prefix-cache hits."""
        return Response(metrics.render(), media_type=metrics.content_type)

    def model_card() -> dict[str, Any]:
        return {"id": model_name, "object": "model", "created": created, "owned_by": "gpt2", "max_model_len": ctx}

    @app.get("/v1/models", responses=ERRORS)
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}", responses=ERRORS)
    async def one_model(name: str) -> dict[str, Any]:
        check_model(name)
        return model_card()

    @app.api_route("/v1/chat/completions", methods=["GET", "POST"], include_in_schema=False)
    async def chat() -> JSONResponse:
        message = ("GPT-2 is not a chat model, so this server has no /v1/chat/completions: "
                   "send text to continue to POST /v1/completions")  # fmt: skip
        return error_response(404, message, code="not_found")

    @app.post("/v1/completions", response_model=None, responses=ERRORS)
    async def completions(body: CompletionRequest, request: Request) -> JSONResponse | StreamingResponse:
        check_model(body.model)
        if state["shutting_down"]:
            raise APIError(503, SHUTDOWN_MESSAGE, code=SHUTTING_DOWN, type_="server_error")
        plan = plan_rows(body, tokenizer, ctx, model.config.vocab_size)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                stream(plan, include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return await gather(plan, request)

    # ---------------------------------------------------------------------------------------------- running
    def submit(plan: Plan) -> tuple[asyncio.Queue[tuple[int, Event]], list[Row]]:
        events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()

        def emitter(index: int) -> Callable[[Event], None]:
            return lambda event: events.put_nowait((index, event))  # in the event loop's thread (dispatch)

        rows = [plan.row(i, emitter(i)) for i in range(len(plan.choices))]
        try:
            for row in rows:
                engine.submit(row)
        except GPT2Error:  # the engine stopped between the check and here
            for row in rows:
                row.cancelled = True
            raise APIError(503, SHUTDOWN_MESSAGE, code=SHUTTING_DOWN, type_="server_error") from None
        return events, rows

    async def gather(plan: Plan, request: Request) -> JSONResponse:
        events, rows = submit(plan)
        state["open"] += 1
        choices = [Choice(tokenizer, plan, i) for i in range(len(rows))]
        if plan.echo and not plan.echo_logprobs:  # with logprobs, the engine sends the prompt's tokens instead
            for c in choices:
                c.piece(Event(prompt=True))
        watcher = asyncio.create_task(watch_disconnect(request, rows, events))
        left = len(rows)
        try:
            while left:
                index, event = await events.get()
                if index < 0:  # the client has gone
                    return JSONResponse({})
                choices[index].piece(event)
                left -= event.finish_reason is not None
        finally:
            watcher.cancel()
            for row in rows:
                row.cancelled = True  # a no-op for finished rows; frees the rest when the client has gone
            state["open"] -= 1
        failed = next((c.error for c in choices if c.error), None)
        if failed:
            message, code = failed
            if code == SHUTTING_DOWN:
                raise APIError(503, f"{message} before this completion finished", code=code, type_="server_error")
            raise APIError(500, f"decoding failed: {message}", code=code, type_="server_error")
        return JSONResponse({
            "id": plan.id,
            "object": "text_completion",
            "created": plan.created,
            "model": model_name,
            "choices": [c.final() for c in choices],
            "usage": plan.usage(sum(c.completion_tokens for c in choices)),
            "system_fingerprint": None,
        })  # fmt: skip

    async def watch_disconnect(request: Request, rows: list[Row], events: asyncio.Queue) -> None:
        """Free the rows of a non-streamed request as soon as its client leaves (the body is read by now, so the
        next message is the disconnect)."""
        while (await request.receive())["type"] != "http.disconnect":
            pass
        for row in rows:
            row.cancelled = True
        events.put_nowait((-1, Event()))

    def error_event(message: str, code: str | None) -> str:
        return f"data: {json.dumps(error_body(message, 'server_error', None, code))}\n\n"

    async def stream(plan: Plan, include_usage: bool) -> AsyncIterator[str]:
        try:
            events, rows = submit(plan)
        except APIError as e:  # the server began shutting down after the request was checked
            yield error_event(e.message, e.code)
            yield "data: [DONE]\n\n"
            return
        state["open"] += 1
        choices = [Choice(tokenizer, plan, i) for i in range(len(rows))]
        left = len(rows)

        def chunk(piece: dict[str, Any] | None, usage: dict[str, Any] | None = None) -> str:
            out: dict[str, Any] = {"id": plan.id, "object": "text_completion", "created": plan.created,
                                   "model": model_name, "choices": [piece] if piece else []}  # fmt: skip
            if usage is not None:
                out["usage"] = usage
            return f"data: {json.dumps(out, ensure_ascii=False)}\n\n"

        try:
            if plan.echo and not plan.echo_logprobs:  # the prompt first, as its own chunk, before anything else
                for c in choices:
                    yield chunk(c.piece(Event(prompt=True)))
            while left:
                index, event = await events.get()
                c = choices[index]
                piece = c.piece(event)
                left -= event.finish_reason is not None
                if c.error:
                    message, code = c.error
                    yield error_event(message if code == SHUTTING_DOWN else f"decoding failed: {message}", code)
                    break
                usage = None
                if not left and not include_usage:  # the last chunk carries the usage (OpenAI's clients keep it)
                    usage = plan.usage(sum(c.completion_tokens for c in choices))
                if piece["text"] or piece["finish_reason"] or piece["logprobs"] or usage:
                    yield chunk(piece, usage)
            else:
                if include_usage:
                    yield chunk(None, plan.usage(sum(c.completion_tokens for c in choices)))
            yield "data: [DONE]\n\n"
        finally:  # also when the client disconnects: Starlette cancels this generator, and the rows go at once
            for row in rows:
                row.cancelled = True
            state["open"] -= 1

    return app
