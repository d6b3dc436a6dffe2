"""The shared file plumbing: atomic writes, and the one document reader behind `gpt2 prepare` and BPE training."""

from __future__ import annotations

import bz2
import gzip
import json
from pathlib import Path

import pytest
import zstandard

from gpt2.errors import GPT2Error
from gpt2.io import DocumentReader, atomic_open, atomic_write, input_files


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "f.json"
    atomic_write(path, b"old")
    atomic_write(path, "new ✓")
    assert path.read_text("utf-8") == "new ✓"
    with pytest.raises(TypeError):
        atomic_write(path, 12345)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError), atomic_open(path) as f:
        f.write(b"half of it")
        raise RuntimeError("killed midway")
    assert path.read_text("utf-8") == "new ✓"
    assert [p.name for p in path.parent.iterdir()] == ["f.json"]  # no temp file left behind


def test_documents_of_every_format_alike(tmp_path: Path) -> None:
    records = [{"text": "first record"}, {"text": ""}, {"text": "second ✓"}]
    jsonl = "".join(json.dumps(r) + "\n" for r in records) + "\n"
    (tmp_path / "b.txt.gz").write_bytes(gzip.compress(b"a gzipped file"))
    (tmp_path / "a.txt").write_text("a plain file", "utf-8")
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(jsonl.encode()))
    (tmp_path / "d.jsonl.bz2").write_bytes(bz2.compress(jsonl.encode()))
    (tmp_path / "e.txt").write_text("", "utf-8")
    (tmp_path / "skipped.bin").write_bytes(b"\0\1")
    files = input_files([tmp_path])
    assert [p.name for p in files] == ["a.txt", "b.txt.gz", "c.jsonl.zst", "d.jsonl.bz2", "e.txt"]
    texts = list(DocumentReader(files).texts())
    assert texts == ["a plain file", "a gzipped file", "first record", "second ✓", "first record", "second ✓"]


def test_a_large_text_file_streams_in_pieces_that_keep_characters_whole(tmp_path: Path, monkeypatch) -> None:
    import gpt2.io

    monkeypatch.setattr(gpt2.io, "PIECE_BYTES", 7)  # most reads end inside a multi-byte character
    text = "déjà vu 😀 € " * 50
    (tmp_path / "big.txt").write_text(text, "utf-8")
    [doc] = list(DocumentReader([tmp_path / "big.txt"]).documents())
    pieces = list(doc)
    assert len(pieces) > 50 and "".join(pieces) == text and "\ufffd" not in text


def test_bad_input_is_a_clear_error_or_one_warning(tmp_path: Path) -> None:
    (tmp_path / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(GPT2Error, match=r"image.txt: looks like a binary file \(a NUL byte at offset 8\)"):
        list(DocumentReader([tmp_path / "image.txt"]).texts())
    (tmp_path / "broken.txt.gz").write_bytes(gzip.compress(b"some text")[:-6])
    with pytest.raises(GPT2Error, match=r"broken.txt.gz: cannot read"):
        list(DocumentReader([tmp_path / "broken.txt.gz"]).texts())
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(GPT2Error, match=r"bad.jsonl:2: not valid JSON"):
        list(DocumentReader([tmp_path / "bad.jsonl"]).texts())
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 na\xefve".encode("latin-1"))
    (tmp_path / "mixed.jsonl").write_bytes(b'{"text": "caf\xe9"}\n{"text": "fine"}\n')
    reader = DocumentReader([tmp_path / "latin1.txt", tmp_path / "mixed.jsonl"])
    assert list(reader.texts()) == ["caf\ufffd na\ufffdve", "caf\ufffd", "fine"]
    with pytest.warns(
        UserWarning, match=r"invalid UTF-8 in 3 bytes of 2 documents \(in .*latin1.txt and 1 more file\)"
    ):
        reader.warn_invalid()
    with pytest.raises(GPT2Error, match="no such file or folder"):
        input_files([tmp_path / "missing"])


def test_a_full_disk_is_one_clear_error_and_keeps_the_old_file(small_disk) -> None:
    disk = small_disk("64k")
    atomic_write(disk / "state.json", b"old and complete")
    with pytest.raises(GPT2Error, match=r"state.json: the disk is full \(200,000 bytes needed, [\d,]+ bytes free\)"):
        atomic_write(disk / "state.json", b"x" * 200_000)
    assert (disk / "state.json").read_bytes() == b"old and complete"
    assert [p.name for p in disk.iterdir()] == ["state.json"]
