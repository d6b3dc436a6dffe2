"""Running the app under uvicorn: `Server`, for `gpt2 serve`, drains on SIGTERM or Ctrl+C before it exits; and
`BackgroundServer`, in a thread on a free loopback port, for tests and benchmarks."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI

from gpt2.errors import GPT2Error


class Server(uvicorn.Server):
    """uvicorn's server, whose first SIGTERM or SIGINT starts the app's drain (new requests get a 503, those in
    flight finish for up to `grace` seconds, the rest end with an error) and exits once it is done, with status 0
    (uvicorn would re-raise the signal, an exit by signal to a service manager); a second signal ends the grace."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, grace: float) -> None:
        super().__init__(config)
        self.app, self.grace = app, grace
        self.draining = False
        self.hurry: asyncio.Event | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig not in (signal.SIGTERM, signal.SIGINT):
            return super().handle_exit(sig, frame)
        loop = asyncio.get_event_loop()  # signal handlers run in the main thread, which runs the loop
        if self.draining:
            if self.hurry is not None:
                loop.call_soon_threadsafe(self.hurry.set)
            return
        self.draining = True
        loop.call_soon_threadsafe(lambda: loop.create_task(self._drain()))

    async def _drain(self) -> None:
        self.hurry = asyncio.Event()
        await self.app.state.drain(self.grace, self.hurry)
        self.should_exit = True


class BackgroundServer:
    """uvicorn serving an app in a thread, on a loopback port chosen by the system: for tests and benchmarks.

    with BackgroundServer(app) as url: ...   # url is http://127.0.0.1:PORT
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
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
