"""`gpt2 demo`: the embedded corpus and the end-to-end pipeline."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gpt2.commands.demo import run_demo
from gpt2.errors import GPT2Error
from gpt2.model import GPT
from gpt2.python_docs import python_docs


def test_python_docs_is_real_english_documentation() -> None:
    docs = python_docs()
    text = "\n".join(docs)
    assert len(docs) > 200 and len(text) > 1_000_000
    assert 'The "if" statement' in text  # the language reference's topics
    words = text.split()
    assert sum(w.lower() in ("the", "a", "of", "is", "to") for w in words) / len(words) > 0.08  # English prose


def test_demo_pipeline_on_user_files(tmp_path: Path, shared_data: Path, capsys) -> None:
    run_demo(tmp_path / "demo", [str(shared_data / "tinyshakespeare")], vocab_size=300, max_steps=20, seq_len=32)
    printed = capsys.readouterr().out
    assert "[5/5] samples" in printed and "'To open a file,' -> 'To open a file," in printed
    assert GPT.from_pretrained(tmp_path / "demo" / "run" / "model").config.vocab_size == 300
    weights = (tmp_path / "demo" / "run" / "model" / "model.safetensors").read_bytes()
    with pytest.raises(GPT2Error, match=r"run holds the model of an earlier demo; pass --overwrite"):
        run_demo(tmp_path / "demo", [str(shared_data / "tinyshakespeare")], vocab_size=300, max_steps=4, seq_len=32)
    assert (tmp_path / "demo" / "run" / "model" / "model.safetensors").read_bytes() == weights  # nothing lost
    # a copy of the demo folder is the same corpus in a new place: its shards are reused, not refused
    shutil.copytree(tmp_path / "demo", tmp_path / "copy")
    run_demo(
        tmp_path / "copy", [str(shared_data / "tinyshakespeare")], vocab_size=300, max_steps=4, seq_len=32,
        overwrite=True,
    )  # fmt: skip
    assert "[5/5] samples" in capsys.readouterr().out
    assert GPT.from_pretrained(tmp_path / "copy" / "run" / "model").config.vocab_size == 300
