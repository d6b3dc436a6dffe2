"""GPT-2's byte-level BPE: load a vocabulary, encode text to ids and decode ids back to bytes and text.

A vocabulary is two files: the token -> id map (`encoder.json`, named `vocab.json` by Hugging Face) and the
ordered merge list (`vocab.bpe`, named `merges.txt`). Tokens are byte strings written through GPT-2's
bytes_to_unicode() table so that every byte is a printable character; ids are merge ranks: the 256 byte
tokens first, then one token per merge in file order, then <|endoftext|>.

Two encoders share one vocabulary:
  * the fast path (`encode`, `encode_batch`) runs on tiktoken's engine with our ranks;
  * the reference path (`encode_reference`, class ReferenceBPE) is GPT-2's own algorithm written out in
    Python: slow, obviously correct, and the oracle the tests hold the fast path to.

Strings that are not valid Unicode (lone surrogates, which Python allows in `str` but UTF-8 cannot encode) are
handled as tiktoken handles them: the text goes through UTF-16 with surrogatepass, so a surrogate pair written
as two code points becomes the character it stands for and a lone surrogate becomes U+FFFD. decode(encode(s))
== s therefore holds for every `s` that UTF-8 can encode, and for the rest it returns that repaired text.

`gpt2 tokenizer train|encode|decode` (gpt2.commands.tokenizer) is the command line of this module and bpe_train.
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Collection, Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from functools import cache, cached_property
from pathlib import Path
from typing import Literal

from gpt2.errors import GPT2Error
from gpt2.io import atomic_write

EOT = "<|endoftext|>"
# GPT-2's pre-tokenization: contractions, letter runs, digit runs, other symbols, each with at most one
# leading space, then whitespace. BPE merges never cross these pieces, so merges never mix categories.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# The same pattern as GPT-2's encoder.py spells it. The reference path uses this spelling, so the tests that hold
# the fast path to the reference also check that the two spellings split text alike.
ENCODER_PY_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
OPENAI_FILES = ("encoder.json", "vocab.bpe")
HF_FILES = ("vocab.json", "merges.txt")
MERGES_HEADER = "#version: 0.2\n"  # tiktoken and transformers both skip the first line of the merges file
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

AllowedSpecial = Literal["all"] | AbstractSet[str]
DisallowedSpecial = Literal["all"] | Collection[str]


# ------------------------------------------------------------------------------------------------ byte alphabet
@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table: printable Latin-1 bytes map to themselves, the other 68
    bytes to the characters 256, 257, ... in byte order. Its key order is the order of the byte tokens' ids."""
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
def _to_latin1_table() -> dict[int, int]:
    # str.translate tables: turning a token string into bytes is then translate + encode("latin-1"), both in C,
    # which is what makes loading GPT-2's 50,257 tokens fast.
    return {ord(c): b for b, c in bytes_to_unicode().items()}


@cache
def _from_latin1_table() -> dict[int, str]:
    return dict(bytes_to_unicode())


@cache
def _alphabet() -> frozenset[str]:
    return frozenset(bytes_to_unicode().values())


def token_to_bytes(token: str) -> bytes:
    """The bytes a vocabulary-file token stands for (the inverse of bytes_to_token)."""
    if not _alphabet().issuperset(token):
        bad = next(c for c in token if c not in _alphabet())
        raise GPT2Error(f"token {token!r} holds {bad!r}, which is not in GPT-2's byte alphabet")
    return token.translate(_to_latin1_table()).encode("latin-1")


def bytes_to_token(b: bytes) -> str:
    """The printable vocabulary-file spelling of a byte string."""
    return b.decode("latin-1").translate(_from_latin1_table())


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: while many small acyclic objects are made (a vocabulary's tokens, a
    corpus's words), it would otherwise scan the growing heap again and again; pausing cuts load time by a third."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _is_merge_line(line: str) -> bool:
    a, space, b = line.partition(" ")
    return bool(a and space and b) and " " not in b


def clean_text(text: str) -> str:
    """`text` made encodable as UTF-8 exactly as tiktoken does it: through UTF-16 with surrogatepass, so a
    surrogate pair given as two code points becomes its character and a lone surrogate becomes U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _special_sets(
    allowed_special: AllowedSpecial, disallowed_special: DisallowedSpecial
) -> tuple[frozenset[str], frozenset[str]]:
    """tiktoken's rule: "all" allowed means every special token; "all" disallowed means every one not allowed."""
    allowed = frozenset({EOT}) if allowed_special == "all" else frozenset(allowed_special)
    disallowed = frozenset({EOT}) - allowed if disallowed_special == "all" else frozenset(disallowed_special)
    return allowed, disallowed


def _disallowed_error(token: str) -> GPT2Error:
    return GPT2Error(
        f"the text contains the special token {token!r}; pass allowed_special={{{token!r}}} (or 'all') to encode "
        f"it as the special token, or disallowed_special=() to encode it as plain text"
    )


# ------------------------------------------------------------------------------------------------ reference path
class ReferenceBPE:
    """GPT-2's encoder.py written out in Python: the slow, obviously correct oracle for the fast path.

    The text is split by GPT-2's pattern with the `regex` module; each piece's UTF-8 bytes start as single-byte
    tokens, and the adjacent pair with the lowest merge rank is merged at every place in the piece, left to
    right, until no adjacent pair is a merge. Results are cached per piece, as GPT-2's encoder caches them.
    """

    def __init__(self, merges: Sequence[tuple[bytes, bytes]], ranks: dict[bytes, int], eot_id: int) -> None:
        import regex

        self.merge_rank = {pair: i for i, pair in enumerate(merges)}
        self.ranks = ranks
        self.eot_id = eot_id
        self.pattern = regex.compile(ENCODER_PY_PATTERN)
        self.cache: dict[str, list[int]] = {}

    def bpe(self, piece: bytes) -> list[bytes]:
        """The tokens (as bytes) of one pre-tokenized piece."""
        word = [bytes([b]) for b in piece]
        never = len(self.merge_rank)
        while len(word) > 1:
            first, second = min(zip(word, word[1:], strict=False), key=lambda pair: self.merge_rank.get(pair, never))
            if (first, second) not in self.merge_rank:
                break
            merged: list[bytes] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return word

    def encode_ordinary(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in self.pattern.findall(clean_text(text)):
            tokens = self.cache.get(piece)
            if tokens is None:
                tokens = self.cache[piece] = [self.ranks[t] for t in self.bpe(piece.encode("utf-8"))]
            ids.extend(tokens)
        return ids

    def encode(
        self, text: str, *, allowed_special: AllowedSpecial = frozenset(), disallowed_special: DisallowedSpecial = "all"
    ) -> list[int]:
        allowed, disallowed = _special_sets(allowed_special, disallowed_special)
        if EOT in disallowed and EOT in text:
            raise _disallowed_error(EOT)
        if EOT not in allowed:
            return self.encode_ordinary(text)
        ids: list[int] = []
        for n, part in enumerate(text.split(EOT)):
            if n:
                ids.append(self.eot_id)
            ids += self.encode_ordinary(part)
        return ids


# ------------------------------------------------------------------------------------------------ the tokenizer
class Tokenizer:
    """A GPT-2 byte-level BPE vocabulary: `merges` in priority order, and <|endoftext|> after them."""

    def __init__(self, merges: Sequence[tuple[bytes, bytes]], name: str = "custom") -> None:
        ranks: dict[bytes, int] = {bytes([b]): i for i, b in enumerate(bytes_to_unicode())}
        for a, b in merges:
            if a not in ranks or b not in ranks:
                raise GPT2Error(f"merge {a!r} + {b!r} uses a token that no earlier merge made")
            if a + b in ranks:
                raise GPT2Error(f"merge {a!r} + {b!r} makes a token that already exists")
            ranks[a + b] = len(ranks)
        self._setup(list(merges), ranks, name)

    def _setup(self, merges: list[tuple[bytes, bytes]], ranks: dict[bytes, int], name: str) -> None:
        import tiktoken

        self.name = name
        self.merges = merges
        self.ranks = ranks  # token bytes -> id, the 256 single bytes in bytes_to_unicode() order first
        self.eot_id = len(ranks)
        self.vocab_size = len(ranks) + 1
        self._enc = tiktoken.Encoding(
            name=f"gpt2-bpe-{name}", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: self.eot_id}
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
        with gc_paused():
            return cls._from_files(Path(vocab_file), Path(merges_file))

    @classmethod
    def _from_files(cls, vocab_path: Path, merges_path: Path) -> Tokenizer:
        try:
            lines = merges_path.read_text(encoding="utf-8").splitlines()
            vocab = json.loads(vocab_path.read_bytes())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise GPT2Error(f"cannot read tokenizer files {vocab_path}, {merges_path}: {e}") from None
        if not isinstance(vocab, dict) or not all(isinstance(i, int) for i in vocab.values()):
            raise GPT2Error(f"{vocab_path}: expected a JSON object mapping each token to its integer id")
        allowed = _alphabet().union(EOT)
        if not allowed.issuperset("".join(vocab)):
            token = next(t for t in vocab if not allowed.issuperset(t))
            raise GPT2Error(f"{vocab_path}: token {token!r} has characters outside GPT-2's byte alphabet")
        first = 1 if lines and lines[0].startswith("#version") else 0
        pairs = [line.split(" ") for line in lines[first:] if line]
        if not all(len(pair) == 2 and pair[0] and pair[1] for pair in pairs):
            n, line = next((n, x) for n, x in enumerate(lines[first:], first + 1) if x and not _is_merge_line(x))
            raise GPT2Error(f"{merges_path}:{n}: expected two tokens separated by one space, got {line!r}")

        # Checked on the token strings, which is cheap: GPT-2's ids are the 256 bytes in bytes_to_unicode()
        # order, then merge k makes id 256 + k from two earlier tokens, then <|endoftext|>. With these and the
        # token count, the vocabulary file holds exactly the tokens the merges make.
        bad = next((c for c, i in zip(bytes_to_unicode().values(), range(256), strict=True) if vocab.get(c) != i), None)
        if bad is not None:
            raise GPT2Error(
                f"{vocab_path}: byte token {bad!r} has id {vocab.get(bad)}, GPT-2's byte order gives it another"
            )
        for rank, (a, b) in enumerate(pairs, start=256):
            if not vocab.get(a, rank) < rank > vocab.get(b, rank) or vocab.get(a + b) != rank:
                raise GPT2Error(
                    f"{vocab_path} does not match {merges_path}: merge {rank - 255} ({a} {b}) should make "
                    f"{a + b!r} with id {rank} from two earlier tokens, but the ids are {vocab.get(a)}, {vocab.get(b)} "
                    f"-> {vocab.get(a + b)}"
                )
        if vocab.get(EOT) != len(pairs) + 256 or len(vocab) != len(pairs) + 257:
            raise GPT2Error(
                f"{vocab_path}: expected {len(pairs) + 257} tokens with {EOT} last (id {len(pairs) + 256}), found "
                f"{len(vocab)} tokens and {EOT} = {vocab.get(EOT)}"
            )
        # One translate over all tokens at once; U+2028 separates them as no token can hold it.
        keys = [t for t in vocab if t != EOT]
        spelled = "\u2028".join(keys).translate(_to_latin1_table()).split("\u2028")
        as_bytes = dict(zip(keys, (t.encode("latin-1") for t in spelled), strict=True))
        ranks = {as_bytes[t]: vocab[t] for t in keys}
        merges = [(as_bytes[a], as_bytes[b]) for a, b in pairs]
        name = "gpt2" if len(merges) == 50000 and vocab.get("Ġthe") == 262 else merges_path.parent.name
        tok = cls.__new__(cls)
        tok._setup(merges, dict(sorted(ranks.items(), key=lambda kv: kv[1])), name)
        return tok

    def save_pretrained(self, folder: str | os.PathLike, names: Literal["hf", "openai"] = "hf") -> None:
        """Write the vocabulary as vocab.json + merges.txt (Hugging Face's names, for model folders) or
        encoder.json + vocab.bpe (OpenAI's); both files are rendered first, then each written atomically."""
        if names not in ("hf", "openai"):
            raise GPT2Error(f"names must be 'hf' or 'openai', got {names!r}")
        vocab_name, merges_name = HF_FILES if names == "hf" else OPENAI_FILES
        encoder = {bytes_to_token(b): i for b, i in self.ranks.items()} | {EOT: self.eot_id}
        merges = "".join(f"{bytes_to_token(a)} {bytes_to_token(b)}\n" for a, b in self.merges)
        vocab_data = json.dumps(encoder, ensure_ascii=False).encode("utf-8")
        merges_data = (MERGES_HEADER + merges).encode("utf-8")
        atomic_write(Path(folder) / vocab_name, vocab_data)
        atomic_write(Path(folder) / merges_name, merges_data)

    @cached_property
    def fingerprint(self) -> str:
        """sha256 over the merge list: two tokenizers with the same fingerprint encode identically."""
        import hashlib

        h = hashlib.sha256()
        for a, b in self.merges:
            h.update(len(a).to_bytes(2, "little") + a + len(b).to_bytes(2, "little") + b)
        return h.hexdigest()

    # ---------------------------------------------------------------- encoding and decoding
    def encode(
        self, text: str, *, allowed_special: AllowedSpecial = frozenset(), disallowed_special: DisallowedSpecial = "all"
    ) -> list[int]:
        """Token ids of text. The text "<|endoftext|>" becomes the special token only when allowed_special
        names it (or is "all"); by default it raises, as tiktoken does, so that user text cannot inject it."""
        try:
            return self._enc.encode(text, allowed_special=allowed_special, disallowed_special=disallowed_special)
        except ValueError:
            raise _disallowed_error(EOT) from None

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of text with "<|endoftext|>" treated as plain text."""
        return self._enc.encode_ordinary(text)

    def encode_batch(
        self,
        texts: Iterable[str],
        *,
        num_threads: int | None = None,
        allowed_special: AllowedSpecial = frozenset(),
        disallowed_special: DisallowedSpecial = "all",
    ) -> list[list[int]]:
        """encode() of many texts, on all cores: tiktoken releases the GIL while it encodes."""
        try:
            return self._enc.encode_batch(
                list(texts),
                num_threads=num_threads or os.cpu_count() or 1,
                allowed_special=allowed_special,
                disallowed_special=disallowed_special,
            )
        except ValueError:
            raise _disallowed_error(EOT) from None

    def encode_reference(
        self, text: str, *, allowed_special: AllowedSpecial = frozenset(), disallowed_special: DisallowedSpecial = "all"
    ) -> list[int]:
        """encode() by GPT-2's algorithm written out in Python (ReferenceBPE): same ids, far slower."""
        return self.reference.encode(text, allowed_special=allowed_special, disallowed_special=disallowed_special)

    @cached_property
    def reference(self) -> ReferenceBPE:
        return ReferenceBPE(self.merges, self.ranks, self.eot_id)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The exact bytes of a token sequence (which need not be valid UTF-8 on its own)."""
        ids = list(ids)
        try:
            return self._enc.decode_bytes(ids)
        except (KeyError, OverflowError, TypeError):
            bad = next((i for i in ids if not isinstance(i, int) or not 0 <= i < self.vocab_size), None)
            raise GPT2Error(f"token id {bad!r} is outside the vocabulary (ids 0..{self.vocab_size - 1})") from None

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
    vocab, merges = (download(url, folder / name, sha) for name, (url, sha) in GPT2_VOCAB_URLS.items())
    return vocab, merges
