"""Learning a GPT-2 byte-level BPE vocabulary from any corpus (`train_bpe`, `gpt2 tokenizer train`).

GPT-2's rules: the 256 single bytes are the first tokens, each merge of two adjacent tokens adds one more, and
<|endoftext|> comes last; merges never cross the pieces of the pre-tokenization pattern (GPT2_PATTERN), and the
text "<|endoftext|>" in the corpus separates documents rather than being learned from.

Training is two passes, neither of which re-counts the corpus per merge:
  1. Word counting. Files are read in chunks of about a million characters, cut only where the pattern is
     sure to split anyway (so chunked counts equal whole-text counts), and the chunks are pre-tokenized and
     counted by worker processes on all cores. Only the table of distinct words and their counts is kept,
     so a corpus larger than memory works.
  2. Merging. Each distinct word is a string whose characters are token ids (chr(0..255) the bytes, chr(256 + k)
     the k-th merge), so applying a merge to a word is one str.replace. Pair counts, the words each pair occurs
     in, and a max-heap of pairs are kept up to date as merges change the words they touch: a merge costs time
     in proportion to the words it changes, not to the corpus. Only the first index of pairs touches every
     character of every distinct word; on larger inputs numpy builds it.

Ties are broken by a fixed rule so that training is deterministic: among pairs of equal count, the one whose
left token's bytes sort first wins, then the one whose right token's bytes sort first.
"""

from __future__ import annotations

import heapq
import multiprocessing
import os
import sys
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Iterator
from pathlib import Path

import regex

from gpt2.errors import GPT2Error
from gpt2.io import DocumentReader, input_files, progress_bar
from gpt2.tokenizer import EOT, GPT2_PATTERN, Tokenizer, clean_text, gc_paused

CHUNK_CHARS = 1 << 20  # characters per counting task: large enough that pickling costs little
MAX_CHUNK_CHARS = 64 << 20  # text with no safe cut this long (one giant token) is cut anyway
MAX_VOCAB = 0x110000  # token ids are characters in training, and chr() stops at U+10FFFF

_PATTERN = regex.compile(GPT2_PATTERN)
# Cut points where GPT2_PATTERN's pieces end whatever comes on either side: before the last whitespace character
# of a run that a non-space follows. The pattern ends a whitespace piece just before that character (leaving it to
# start the next piece, as a word's leading space or alone), and it does the same at the end of a chunk; no piece
# reaches back across it. `regex`'s \s is Unicode White_Space, as in tiktoken.
_SAFE_CUT = regex.compile(r"\s(?=\S)")


# ------------------------------------------------------------------------------------------------ reading
def cut_chunks(pieces: Iterable[str], size: int = CHUNK_CHARS) -> Iterator[str]:
    """The concatenation of `pieces`, re-cut into chunks of about `size` characters at safe cut points, so
    that pre-tokenizing the chunks one by one gives the same pieces as pre-tokenizing the whole text."""
    buf, resume = "", size  # where to resume looking for a cut: a long stretch without one is scanned once
    for piece in pieces:
        buf += piece
        while len(buf) > size:
            m = _SAFE_CUT.search(buf, resume)
            if m is None and len(buf) < MAX_CHUNK_CHARS:
                resume = len(buf) - 1  # the last character had nothing after it to look ahead at
                break  # read on: the cut point is further ahead
            cut = m.start() if m is not None else len(buf)
            yield buf[:cut]
            buf, resume = buf[cut:], size
    if buf:
        yield buf


class Corpus:
    """The text of in-memory strings and of files and folders, as chunks. Files are read by gpt2.io's
    DocumentReader, as `gpt2 prepare` reads them: text files (and .gz/.bz2/.zst ones) in pieces, so a file larger
    than memory is fine, and the `text` field of each record of JSON Lines files. (Counting words does not depend
    on the order of documents: the strings come first, then the files.)
    """

    def __init__(self, items: Iterable[str | os.PathLike], text_field: str = "text") -> None:
        items = list(items)
        self.texts = [item for item in items if isinstance(item, str)]
        self.reader = DocumentReader(input_files([i for i in items if not isinstance(i, str)]), text_field)

    def chunks(self, size: int = CHUNK_CHARS) -> Iterator[str]:
        """The corpus as chunks of about `size` characters; documents are never joined."""
        for text in self.texts:
            yield from cut_chunks((text,), size)
        for doc in self.reader.documents():
            yield from cut_chunks(doc, size)


# ------------------------------------------------------------------------------------------------ word counting
def count_words(texts: list[str]) -> dict[str, int]:
    """Pre-tokenized pieces of `texts` and their counts, each piece spelled as its UTF-8 bytes (one character
    per byte, via latin-1): the form the merge loop works on."""
    counts: Counter[str] = Counter()
    for text in texts:
        for part in clean_text(text).split(EOT):
            counts.update(_PATTERN.findall(part))
    return {word.encode("utf-8").decode("latin-1"): n for word, n in counts.items()}


def _tasks(chunks: Iterator[str], size: int) -> Iterator[list[str]]:
    """Chunks grouped into tasks of at least `size` characters (many small documents make one task)."""
    task: list[str] = []
    chars = 0
    for chunk in chunks:
        task.append(chunk)
        chars += len(chunk)
        if chars >= size:
            yield task
            task, chars = [], 0
    if task:
        yield task


def _pool_context() -> multiprocessing.context.BaseContext:
    # fork starts workers at once with nothing to import; macOS and Windows lack a safe fork.
    if sys.platform != "darwin" and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def count_corpus(corpus: Corpus, workers: int, progress: bool, size: int = CHUNK_CHARS) -> dict[str, int]:
    """All words of the corpus with their counts, counted by `workers` processes (in this one if 1)."""
    total: dict[str, int] = {}

    def add(part: dict[str, int], chars: int) -> None:
        get = total.get
        for word, n in part.items():
            total[word] = get(word, 0) + n
        bar.update(chars)

    tasks = _tasks(corpus.chunks(size), size)
    first = next(tasks, None)
    second = next(tasks, None) if first is not None else None
    if second is None or workers <= 1:
        with progress_bar(enabled=progress, desc="counting words", unit="char", unit_scale=True) as bar:
            for task in [t for t in (first, second) if t is not None]:
                add(count_words(task), sum(map(len, task)))
            for task in tasks:
                add(count_words(task), sum(map(len, task)))
        return total
    # The pool is made before the progress bar starts its monitor thread: fork with live threads is unsafe.
    with (
        _pool_context().Pool(workers) as pool,
        progress_bar(enabled=progress, desc="counting words", unit="char", unit_scale=True) as bar,
    ):
        pending: deque = deque()
        # At most 2 tasks per worker in flight, so reading never runs ahead of counting by more than that.
        for task in _chain(first, second, tasks):
            pending.append((pool.apply_async(count_words, (task,)), sum(map(len, task))))
            if len(pending) >= 2 * workers:
                result, chars = pending.popleft()
                add(result.get(), chars)
        while pending:
            result, chars = pending.popleft()
            add(result.get(), chars)
    return total


def _chain(first: list[str], second: list[str], rest: Iterator[list[str]]) -> Iterator[list[str]]:
    yield first
    yield second
    yield from rest


# ------------------------------------------------------------------------------------------------ merging
VECTOR_PAIRS_CHARS = 250_000  # from this many characters of distinct words, numpy finds the pairs (see below)


def initial_pairs(words: list[str], counts: list[int], vectorized: bool | None = None) -> tuple[dict, dict]:
    """Every pair of adjacent characters of `words` (spelled one character per byte, each at least two long):
    its count, each word's count times its occurrences there, and the indices of the words it occurs in.

    This pass touches every character of every distinct word: one Python step per character took a fifth of the
    merging time on 200 MB of text, so larger inputs do it with numpy (`vectorized`: None chooses by size, as
    importing numpy costs more than the loop saves on 2 MB). Word lists come back as lists or int32 arrays.
    """
    if vectorized is None:
        vectorized = sum(map(len, words)) >= VECTOR_PAIRS_CHARS
    pair_counts: dict[str, int] = defaultdict(int)
    where: dict = defaultdict(list)
    if not vectorized:
        for i, (word, n) in enumerate(zip(words, counts, strict=True)):
            for j in range(len(word) - 1):
                pair = word[j : j + 2]
                pair_counts[pair] += n
                if not (where_i := where[pair]) or where_i[-1] != i:
                    where_i.append(i)
        return pair_counts, where
    if not words:
        return pair_counts, where
    import numpy as np

    lengths = np.fromiter(map(len, words), np.int64, len(words))
    chars = np.frombuffer("".join(words).encode("latin-1"), np.uint8)
    codes = chars[:-1].astype(np.int32) << 8 | chars[1:]  # the pair starting at each character ...
    in_word = np.ones(len(codes), bool)
    in_word[np.cumsum(lengths)[:-1] - 1] = False  # ... but at a word's last one, which starts no pair
    word_ids = np.repeat(np.arange(len(words), dtype=np.int32), lengths)[:-1][in_word]
    codes = codes[in_word]
    order = np.argsort(codes, kind="stable")  # stable: each pair's words stay in order, repeats adjacent
    codes, word_ids = codes[order], word_ids[order]
    del order, in_word
    pair_starts = np.flatnonzero(np.diff(codes, prepend=-1))
    totals = np.add.reduceat(np.asarray(counts, np.int64)[word_ids], pair_starts)
    keys = [chr(c >> 8) + chr(c & 255) for c in codes[pair_starts].tolist()]
    pair_counts.update(zip(keys, totals.tolist(), strict=True))
    first = np.ones(len(codes), bool)  # one entry per word a pair occurs in, however often it occurs there
    first[1:] = (codes[1:] != codes[:-1]) | (word_ids[1:] != word_ids[:-1])
    codes, word_ids = codes[first], word_ids[first]
    where.update(zip(keys, np.split(word_ids, np.flatnonzero(np.diff(codes)) + 1), strict=True))
    return pair_counts, where


def learn_merges(word_counts: dict[str, int], n_merges: int, progress: bool = False) -> list[tuple[bytes, bytes]]:
    """The first `n_merges` merges BPE learns from words (spelled one character per byte) and their counts.

    Fewer are returned when every word has become a single token first.
    """
    words = [w for w in word_counts if len(w) > 1]  # one-byte words hold no pairs and never change
    counts = [word_counts[w] for w in words]
    # pair (two characters) -> occurrences in the corpus; pair -> the words it occurs in (or did: each is checked
    # before use, so an index listed twice or gone stale costs a look, not a wrong count).
    pair_counts, where = initial_pairs(words, counts)
    token_bytes = [bytes([b]) for b in range(256)]  # token id -> its bytes
    # Max-heap on count, then the tie rule. Entries go stale as counts change; a popped entry whose count is
    # out of date is pushed back with the current one. That is sound because a pair's count never grows: the
    # pairs a merge creates all hold the new token, so they are new pairs, pushed once when created.
    heap = [(-n, token_bytes[ord(p[0])], token_bytes[ord(p[1])], p) for p, n in pair_counts.items()]
    heapq.heapify(heap)
    heappop, heappush = heapq.heappop, heapq.heappush
    merges: list[tuple[bytes, bytes]] = []
    with progress_bar(enabled=progress, total=n_merges, desc="merging", unit="merge") as bar:
        while len(merges) < n_merges and heap:
            neg, left, right, pair = heappop(heap)
            n = pair_counts.get(pair, 0)
            if n != -neg:
                if n > 0:
                    heappush(heap, (-n, left, right, pair))
                continue
            new = chr(256 + len(merges))
            merges.append((left, right))
            token_bytes.append(left + right)
            created = set()
            ids = where.pop(pair)
            for i in ids if isinstance(ids, list) else ids.tolist():
                word = words[i]
                k = word.find(pair)
                if k < 0:
                    continue  # the word lost this pair to an earlier merge, or was listed twice
                n = counts[i]
                if word.find(pair, k + 2) < 0:  # the common case, one occurrence: the loops below, unrolled
                    if k:
                        pair_counts[word[k - 1 : k + 1]] -= n
                        q = word[k - 1] + new
                        pair_counts[q] += n
                        where[q].append(i)
                        created.add(q)
                    if k + 2 < len(word):
                        pair_counts[word[k + 1 : k + 3]] -= n
                        q = new + word[k + 2]
                        pair_counts[q] += n
                        where[q].append(i)
                        created.add(q)
                    words[i] = word[:k] + new + word[k + 2 :]
                    continue
                # Only the pairs around each occurrence change: (x, a) and (b, y) lose it (the pair itself goes
                # entirely, below). `done` keeps "abab" from taking (b, a) off twice.
                last, done = len(word) - 1, -1
                while k >= 0:
                    if k > 0 and k - 1 != done:
                        pair_counts[word[k - 1 : k + 1]] -= n
                    if k + 1 < last:
                        pair_counts[word[k + 1 : k + 3]] -= n
                        done = k + 1
                    k = word.find(pair, k + 2)
                merged = word.replace(pair, new)  # left to right, non-overlapping: BPE's own order
                words[i] = merged
                # ... and (x, new), (new, y) gain it; (new, new) once, as the right pair of the first `new`.
                k = merged.find(new)
                end = len(merged) - 1
                while k >= 0:
                    if k > 0 and merged[k - 1] != new:
                        q = merged[k - 1 : k + 1]
                        pair_counts[q] += n
                        where[q].append(i)
                        created.add(q)
                    if k < end:
                        q = merged[k : k + 2]
                        pair_counts[q] += n
                        where[q].append(i)
                        created.add(q)
                    k = merged.find(new, k + 1)
            del pair_counts[pair]
            for q in created:
                heappush(heap, (-pair_counts[q], token_bytes[ord(q[0])], token_bytes[ord(q[1])], q))
            bar.update(1)
    return merges


# ------------------------------------------------------------------------------------------------ the whole job
def _too_big(vocab_size: int, supported: str) -> GPT2Error:
    return GPT2Error(
        f"vocab size {vocab_size:,} is more than this corpus supports ({supported} tokens, by when every word is "
        f"a single token); use a smaller vocab size or more text"
    )


def train_bpe(
    texts_or_paths: str | os.PathLike | Iterable[str | os.PathLike],
    vocab_size: int,
    *,
    workers: int | None = None,
    progress: bool = False,
    name: str = "custom",
    text_field: str = "text",
) -> Tokenizer:
    """Learn a GPT-2 byte-level BPE of `vocab_size` tokens (256 bytes + merges + <|endoftext|>).

    `texts_or_paths`: strings are text to learn from; Path objects (os.PathLike) are files or folders to read.
    `workers`: processes counting words (default: all cores). `text_field`: the field of JSON Lines records that
    holds the text, as in `gpt2 prepare`. Nothing is written: save the result with
    `tokenizer.save_pretrained(folder, names="openai")`.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not 257 <= vocab_size <= MAX_VOCAB:
        raise GPT2Error(
            f"vocab size must be an integer from 257 (256 byte tokens + <|endoftext|>) to {MAX_VOCAB:,}, "
            f"got {vocab_size!r}"
        )
    items = [texts_or_paths] if isinstance(texts_or_paths, str | os.PathLike) else list(texts_or_paths)
    for item in items:
        if not isinstance(item, str | os.PathLike):
            raise GPT2Error(f"train_bpe takes texts (str) and paths (os.PathLike), got a {type(item).__name__}")
        if not isinstance(item, str) and not Path(item).exists():
            raise GPT2Error(f"{item}: no such file or folder")
    corpus = Corpus(items, text_field)
    with gc_paused():
        word_counts = count_corpus(corpus, workers or os.cpu_count() or 1, progress)
    corpus.reader.warn_invalid()
    if not word_counts:
        raise GPT2Error("the corpus holds no text: nothing to learn a vocabulary from")
    n_merges = vocab_size - 257
    # Each merge shortens some word by at least one token, so this bounds the merges the corpus can give.
    most = sum(len(w) - 1 for w in word_counts)
    if most < n_merges:
        raise _too_big(vocab_size, f"at most {257 + most:,}")
    with gc_paused():
        merges = learn_merges(word_counts, n_merges, progress)
    if len(merges) < n_merges:
        raise _too_big(vocab_size, f"{257 + len(merges):,}")
    return Tokenizer(merges, name=name)
