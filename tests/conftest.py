"""Shared test fixtures: the real data sets in ../shared/data, and small models."""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real public data sets beside the repository; tests that need it skip without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (it sits beside the repository root)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def gpt2_tokenizer(shared_data: Path):
    """GPT-2's own vocabulary, read from the shared encoder.json + vocab.bpe."""
    from gpt2.tokenizer import Tokenizer

    return Tokenizer.from_pretrained(shared_data / "gpt2-vocab")


@pytest.fixture()
def small_disk(tmp_path: Path):
    """A folder on a tmpfs of the given size (mount needs root; the test skips without it), to fill up on purpose."""
    import subprocess

    mounts: list[Path] = []

    def make(size: str) -> Path:
        folder = tmp_path / f"disk{len(mounts)}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.decode().strip() or 'mount failed'})")
        mounts.append(folder)
        return folder

    yield make
    for folder in mounts:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _built(get: Callable):
    """A compiled kernel of gpt2.kernels (`get` builds it on first use); a skip where none can be built."""
    if not sys.platform.startswith("linux") or shutil.which("c++") is None:
        pytest.skip("the kernel is built on Linux with a C++ compiler; none here")
    op = get()
    assert op is not None, "a compiler is present, so the kernel must build (see the warning above)"
    return op


@pytest.fixture(scope="session")
def gemv():
    from gpt2 import kernels

    return _built(kernels.gemv_kernel)


@pytest.fixture(scope="session")
def gemv_int8():
    from gpt2 import kernels

    return _built(kernels.gemv_int8_kernel)


@pytest.fixture()
def decode_through_engine() -> Callable:
    """decode(model, tokenizer, prompts, lengths, max_batch) -> the greedy text each prompt got from the server's
    Engine, the prompts submitted a few ms apart so that rows join and leave mid-flight."""
    from gpt2.generate import SamplingOptions
    from gpt2.serve.batcher import Engine, Request

    def decode(model, tokenizer, prompts: list[str], lengths: list[int], max_batch: int) -> list[str]:
        engine = Engine(model, tokenizer, max_batch=max_batch)
        engine.start()
        texts = [""] * len(prompts)
        finished = threading.Semaphore(0)

        def emitter(i: int):
            def emit(event) -> None:
                texts[i] += event.text
                if event.finish_reason:
                    finished.release()

            return emit

        try:
            for i, p in enumerate(prompts):
                engine.submit(Request(tokenizer.encode(p), lengths[i], emitter(i), SamplingOptions(temperature=0)))
                time.sleep(0.005 * (i % 3))
            assert all(finished.acquire(timeout=60) for _ in prompts)
        finally:
            engine.stop()
        return texts

    return decode
