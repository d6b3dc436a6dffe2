"""`gpt2 serve` stopped by SIGTERM, as a service manager stops it: the command itself, in a process of its own."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from gpt2 import GPT, GPTConfig, generate  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory, gpt2_tokenizer) -> Path:
    """A small random model with a 1,024-token context: long completions take a while on a CPU."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50257, n_positions=1024, n_layer=4, n_head=4, n_embd=128)).eval()
    path = tmp_path_factory.mktemp("serve") / "m"
    model.save_pretrained(path, tokenizer=gpt2_tokenizer)
    return path


def start_command(folder: Path, *options: str) -> tuple[subprocess.Popen, str]:
    """`gpt2 serve --model folder` on a free loopback port, once it answers /health: the process and its URL."""
    with socket.socket() as s:  # a free loopback port (the command binds it a moment later)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [sys.executable, "-m", "gpt2", "serve", "--model", str(folder), "--port", str(port), "--device", "cpu",
            *options]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"the server did not start: {proc.communicate()[1]}")


class Stream:
    """A streamed completion read in a thread: its data lines, and an event once the first text has come."""

    def __init__(self, url: str, body: dict) -> None:
        self.lines: list[str] = []
        self.started = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._read, args=(url, body), daemon=True)
        self.thread.start()

    def _read(self, url: str, body: dict) -> None:
        try:
            with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}, timeout=120) as r:
                for line in r.iter_lines():
                    if line:
                        self.lines.append(line)
                        self.started.set()
        except BaseException as e:  # noqa: BLE001 (the test reports it)
            self.error = e
        self.started.set()

    def join(self) -> list[str]:
        self.thread.join(120)
        assert not self.thread.is_alive() and self.error is None, self.error
        return self.lines

    def text(self) -> str:
        chunks = [json.loads(line[6:]) for line in self.lines if line != "data: [DONE]"]
        return "".join(c["text"] for chunk in chunks for c in chunk.get("choices", []))


def test_sigterm_lets_streams_finish_refuses_new_work_and_exits_0(folder, gpt2_tokenizer) -> None:
    proc, url = start_command(folder, "--shutdown-grace", "120")
    try:
        stream = Stream(url, {"model": "m", "prompt": "Once upon a time", "max_tokens": 1000, "temperature": 0})
        assert stream.started.wait(60)
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30  # new work is refused while the stream in flight goes on
        while True:
            r = httpx.post(f"{url}/v1/completions", json={"model": "m", "prompt": "a", "max_tokens": 2}, timeout=30)
            if r.status_code == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "shutting_down" and "shutting down" in r.json()["error"]["message"]
        assert httpx.get(f"{url}/health", timeout=10).status_code == 503
        lines = stream.join()
        assert lines[-1] == "data: [DONE]" and "error" not in lines[-2]
        model = GPT.from_pretrained(folder)
        assert stream.text() == generate(model, gpt2_tokenizer, "Once upon a time", 1000, temperature=0)[0]
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        _, err = proc.communicate()
    assert "Traceback" not in err and "Cancel" not in err, err


def test_after_the_grace_period_streams_end_with_an_error_and_done(folder) -> None:
    proc, url = start_command(folder, "--shutdown-grace", "0.5")
    try:
        streams = [Stream(url, {"model": "m", "prompt": f"Story {i}", "max_tokens": 1000, "temperature": 0,
                                "top_k": 40, "seed": i}) for i in range(3)]  # fmt: skip
        assert all(s.started.wait(60) for s in streams)
        proc.send_signal(signal.SIGTERM)
        for stream in streams:
            lines = stream.join()
            assert lines[-1] == "data: [DONE]"
            error = json.loads(lines[-2][6:])["error"]
            assert error["code"] == "shutting_down" and "shutting down" in error["message"]
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        _, err = proc.communicate()
    assert "Traceback" not in err and "Cancel" not in err, err
