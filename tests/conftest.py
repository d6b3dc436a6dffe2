"""Shared test fixtures: the real data sets in ../shared/data, and small models."""

from __future__ import annotations

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
