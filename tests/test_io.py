"""The shared file plumbing: atomic writes, and the one document reader behind `gpt2 prepare` and BPE training."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import pickle
from pathlib import Path

import pytest
import zstandard

from gpt2.errors import GPT2Error
from gpt2.io import CorruptInput, DocumentReader, atomic_open, atomic_write, input_files, open_binary


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
    with pytest.raises(GPT2Error, match=r"broken.txt.gz: truncated gzip data: the file ends at byte 23"):
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


def long_window_zstd(data: bytes) -> bytes:
    """zstd with a 2 GiB window and a checksum, as `zstd --long=31` writes Pushshift's dumps (no content size, so
    the frame declares the whole window)."""
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=31, enable_ldm=True, write_checksum=True)
    out = io.BytesIO()
    with zstandard.ZstdCompressor(compression_params=params).stream_writer(out, closefd=False) as w:
        w.write(data)
    return out.getvalue()


COMPRESSORS = {
    "zst": long_window_zstd,
    "gz": gzip.compress,
    "bz2": bz2.compress,
    "xz": lzma.compress,
}


@pytest.mark.parametrize("suffix", COMPRESSORS)
def test_compressed_inputs_whole_truncated_and_corrupt(tmp_path: Path, suffix: str) -> None:
    data = b"".join(b'{"text": "line %d of a dump"}\n' % i for i in range(20_000))
    raw = COMPRESSORS[suffix](data)
    whole = tmp_path / f"d.jsonl.{suffix}"
    whole.write_bytes(raw)
    with open_binary(whole) as f:
        assert f.read() == data
    assert len(list(DocumentReader([whole]).texts())) == 20_000
    for fraction in (0.6, 0.95):  # a download cut short: never a silent partial read
        cut = tmp_path / f"cut.jsonl.{suffix}"
        cut.write_bytes(raw[: int(len(raw) * fraction)])
        truncated = rf"cut.jsonl.{suffix}: truncated \w+ data: the file ends at byte"
        with pytest.raises(CorruptInput, match=truncated) as e, open_binary(cut) as f:
            while f.read(4096):
                pass
        assert e.value.offset == e.value.size == cut.stat().st_size
    bad = bytearray(raw)
    bad[len(bad) // 2 : len(bad) // 2 + 8] = bytes(8)  # eight zero bytes in the middle
    corrupt = tmp_path / f"bad.jsonl.{suffix}"
    corrupt.write_bytes(bytes(bad))
    with pytest.raises(CorruptInput, match=r"corrupt \w+ data near byte [\d,]+ of") as e, open_binary(corrupt) as f:
        f.read()
    assert 0 <= e.value.offset < e.value.size == len(bad)  # where the reader noticed (gzip: at the checksum)
    again = pickle.loads(pickle.dumps(e.value))  # as a worker process hands it back
    assert (str(again), again.offset, again.size) == (str(e.value), e.value.offset, e.value.size)


def test_long_window_zstd_is_what_the_default_decoder_refuses(tmp_path: Path) -> None:
    raw = long_window_zstd(b"x" * 1000)
    with pytest.raises(zstandard.ZstdError, match="too much memory"):
        zstandard.ZstdDecompressor().decompressobj().decompress(raw)
    (tmp_path / "RS_2017-11.zst").write_bytes(raw)  # Pushshift's names have no .jsonl
    with open_binary(tmp_path / "RS_2017-11.zst") as f:
        assert f.read() == b"x" * 1000


def test_several_frames_members_and_streams_are_read_whole(tmp_path: Path) -> None:
    parts = [b"first part\n", b"second part\n", b"third\n"]
    files = {
        "f.zst": b"".join(zstandard.ZstdCompressor(write_checksum=True).compress(p) for p in parts),
        "f.gz": b"".join(gzip.compress(p) for p in parts) + bytes(64),  # zero padding after the last member
        "f.bz2": b"".join(bz2.compress(p) for p in parts),
        "f.xz": b"".join(lzma.compress(p) for p in parts),
    }
    for name, raw in files.items():
        (tmp_path / name).write_bytes(raw)
        with open_binary(tmp_path / name) as f:
            assert f.read() == b"".join(parts), name
    (tmp_path / "empty.zst").write_bytes(b"")
    with open_binary(tmp_path / "empty.zst") as f:
        assert f.read() == b""
