"""GPT-2's byte-level BPE: load a vocabulary, encode text to ids and decode ids back to bytes and text.

A vocabulary is two files: the token -> id map (`encoder.json`, named `vocab.json` by Hugging Face) and the
ordered merge list (`vocab.bpe`, named `merges.txt`). Tokens are byte strings written through GPT-2's
bytes_to_unicode() table so that every byte is a printable character; ids are merge ranks: the 256 byte
tokens first, then one token per merge in file order, then <|endoftext|>.

Encoding runs on tiktoken's engine with our ranks (the fast path).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Collection, Iterable, Sequence
from collections.abc import Set as AbstractSet
from functools import cache
from pathlib import Path
from typing import Literal

from gpt2.errors import GPT2Error

EOT = "<|endoftext|>"
# GPT-2's pre-tokenization: contractions, letter runs, digit runs, other symbols, each with at most one
# leading space, then whitespace. BPE merges never cross these pieces, so merges never mix categories.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
OPENAI_FILES = ("encoder.json", "vocab.bpe")
HF_FILES = ("vocab.json", "merges.txt")
# OpenAI's published GPT-2 vocabulary, with the checksums tiktoken pins for it.
GPT2_VOCAB_URLS = {
    "encoder.json": (
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
        "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    ),
    "vocab.bpe": (
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    ),
}
GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table: printable Latin-1 bytes map to themselves, the other 68
    bytes to the characters 256, 257, ... in byte order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@cache
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def token_to_bytes(token: str) -> bytes:
    decoder = unicode_to_bytes()
    try:
        return bytes(decoder[c] for c in token)
    except KeyError as e:
        raise GPT2Error(f"token {token!r} holds {e.args[0]!r}, which is not in GPT-2's byte alphabet") from None


def bytes_to_token(b: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[x] for x in b)


class Tokenizer:
    """A GPT-2 byte-level BPE vocabulary: `merges` in priority order, and <|endoftext|> after them."""

    def __init__(self, merges: Sequence[tuple[bytes, bytes]], name: str = "custom") -> None:
        import tiktoken

        ranks: dict[bytes, int] = {bytes([b]): i for i, b in enumerate(bytes_to_unicode())}
        for a, b in merges:
            if a not in ranks or b not in ranks:
                raise GPT2Error(f"merge {a!r} + {b!r} uses a token that no earlier merge made")
            if a + b in ranks:
                raise GPT2Error(f"merge {a!r} + {b!r} makes a token that already exists")
            ranks[a + b] = len(ranks)
        self.name = name
        self.merges: list[tuple[bytes, bytes]] = list(merges)
        self.ranks = ranks  # token bytes -> id, the 256 single bytes in bytes_to_unicode() order first
        self.eot_id = len(ranks)
        self.vocab_size = len(ranks) + 1
        self._enc = tiktoken.Encoding(
            name=f"gpt2-bpe-{self.fingerprint[:12]}",
            pat_str=GPT2_PATTERN,
            mergeable_ranks=ranks,
            special_tokens={EOT: self.eot_id},
        )

    # ---------------------------------------------------------------- loading and saving
    @classmethod
    def from_pretrained(cls, path_or_name: str | os.PathLike) -> Tokenizer:
        """Load a folder holding encoder.json + vocab.bpe (OpenAI's names) or vocab.json + merges.txt (Hugging
        Face's), as in a saved model folder; or GPT-2's official vocabulary by name (downloaded once)."""
        path = Path(path_or_name)
        if str(path_or_name) in GPT2_NAMES and not path.exists():
            return cls.from_files(*download_gpt2_vocab())
        if not path.is_dir():
            raise GPT2Error(
                f"{path}: no such tokenizer folder; pass a folder holding encoder.json + vocab.bpe "
                f"(or vocab.json + merges.txt), or the name 'gpt2'"
            )
        for vocab_name, merges_name in (OPENAI_FILES, HF_FILES):
            if (path / vocab_name).is_file() and (path / merges_name).is_file():
                return cls.from_files(path / vocab_name, path / merges_name)
        raise GPT2Error(f"{path}: holds neither encoder.json + vocab.bpe nor vocab.json + merges.txt")

    @classmethod
    def from_files(cls, vocab_file: str | os.PathLike, merges_file: str | os.PathLike) -> Tokenizer:
        """Load a token -> id JSON map and a merge list; the ids must be GPT-2's (merge ranks, EOT last)."""
        merges_path, vocab_path = Path(merges_file), Path(vocab_file)
        try:
            lines = merges_path.read_text(encoding="utf-8").splitlines()
            vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise GPT2Error(f"cannot read tokenizer files {vocab_path}, {merges_path}: {e}") from None
        if lines and lines[0].startswith("#version"):
            lines = lines[1:]
        merges = []
        for n, line in enumerate(lines, start=2):
            parts = line.split(" ")
            if line == "":
                continue
            if len(parts) != 2:
                raise GPT2Error(f"{merges_path}:{n}: expected two tokens separated by one space, got {line!r}")
            merges.append((token_to_bytes(parts[0]), token_to_bytes(parts[1])))
        name = "gpt2" if len(merges) == 50000 and vocab.get("Ġthe") == 262 else merges_path.parent.name
        tok = cls(merges, name=name)
        expected = {bytes_to_token(b): i for b, i in tok.ranks.items()} | {EOT: tok.eot_id}
        if vocab != expected:
            wrong = next((k for k in expected if vocab.get(k) != expected[k]), None)
            raise GPT2Error(
                f"{vocab_path} does not match {merges_path}: token {wrong!r} has id {vocab.get(wrong)}, "
                f"the merge order gives {expected.get(wrong)} ({len(vocab)} tokens vs {len(expected)} expected)"
            )
        return tok

    def save_pretrained(self, folder: str | os.PathLike, names: Literal["hf", "openai"] = "hf") -> None:
        """Write the vocabulary as vocab.json + merges.txt (Hugging Face's names, for model folders) or
        encoder.json + vocab.bpe (OpenAI's); each file written atomically."""
        from gpt2.checkpoint import atomic_write

        vocab_name, merges_name = HF_FILES if names == "hf" else OPENAI_FILES
        encoder = {bytes_to_token(b): i for b, i in self.ranks.items()} | {EOT: self.eot_id}
        merges = "".join(f"{bytes_to_token(a)} {bytes_to_token(b)}\n" for a, b in self.merges)
        atomic_write(Path(folder) / vocab_name, json.dumps(encoder, ensure_ascii=False).encode())
        atomic_write(Path(folder) / merges_name, ("#version: 0.2\n" + merges).encode())

    @property
    def fingerprint(self) -> str:
        """sha256 over the merge list: two tokenizers with the same fingerprint encode identically."""
        h = hashlib.sha256()
        for a, b in self.merges:
            h.update(len(a).to_bytes(2, "little") + a + len(b).to_bytes(2, "little") + b)
        return h.hexdigest()

    # ---------------------------------------------------------------- encoding and decoding
    def encode(
        self,
        text: str,
        *,
        allowed_special: Literal["all"] | AbstractSet[str] = frozenset(),
        disallowed_special: Literal["all"] | Collection[str] = "all",
    ) -> list[int]:
        """Token ids of text. The text "<|endoftext|>" becomes the special token only when allowed_special
        names it (or is "all"); by default it raises, as tiktoken does, so that user text cannot inject it."""
        try:
            return self._enc.encode(text, allowed_special=allowed_special, disallowed_special=disallowed_special)
        except ValueError as e:
            raise GPT2Error(str(e).splitlines()[0]) from None

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of text with "<|endoftext|>" treated as plain text."""
        return self._enc.encode_ordinary(text)

    def encode_batch(
        self,
        texts: Iterable[str],
        *,
        num_threads: int | None = None,
        allowed_special: Literal["all"] | AbstractSet[str] = frozenset(),
    ) -> list[list[int]]:
        """encode() of many texts, on all cores (tiktoken releases the GIL)."""
        return self._enc.encode_batch(
            list(texts), num_threads=num_threads or os.cpu_count() or 1, allowed_special=allowed_special
        )

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The exact bytes of a token sequence (which need not be valid UTF-8 on its own)."""
        try:
            return self._enc.decode_bytes(list(ids))
        except KeyError as e:
            raise GPT2Error(f"token id {e.args[0]} is outside the vocabulary (size {self.vocab_size})") from None

    def decode(self, ids: Iterable[int]) -> str:
        """Text of a token sequence; invalid UTF-8 becomes U+FFFD rather than an error."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer(name={self.name!r}, vocab_size={self.vocab_size})"


def download_gpt2_vocab() -> tuple[Path, Path]:
    """OpenAI's GPT-2 encoder.json and vocab.bpe, downloaded once into the cache and checked by sha256."""
    from gpt2.hub import cache_dir, download

    folder = cache_dir() / "gpt2-vocab"
    return tuple(download(url, folder / name, sha) for name, (url, sha) in GPT2_VOCAB_URLS.items())  # type: ignore[return-value]
