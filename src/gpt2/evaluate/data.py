"""Where each task's data comes from: the official file, its download address and checksum, and a data folder
laid out as ../shared/data is (one folder per data set, official file names inside).

Lookup order for DIR/<folder>/<name>: the --data-dir folder, then the download cache (gpt2.hub.cache_dir()/data),
then, unless offline, a download of the official file (or of the official archive, from which only the named
member is extracted, or the files of one archive folder joined one per line: RACE's per-article JSON files),
checked by sha256 before anything is kept. A file found nowhere (and not downloadable) is a
MissingData error, so that `evaluate(..., skip_missing=True)` can skip its task and run the others.

The tasks' readers, which gpt2.analysis.overlap also splits test sets with, read files through read_text, lines
and read_jsonl here, so that every data set is decoded, decompressed and cut into lines one way.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gpt2.errors import GPT2Error
from gpt2.hub import cache_dir, download, sha256_file
from gpt2.io import atomic_open, is_jsonl, open_binary

T = TypeVar("T")


class MissingData(GPT2Error):
    """A data file is absent and could not be downloaded; the message names it and says how to get it."""


@dataclass(frozen=True)
class DataFile:
    """One official file. `url` serves the file itself, or an archive holding it at `member`."""

    folder: str
    name: str
    url: str
    sha256: str | None  # of what `url` serves; None where no checksum is published (then `md5` or `size`)
    member: str | None = None
    md5: str | None = None
    size: int | None = None
    file_sha256: tuple[str, ...] = ()  # known digests of the file itself (official, and byte-exact copies)
    join: str | None = None  # an archive folder whose files, sorted by name, become this file's lines

    @property
    def relpath(self) -> str:
        return f"{self.folder}/{self.name}"

    @property
    def where(self) -> str:
        """Where to get it, for messages: the address, and the member or folder of the archive."""
        if self.join:
            return f"{self.url} (the files of {self.join}, joined one per line)"
        return self.url + (f" (member {self.member})" if self.member else "")


class DataDir:
    """Resolves DataFiles to local paths, downloading when allowed, and records what was read."""

    def __init__(self, root: str | os.PathLike | None = None, *, offline: bool = False) -> None:
        self.cache = cache_dir() / "data"
        self.root = Path(root) if root is not None else self.cache
        self.offline = offline

    def find(self, f: DataFile) -> Path | None:
        for base in (self.root, self.cache):
            if (base / f.relpath).is_file():
                return base / f.relpath
        return None

    def path(self, f: DataFile) -> Path:
        """The local file, downloaded (and extracted from its archive) first if it is missing."""
        if (found := self.find(f)) is not None:
            return found
        where = f.where
        if self.offline:
            raise MissingData(
                f"{self.root / f.relpath} is missing; get it from {where} and put it there (or pass --data-dir "
                f"with a folder holding {f.relpath}), or run without --offline to download it"
            )
        dest = self.cache / f.relpath
        try:
            if f.member is None and f.join is None:
                return self._fetch(f, dest)
            archive = self._fetch(f, self.cache / "archives" / f.url.rstrip("/").rsplit("/", 1)[-1])
            if f.join is not None:
                join_members(archive, f.join, dest)
            else:
                assert f.member is not None
                extract_member(archive, f.member, dest)
            return dest
        except GPT2Error as e:
            raise MissingData(
                f"{self.root / f.relpath} is missing and could not be downloaded ({e}); get it from {where} and "
                f"put it there, or pass --data-dir with a folder holding {f.relpath}"
            ) from None

    def _fetch(self, f: DataFile, dest: Path) -> Path:
        download(f.url, dest, f.sha256)
        if f.sha256 is None:
            if f.md5 is not None and (got := md5_file(dest)) != f.md5:
                dest.unlink()
                raise GPT2Error(f"{f.url}: checksum mismatch (md5 {got}, expected {f.md5}); not saved")
            if f.size is not None and (got_size := dest.stat().st_size) != f.size:
                dest.unlink()
                raise GPT2Error(f"{f.url}: {got_size} bytes, expected {f.size}; not saved")
        return dest

    def describe(self, f: DataFile, path: Path, **extra: Any) -> dict[str, Any]:
        """Provenance for the results' protocol: which file was read, its digest, and whether it is a known copy."""
        digest = sha256_file(path)
        known = digest in f.file_sha256 if f.file_sha256 else None
        return {"file": str(path), "sha256": digest, "known_copy": known, "source": f.url, **extra}


def md5_file(path: str | os.PathLike) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def extract_member(archive: Path, member: str, dest: Path) -> None:
    """Copy one named member of a zip or tar archive to dest (atomically); nothing else is unpacked, so archive
    paths can never write outside dest."""
    with atomic_open(dest) as out:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                try:
                    src = z.open(member)
                except KeyError:
                    raise GPT2Error(f"{archive}: has no member {member}") from None
                with src:
                    shutil.copyfileobj(src, out, 1 << 20)
        else:
            with tarfile.open(archive, "r:*") as t:
                for info in t:
                    if info.name.removeprefix("./") == member and info.isfile():
                        src = t.extractfile(info)
                        assert src is not None
                        shutil.copyfileobj(src, out, 1 << 20)
                        break
                else:
                    raise GPT2Error(f"{archive}: has no member {member}")


def join_members(archive: Path, folder: str, dest: Path) -> None:
    """The files directly in one folder of a tar archive, sorted by name, written to dest one per line (each
    file's bytes, less a final line break, then "\\n"), atomically; nothing is unpacked. A file that holds a
    line break is an error, as the lines would no longer be the files."""
    prefix = folder.strip("/") + "/"
    with tarfile.open(archive, "r:*") as t:
        inside = {i.name.removeprefix("./")[len(prefix) :]: i for i in t.getmembers()
                  if i.isfile() and i.name.removeprefix("./").startswith(prefix)}  # fmt: skip
        members = [inside[n] for n in sorted((n for n in inside if "/" not in n), key=str.encode)]
        if not members:
            raise GPT2Error(f"{archive}: has no files in {folder}")
        with atomic_open(dest) as out:
            for info in members:
                src = t.extractfile(info)
                assert src is not None
                data = src.read().rstrip(b"\r\n")
                if b"\n" in data:
                    raise GPT2Error(f"{archive}: {info.name} holds a line break; expected one record per file")
                out.write(data + b"\n")


_LINES = re.compile(r"[^\n]*\n|[^\n]+\Z")


def lines(text: str) -> list[str]:
    """text's lines, each with its "\\n" (the last may lack one). Only "\\n" ends a line: the data sets' own
    counts split there, not at the other characters str.splitlines() also breaks at."""
    return _LINES.findall(text)


def read_text(path: Path) -> str:
    """A data file's text: decompressed by its suffix (.gz, .bz2, .xz, .zst), line ends made "\\n" as Python's
    text mode makes them, and invalid UTF-8 replaced with U+FFFD and warned about."""
    try:
        with open_binary(path) as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise GPT2Error(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    if not is_jsonl(path) and (nul := raw.find(b"\0")) >= 0:
        raise GPT2Error(f"{path}: looks like a binary file (a NUL byte at offset {nul}); pass UTF-8 text files")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        bad = sum(1 for c in raw.decode("utf-8", "surrogateescape") if "\udc80" <= c <= "\udcff")
        warnings.warn(f"invalid UTF-8 in {bad:,} bytes of {path} was replaced with U+FFFD", stacklevel=3)
        text = raw.decode("utf-8", "replace")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_jsonl(path: Path, parse: Callable[[Any], T], expected: str, limit: int | None = None) -> list[T]:
    """parse() of each non-blank line of a JSON Lines file; a bad record names its line and what was expected."""
    out: list[T] = []
    for n, line in enumerate(lines(read_text(path)), start=1):
        if limit is not None and len(out) == limit:
            break
        if not line.strip():
            continue
        try:
            out.append(parse(json.loads(line)))
        except (ValueError, KeyError, TypeError):
            raise GPT2Error(f"{path}:{n}: expected {expected}") from None
    return out
