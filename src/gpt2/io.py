"""File plumbing that every stage shares: atomic writes, compressed files, input listing, and one document reader.

A leaf module: it imports nothing of the package but `errors`, so the tokenizer, the data preparation, the BPE
trainer, checkpoints and downloads can all use it without importing one another.

  atomic_open / atomic_write   a temp file in the same folder, renamed over the target only when complete;
  open_binary                  a file's bytes, decompressed by suffix (.gz, .bz2, .xz, .zst, long-window zstd
                               too), a truncated or corrupt file an error naming it and the offset reached;
  input_files                  the text files named by files and folders, in a stable order;
  DocumentReader               the documents of .txt and .jsonl(.gz/.zst/.bz2/.xz) files, as `gpt2 prepare` and
                               `gpt2 tokenizer train` both read them;
  report, progress_bar, quiet  the one voice of the library: lines through the `gpt2` logger and progress bars
                               on stderr, which the commands silence with --quiet.
"""

from __future__ import annotations

import bz2
import errno
import io
import json
import logging
import lzma
import os
import shutil
import sys
import tempfile
import warnings
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from gpt2.errors import GPT2Error

TEXT_SUFFIXES = tuple(t + c for t in (".txt", ".md", ".rst", ".text") for c in ("", ".gz", ".zst", ".bz2", ".xz"))
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".jsonl.bz2", ".jsonl.xz")
PIECE_BYTES = 1 << 20  # text files are read in pieces of this size, so one larger than memory streams

_UMASK = os.umask(0)
os.umask(_UMASK)


# ------------------------------------------------------------------------------------------------ writing
@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", size: int | None = None) -> Iterator[IO]:
    """A file to write `path` through: a temp file in the same folder, renamed over `path` when the block ends
    without an exception (readers see the old file or the new one, never half of one), removed otherwise.
    A full disk is one GPT2Error naming the file (and `size`, the bytes it needed, when known)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes files private (0600); give them the usual permissions
        os.replace(tmp, path)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise disk_full(path, size) from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write `data` (str as UTF-8) to `path` atomically (see atomic_open)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_open(path, size=len(raw) if isinstance(raw, bytes) else None) as f:
        f.write(raw)


def disk_full(path: str | os.PathLike, needed: int | None = None) -> GPT2Error:
    """The error for a write that ran out of disk: which file, how much it needed and how much is free."""
    try:
        free = f"{shutil.disk_usage(Path(path).parent).free:,} bytes free"
    except OSError:
        free = "free space unknown"
    need = f"{needed:,} bytes needed, " if needed is not None else ""
    return GPT2Error(f"{path}: the disk is full ({need}{free}); what was written before is kept, complete")


# ------------------------------------------------------------------------------------------------ reading
def is_jsonl(path: Path) -> bool:
    return path.name.endswith(JSONL_SUFFIXES)


# Pushshift's dumps are written with `zstd --long=31`: a 2 GiB window, beyond the decoder's default 128 MiB limit.
ZSTD_MAX_WINDOW = 1 << 31
_COMPRESSED_PIECE = 1 << 14  # compressed bytes read at a time: a corrupt spot is located within (and loses) this much


class CorruptInput(GPT2Error):
    """A compressed file that is truncated or corrupt: its path, and how far into it (compressed bytes) the
    reader got."""

    def __init__(self, path: Path, offset: int, size: int, what: str) -> None:
        self.path, self.offset, self.size, self.what = path, offset, size, what
        super().__init__(f"{path}: {what}")

    def __reduce__(self) -> tuple:  # crosses process boundaries intact (a worker's error reaches the command)
        return CorruptInput, (self.path, self.offset, self.size, self.what)


def _decompressor(kind: str) -> Any:
    """A fresh incremental decompressor with zlib's interface (decompress, eof, unused_data) for one member,
    stream or frame of a file."""
    if kind == "gzip":
        return zlib.decompressobj(wbits=31)
    if kind == "bz2":
        return bz2.BZ2Decompressor()
    if kind == "xz":
        return lzma.LZMADecompressor()
    import zstandard

    return zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW).decompressobj()


class _Decompressing(io.RawIOBase):
    """The decompressed bytes of a .gz, .bz2, .xz or .zst file, streamed; files of several members (gzip),
    streams (bz2, xz) or frames (zstd) are read whole. Every format fails the same way (zstandard's own reader
    stops quietly at a truncated frame): a truncated or corrupt file raises CorruptInput."""

    def __init__(self, path: Path, kind: str) -> None:
        super().__init__()
        self.path, self.kind = path, kind
        self.raw = open(path, "rb")  # noqa: SIM115 (closed by close())
        self.size = os.fstat(self.raw.fileno()).st_size
        self.offset = 0  # compressed bytes consumed
        self.decompressor = _decompressor(kind)
        self.started = False  # the current member has input
        self.pending, self.at = memoryview(b""), 0  # decompressed bytes, and how many of them were returned
        self.done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while self.at == len(self.pending) and not self.done:
            self.pending, self.at = memoryview(self._next()), 0
        n = min(len(buffer), len(self.pending) - self.at)
        buffer[:n] = self.pending[self.at : self.at + n]
        self.at += n
        return n

    def _next(self) -> bytes:
        data = self.raw.read(_COMPRESSED_PIECE)
        if not data:
            self.done = True
            if self.started and not self.decompressor.eof:
                what = f"truncated {self.kind} data: the file ends at byte {self.offset:,}, inside compressed data"
                raise CorruptInput(self.path, self.offset, self.size, what)
            return b""
        out = []
        while data:
            if self.kind == "gzip" and not self.started:  # gzip writers may pad the end with zeros (as gzip skips)
                rest = data.lstrip(b"\0")
                self.offset += len(data) - len(rest)
                if not (data := rest):
                    break
            self.started = True
            try:
                out.append(self.decompressor.decompress(data))
            except Exception as e:  # zlib.error, OSError, LZMAError, ZstdError: the bytes are not this format
                what = f"corrupt {self.kind} data near byte {self.offset:,} of {self.size:,} ({e})"
                raise CorruptInput(self.path, self.offset, self.size, what) from None
            if not self.decompressor.eof:
                self.offset += len(data)
                break
            rest = self.decompressor.unused_data
            self.offset += len(data) - len(rest)
            data = rest
            self.decompressor, self.started = _decompressor(self.kind), False
        return b"".join(out)

    def close(self) -> None:
        self.raw.close()
        super().close()


COMPRESSED_SUFFIXES = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd"}


def open_binary(path: Path) -> io.BufferedIOBase:
    """A file's bytes, decompressed by its suffix (.gz, .bz2, .xz, .zst; zstd with windows up to 2 GiB, as
    Pushshift's dumps need). Reading a truncated or corrupt compressed file raises CorruptInput."""
    kind = COMPRESSED_SUFFIXES.get(Path(path).suffix)
    if kind is None:
        return open(path, "rb")
    return io.BufferedReader(_Decompressing(Path(path), kind), buffer_size=1 << 20)


def input_files(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """The files named by `inputs`; folders are searched recursively for .txt/.md/.rst/.text and .jsonl files
    (plain or .gz/.zst/.bz2/.xz), in a stable order."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.is_file() and p.name.endswith(TEXT_SUFFIXES + JSONL_SUFFIXES)
            )
            if not found:
                raise GPT2Error(f"{path}: no .txt or .jsonl(.gz/.zst/.bz2/.xz) files in this folder")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise GPT2Error(f"{path}: no such file or folder")
    return files


def _utf8_prefix(raw: bytes) -> int:
    """The length of the longest prefix of `raw` that does not end inside a UTF-8 multi-byte sequence."""
    for back in range(1, min(4, len(raw)) + 1):
        byte = raw[-back]
        if byte < 0x80:
            return len(raw)
        if byte >= 0xC0:  # the lead byte of the last sequence: is the sequence complete?
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return len(raw) if back >= need else len(raw) - back
    return len(raw)


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Read errors (a missing file, a corrupt archive) as one GPT2Error that names the file."""
    try:
        yield
    except (OSError, EOFError) as e:
        raise GPT2Error(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None


class DocumentReader:
    """The documents of text files (one document per file) and JSON Lines files (one per record, its
    `text_field`), in file order.

    `documents()` gives each document as an iterator of pieces of its text, so a text file larger than memory
    streams (the BPE trainer's way); `texts()` gives whole, non-empty documents (`gpt2 prepare`'s way). A NUL
    byte marks a text file as binary, which is an error. Bytes that are not UTF-8 are replaced with U+FFFD and
    counted; `warn_invalid()` then says so once.
    """

    def __init__(self, files: Iterable[str | os.PathLike], text_field: str = "text") -> None:
        self.files = [Path(f) for f in files]
        self.text_field = text_field
        self.invalid_bytes = 0  # bytes of invalid UTF-8 replaced
        self.invalid_documents = 0  # documents that held some
        self.invalid_files: list[Path] = []
        self._current_invalid = False

    def _decode(self, raw: bytes, path: Path) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            # surrogateescape turns each invalid byte into one U+DC80..U+DCFF, which valid UTF-8 never yields.
            self.invalid_bytes += sum(1 for c in raw.decode("utf-8", "surrogateescape") if "\udc80" <= c <= "\udcff")
            if not self._current_invalid:
                self._current_invalid = True
                self.invalid_documents += 1
            if not self.invalid_files or self.invalid_files[-1] != path:
                self.invalid_files.append(path)
            return raw.decode("utf-8", "replace")

    def _text_file(self, path: Path) -> Iterator[str]:
        offset, carry = 0, b""
        with _reading(path), open_binary(path) as f:
            while raw := f.read(PIECE_BYTES):
                if (nul := raw.find(b"\0")) >= 0:
                    raise GPT2Error(
                        f"{path}: looks like a binary file (a NUL byte at offset {offset + nul}); pass UTF-8 text files"
                    )
                offset += len(raw)
                raw = carry + raw
                end = _utf8_prefix(raw)
                carry = raw[end:]
                yield self._decode(raw[:end], path)
        if carry:
            yield self._decode(carry, path)

    def _records(self, path: Path) -> Iterator[str]:
        with _reading(path), open_binary(path) as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                self._current_invalid = False
                try:
                    record = json.loads(self._decode(line, path))
                except ValueError:
                    raise GPT2Error(f"{path}:{n}: not valid JSON") from None
                text = record.get(self.text_field) if isinstance(record, dict) else None
                if not isinstance(text, str):
                    raise GPT2Error(f"{path}:{n}: no string field {self.text_field!r}")
                yield text

    def documents(self) -> Iterator[Iterator[str]]:
        """Each document as an iterator of pieces of its text (consume one before asking for the next)."""
        for path in self.files:
            if is_jsonl(path):
                yield from (iter((text,)) for text in self._records(path))
            else:
                self._current_invalid = False
                yield self._text_file(path)

    def texts(self) -> Iterator[str]:
        """Each non-empty document as one string."""
        for pieces in self.documents():
            if text := "".join(pieces):
                yield text

    def warn_invalid(self, stacklevel: int = 3) -> None:
        """One warning if any bytes were not UTF-8: how many, in how many documents, and where."""
        if not self.invalid_files:
            return
        more = f" and {_count(len(self.invalid_files) - 1, 'more file')}" if len(self.invalid_files) > 1 else ""
        warnings.warn(
            f"invalid UTF-8 in {_count(self.invalid_bytes, 'byte')} of {_count(self.invalid_documents, 'document')} "
            f"(in {self.invalid_files[0]}{more}) was replaced with U+FFFD",
            stacklevel=stacklevel,
        )


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


# ------------------------------------------------------------------------------------------------ reporting
# Library modules report through `report` and `progress_bar`, never print; the commands decide what is shown (`quiet`).
logger = logging.getLogger("gpt2")


class _Lines(logging.Handler):
    """Each message a line on stderr, written through tqdm once it is loaded, so that a progress bar on the terminal
    is redrawn below the line instead of being cut by it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            if (tqdm := sys.modules.get("tqdm")) is not None:
                tqdm.tqdm.write(line, file=sys.stderr)
            else:
                print(line, file=sys.stderr, flush=True)
        except Exception:
            self.handleError(record)


if not logger.handlers:  # a Python user sees the lines too; logging.getLogger("gpt2") configures them
    logger.addHandler(_Lines())
    logger.setLevel(logging.INFO)
    logger.propagate = False


def report(message: str) -> None:
    """One line for the person running the library (a step's loss, a stage finished): stderr, unless quiet."""
    logger.info(message)


def quiet(on: bool = True) -> None:
    """--quiet: no report lines and no progress bars; warnings and errors still show."""
    logger.setLevel(logging.WARNING if on else logging.INFO)


class _NoBar:
    """What `progress_bar` gives when nothing is shown: a tqdm bar's methods, doing nothing."""

    def __init__(self, iterable: Iterable | None = None) -> None:
        self.iterable = iterable if iterable is not None else ()

    def __iter__(self) -> Iterator:
        return iter(self.iterable)

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: object, **kwargs: object) -> None:
        pass

    def set_postfix_str(self, *args: object, **kwargs: object) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(iterable: Iterable | None = None, *, enabled: bool = True, **kwargs: Any) -> Any:
    """A tqdm progress bar on stderr (tqdm's keywords: total, desc, unit, ...), or a stand-in with its methods when
    `enabled` is false or reporting is quiet; tqdm is imported only for a bar that shows (a tenth of a second)."""
    if not enabled or not logger.isEnabledFor(logging.INFO):
        return _NoBar(iterable)
    from tqdm import tqdm

    return tqdm(iterable, **kwargs)
