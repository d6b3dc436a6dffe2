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
