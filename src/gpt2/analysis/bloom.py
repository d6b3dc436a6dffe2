"""The paper's 8-gram Bloom filters (Radford et al. 2019, Section 4): normalisation, hashing, building a filter
of a training corpus, the file format, and lookups; gpt2.analysis.overlap measures test sets against a filter.

Normalisation (Section 4: "strings were normalized to contain only lower-cased alphanumeric words with a single
space as a delimiter"): text is lower-cased, every character that is neither a letter nor a digit becomes a word
boundary, and the words are split on whitespace ("Don't stop!" -> don t stop), so raw and tokenised copies of a
text agree ("don't" and WikiText's "don 't", "well-known" and "well @-@ known"). 8-grams never cross documents.

Hashing. rbloom is given 64-bit integers, not strings: each word is hashed once with keyed BLAKE2b (64 bits; cached
per process) and an 8-gram's hash is a splitmix64 chain over its eight word hashes, computed with numpy for all the
8-grams of a text at once (benchmarks/bench_overlap.py times it). Two distinct 8-grams share a hash with probability
2^-64, so for n <= 1.8e10 8-grams collisions add under 1e-9 to the false-positive rate, below the paper's 1e-8. The
key and constants are part of the file format, so a filter saved by one process answers in another.

Building streams: a first pass counts the 8-grams (sum over documents of words - 7) to size the filter, a second
inserts them; worker processes each fill a filter of the same size, OR-ed together at the end (exact for equal
parameters, so the file does not depend on the number of workers). A document larger than one piece is cut at
whitespace; the 8-grams across a cut are added from the seven words either side.

File: MAGIC, the header's length (8 bytes, little-endian), the header (JSON: parameters, corpus, measured
false-positive rate), rbloom's bytes, and the SHA-256 of everything before it.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import queue
import re
import struct
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpt2.errors import GPT2Error
from gpt2.io import DocumentReader, atomic_write, input_files

if TYPE_CHECKING:
    import numpy as np
    from rbloom import Bloom

N = 8  # the paper's n-gram length
MAGIC = b"gpt2 8-gram bloom\n"
FORMAT = 1
HASH_NAME = "gpt2-8gram-v1: keyed BLAKE2b-64 per word, splitmix64 chain over 8 words"
NORMALIZATION = "lower-cased; every character but letters and digits a word boundary (Radford et al. 2019, Section 4)"
_WORD_KEY = b"gpt2-overlap-8gram-v1"
_GOLDEN = 0x9E3779B97F4A7C15
_FP_SEED = 20190214  # the paper's release date: a fixed seed makes the measured rate, and so the file, reproducible
_PUNCT = re.compile(r"[^\w\s]|_")
_PIECE_CHARS = 1 << 20  # text handed to a worker at a time
_CACHE_WORDS = 1 << 21  # distinct word hashes kept per process before the cache is cleared


# ------------------------------------------------------------------------------------------------ normalising
def normalize(text: str) -> list[str]:
    """The paper's normalised words: lower-cased runs of letters and digits."""
    return _PUNCT.sub(" ", text.lower()).split()


def ngrams(words: Sequence[str], n: int = N) -> list[str]:
    """The n-grams of `words` as strings, words joined by one space (what --exact keeps in a Python set)."""
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]


def _word_hash(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8, key=_WORD_KEY).digest(), "little")


class Hasher:
    """8-gram hashes of word lists, with a per-process cache of word hashes."""

    def __init__(self) -> None:
        self.cache: dict[str, int] = {}

    def word_ids(self, words: Sequence[str]) -> np.ndarray:
        import numpy as np

        cache = self.cache
        if len(cache) > _CACHE_WORDS:
            cache.clear()
        for w in set(words).difference(cache):
            cache[w] = _word_hash(w)
        return np.fromiter(map(cache.__getitem__, words), dtype=np.uint64, count=len(words))

    def hashes(self, words: Sequence[str]) -> np.ndarray:
        """The hash of each 8-gram of `words` as int64 (rbloom takes signed 128-bit ints), in order."""
        return chain_hashes(self.word_ids(words))


def _mix(z: np.ndarray) -> np.ndarray:
    import numpy as np

    # splitmix64's finaliser: a bijection on 64 bits with full avalanche
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _chain(columns: Sequence[np.ndarray]) -> np.ndarray:
    """h <- mix(h ^ (word_j + (j+1) * golden)) over the positions j, column j holding each 8-gram's j-th word hash:
    order matters and every word changes every bit."""
    import numpy as np

    h = np.zeros(len(columns[0]), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j, column in enumerate(columns):
            h = _mix(h ^ (column + np.uint64(((j + 1) * _GOLDEN) % (1 << 64))))
    return h.view(np.int64)


def chain_hashes(ids: np.ndarray, n: int = N) -> np.ndarray:
    """The hash of each n-gram of a text from its word hashes, as int64, in order."""
    import numpy as np

    count = len(ids) - n + 1
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    return _chain([ids[j : j + count] for j in range(n)])


def joined_hashes(hasher: Hasher, word_lists: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
    """The 8-gram hashes of several word lists at once (numpy's per-call cost dominates on short texts): the
    hashes over their concatenation, and the offset of each list's first 8-gram in them. List i's 8-grams are
    hashes[offsets[i] : offsets[i] + len(list i) - 7]; the 8-grams across two lists are computed but unused."""
    import numpy as np

    lengths = np.fromiter(map(len, word_lists), dtype=np.int64, count=len(word_lists))
    offsets = np.zeros(len(word_lists), dtype=np.int64)
    np.cumsum(lengths[:-1], out=offsets[1:])
    return hasher.hashes([w for words in word_lists for w in words]), offsets


def _valid(hashes: np.ndarray, offsets: np.ndarray, word_lists: Sequence[Sequence[str]]) -> np.ndarray:
    """The hashes of 8-grams inside one list (see joined_hashes)."""
    import numpy as np

    keep = np.zeros(len(hashes), dtype=bool)
    for start, words in zip(offsets.tolist(), word_lists, strict=True):
        if len(words) >= N:
            keep[start : start + len(words) - N + 1] = True
    return hashes[keep]


def _new_bloom(expected: int, fp_rate: float) -> Bloom:
    from rbloom import Bloom

    # the items are already stable 64-bit hashes (see the module's docstring); `int` returns them as they are
    return Bloom(max(1, expected), fp_rate, int)


# ------------------------------------------------------------------------------------------------ the workers
# A task is a list of (seq, text, joined): seq numbers the pieces in corpus order; joined marks a piece of a
# document cut into several, whose words at the ends are returned so the 8-grams across the cuts can be added.
Task = list[tuple[int, str, bool]]


def _run_task(task: Task, mode: str, bloom: Bloom | None, hasher: Hasher) -> tuple[int, list[tuple]]:
    """Count (mode "count") or insert (mode "insert") the 8-grams inside each piece. Returns the 8-grams counted
    or inserted, and for joined pieces (seq, words, first 7 words, last 7 words)."""
    total, joins = 0, []
    word_lists = [normalize(text) for _, text, _ in task]
    for (seq, _, joined), words in zip(task, word_lists, strict=True):
        total += max(0, len(words) - N + 1)
        if joined:
            joins.append((seq, len(words), words[: N - 1], words[-(N - 1) :] if len(words) >= N - 1 else words))
    if mode == "insert" and total:
        hashes, offsets = joined_hashes(hasher, word_lists)
        bloom.update(_valid(hashes, offsets, word_lists).tolist())  # type: ignore[union-attr]
    return total, joins


def _run_tasks(mode: str, expected: int, fp_rate: float, tasks: Iterable[Task], save_to: str, put: Callable) -> None:
    """Run `tasks` in this process, handing each result to `put`; in mode "insert", save the filter to `save_to`."""
    bloom = _new_bloom(expected, fp_rate) if mode == "insert" else None
    hasher = Hasher()
    for task in tasks:
        put(_run_task(task, mode, bloom, hasher))
    if bloom is not None:
        bloom.save(save_to)


def _worker(mode: str, expected: int, fp_rate: float, tasks: Any, results: Any, save_to: str) -> None:
    try:
        _run_tasks(mode, expected, fp_rate, iter(tasks.get, None), save_to, lambda r: results.put(("ok", r)))
        results.put(("done", None))
    except BaseException as e:  # noqa: BLE001 - the parent reports it; a worker must not die silently
        results.put(("error", f"{type(e).__name__}: {e}"))


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


@dataclass
class _Pass:
    """One pass over the corpus: the 8-grams inside pieces, and what the cuts between pieces need."""

    ngrams: int = 0
    joins: dict[int, tuple] = field(default_factory=dict)
    joined_docs: list[tuple[int, int]] = field(default_factory=list)  # (seq, document) of joined pieces, in order
    documents: int = 0
    filters: list[str] = field(default_factory=list)


def _whitespace_near(text: str, at: int) -> int:
    """The index of the last whitespace character before `at`, else of the first after it, else -1."""
    found = max(text.rfind(c, 0, at) for c in " \n\t\r")
    if found < 0:
        after = [i for i in (text.find(c, at) for c in " \n\t\r") if i >= 0]
        found = min(after, default=-1)
    return found


def _tasks(reader: DocumentReader, p: _Pass) -> Iterator[Task]:
    """The corpus in tasks of about _PIECE_CHARS characters. A document longer than that is cut at whitespace into
    pieces marked joined; the newest piece waits until the next shows whether the document goes on."""
    task: Task = []
    size = 0
    seq = 0
    ready: list[tuple[str, bool]] = []

    def flush(doc_index: int) -> Iterator[Task]:
        nonlocal task, size, seq
        for text, joined in ready:
            task.append((seq, text, joined))
            if joined:
                p.joined_docs.append((seq, doc_index))
            seq += 1
            size += len(text)
            if size >= _PIECE_CHARS:
                yield task
                task, size = [], 0
        ready.clear()

    for doc in reader.documents():
        doc_index = p.documents
        p.documents += 1
        pending: str | None = None
        was_cut = False
        carry = ""
        for piece in doc:
            carry += piece
            while len(carry) >= _PIECE_CHARS:
                at = _whitespace_near(carry, _PIECE_CHARS)
                if at < 0:  # no whitespace yet: one long word grows until some arrives
                    break
                if pending is not None:
                    ready.append((pending, True))
                    was_cut = True
                pending, carry = carry[: at + 1], carry[at + 1 :]
            yield from flush(doc_index)
        tail = [t for t in (pending, carry) if t]
        ready.extend((t, was_cut or len(tail) > 1) for t in tail)
        yield from flush(doc_index)
    if task:
        yield task


def _run_pass(
    reader: DocumentReader,
    mode: str,
    workers: int,
    expected: int = 0,
    fp_rate: float = 1e-8,
    tmp: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> _Pass:
    """Run one pass over the corpus on `workers` processes (in this one when 1)."""
    p = _Pass()
    paths = [os.path.join(tmp or "", f"filter-{i}") for i in range(workers)]
    if workers <= 1:
        _run_tasks(mode, expected, fp_rate, _tasks(reader, p), paths[0], lambda r: _collect(p, r, progress))
        p.filters = paths if mode == "insert" else []
        return p
    # spawn: a forked child would inherit whatever threads and state the parent holds (a test runner, say)
    ctx = multiprocessing.get_context("spawn")
    tasks: Any = ctx.Queue(maxsize=2 * workers)  # bounded: memory holds a few pieces however large the corpus
    results: Any = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(mode, expected, fp_rate, tasks, results, path), daemon=True) for path in paths
    ]
    for proc in procs:
        proc.start()
    done = 0

    def check_alive() -> None:
        if any(proc.exitcode not in (None, 0) for proc in procs):
            raise GPT2Error("an 8-gram worker process was killed before it finished (out of memory?)")

    def drain(block: bool) -> None:
        nonlocal done
        while done < workers:
            try:
                kind, value = results.get(timeout=0.2) if block else results.get_nowait()
            except queue.Empty:
                check_alive()
                if block:
                    continue
                return
            if kind == "error":
                raise GPT2Error(f"an 8-gram worker process failed: {value}")
            if kind == "done":
                done += 1
            else:
                _collect(p, value, progress)

    try:
        for task in _tasks(reader, p):
            while True:
                try:
                    tasks.put(task, timeout=0.2)
                    break
                except queue.Full:
                    drain(block=False)
            drain(block=False)
        for _ in procs:
            tasks.put(None)
        drain(block=True)
        for proc in procs:
            proc.join()
        if mode == "insert":
            p.filters = paths
        return p
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join()


def _collect(p: _Pass, result: tuple[int, list[tuple]], progress: Callable[[int], None] | None) -> None:
    count, joins = result
    p.ngrams += count
    for seq, *rest in joins:
        p.joins[seq] = tuple(rest)
    if progress is not None:
        progress(count)


def _joined_documents(p: _Pass) -> Iterator[list[tuple]]:
    """The (words, head, tail) of each cut document's pieces, in order."""
    current: list[tuple] = []
    last_doc = -1
    for seq, doc in p.joined_docs:
        if doc != last_doc and current:
            yield current
            current = []
        last_doc = doc
        current.append(p.joins[seq])
    if current:
        yield current


def _across_cuts(pieces: list[tuple]) -> Iterator[tuple[int, list[str]]]:
    """For one cut document: (c, words) where the 8-grams of `words` that start in its first c words are those
    across a cut: the last (at most 7) words before the cut, then the first (at most 7) after it."""
    carry: list[str] = []
    for count, head, tail in pieces:
        if carry:
            yield len(carry), carry + head
        carry = (carry + head)[-(N - 1) :] if count < N - 1 else tail


# ------------------------------------------------------------------------------------------------ the file
@dataclass
class OverlapFilter:
    """A loaded filter: the rbloom filter and its header."""

    bloom: Bloom
    header: dict[str, Any]
    hasher: Hasher = field(default_factory=Hasher)

    def contains(self, words: Sequence[str]) -> np.ndarray:
        """For each 8-gram of `words`, in order: is it in the filter?"""

        return self.contains_hashes(self.hasher.hashes(words))

    def contains_hashes(self, hashes: np.ndarray) -> np.ndarray:
        import numpy as np

        return np.fromiter(map(self.bloom.__contains__, hashes.tolist()), dtype=bool, count=len(hashes))


def _encode(header: dict[str, Any], payload: bytes) -> bytes:
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    body = MAGIC + struct.pack("<Q", len(head)) + head + payload
    return body + hashlib.sha256(body).digest()


def load_filter(path: str | os.PathLike) -> OverlapFilter:
    """Read a filter written by build_filter, checking its magic, checksum and format."""
    from rbloom import Bloom

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise GPT2Error(f"{path}: cannot read the filter ({e.strerror})") from None
    if not data.startswith(MAGIC):
        raise GPT2Error(f"{path}: not an 8-gram filter made by `gpt2 overlap build` (wrong magic bytes)")
    fixed = len(MAGIC) + 8
    if len(data) < fixed + 32:
        raise GPT2Error(f"{path}: the filter file is truncated ({len(data)} bytes); build it again")
    body, digest = data[:-32], data[-32:]
    if hashlib.sha256(body).digest() != digest:
        raise GPT2Error(f"{path}: the filter file is corrupted or truncated (checksum mismatch); build it again")
    (head_len,) = struct.unpack("<Q", data[len(MAGIC) : fixed])
    try:
        header = json.loads(body[fixed : fixed + head_len])
    except ValueError:
        raise GPT2Error(f"{path}: the filter's header is not valid JSON; build it again") from None
    if header.get("format") != FORMAT or header.get("hash") != HASH_NAME or header.get("n") != N:
        raise GPT2Error(
            f"{path}: filter format {header.get('format')} ({header.get('hash')}); this gpt2 reads format {FORMAT}"
        )
    if header.get("normalization") != NORMALIZATION:
        # the same hash of differently normalised words would silently miss every 8-gram with punctuation in it
        raise GPT2Error(f"{path}: built with another normalisation ({header.get('normalization')!r}); build it again")
    try:
        bloom = Bloom.load_bytes(body[fixed + head_len :], int)
    except Exception as e:  # noqa: BLE001 - rbloom raises ValueError or others on bytes it did not write
        raise GPT2Error(f"{path}: the filter's bit array cannot be read ({e}); build it again") from None
    return OverlapFilter(bloom, header)


def measure_false_positives(bloom: Bloom, samples: int, seed: int = _FP_SEED) -> dict[str, Any]:
    """The filter's false-positive rate on `samples` random 8-grams, as the paper checked its filters ("we further
    verified the low false positive rate by generating 1M strings, of which zero were found by the filter"). The
    words are random 8-letter strings, so the 8-grams are not in any natural corpus; the hashing is the real one."""
    import base64

    import numpy as np

    rng = np.random.default_rng(seed)
    vocab = [base64.b32encode(rng.bytes(5)).decode().lower() for _ in range(4096)]
    ids = Hasher().word_ids(vocab)
    hits, done = 0, 0
    while done < samples:
        n = min(1 << 16, samples - done)
        choice = ids[rng.integers(0, len(vocab), size=(n, N))]
        hits += sum(map(bloom.__contains__, _chain([choice[:, j] for j in range(N)]).tolist()))
        done += n
    # with no hit, the rule of three gives a 95% upper bound of 3/n
    return {"samples": samples, "hits": hits, "rate": hits / samples if samples else None,
            "upper_95": (3 / samples if hits == 0 else None) if samples else None, "seed": seed}  # fmt: skip


def expected_false_positive_rate(bits: int, hashes: int, items: float) -> float:
    """The textbook rate (1 - e^(-k n / m))^k for m bits, k hash functions and n distinct items."""
    return (1 - math.exp(-hashes * items / bits)) ** hashes if bits else 1.0


@dataclass
class BuildResult:
    path: Path
    header: dict[str, Any]
    seconds: dict[str, float]


def build_filter(
    corpus: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    fp_rate: float = 1e-8,
    *,
    workers: int | None = None,
    text_field: str = "text",
    fp_samples: int = 1_000_000,
    progress: bool = False,
) -> BuildResult:
    """Build the 8-gram Bloom filter of `corpus` (files and folders as `gpt2 prepare` reads them) into `output`.

    Two passes: the first counts the 8-grams (an upper bound on the distinct ones) to size the filter for
    `fp_rate`, the second inserts them, both on `workers` processes (default: every core this process may use).
    Then `fp_samples` random 8-grams measure the false-positive rate, which the header keeps."""
    import time

    if not 0 < fp_rate < 1:
        raise GPT2Error(f"--false-positive-rate must be between 0 and 1, got {fp_rate}")
    if fp_samples < 0:
        raise GPT2Error(f"--fp-samples must be >= 0, got {fp_samples}")
    if workers is not None and workers < 1:
        raise GPT2Error(f"--workers must be >= 1, got {workers}")
    files = input_files(corpus)
    if workers is None:
        # starting a process costs more than it saves on a corpus of a piece or two
        small = sum(f.stat().st_size for f in files) < 2 * _PIECE_CHARS
        workers = 1 if small else _available_cores()
    output = Path(output)
    bar = _progress_bar(progress)
    seconds: dict[str, float] = {}

    start = time.perf_counter()
    reader = DocumentReader(files, text_field)
    counted = _run_pass(reader, "count", workers, progress=bar("counting 8-grams"))
    total = counted.ngrams
    for pieces in _joined_documents(counted):
        total += max(0, sum(c for c, _, _ in pieces) - N + 1) - sum(max(0, c - N + 1) for c, _, _ in pieces)
    seconds["count"] = time.perf_counter() - start
    if counted.documents == 0 or not any(f.stat().st_size for f in files):
        raise GPT2Error(f"no text found in {', '.join(map(str, corpus))}: the corpus is empty")
    if total == 0:
        raise GPT2Error(
            f"no 8-grams in {', '.join(map(str, corpus))}: all {counted.documents} documents have fewer than {N} words"
        )

    start = time.perf_counter()
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}.") as tmp:
        reader = DocumentReader(files, text_field)
        inserted = _run_pass(reader, "insert", workers, total, fp_rate, tmp, progress=bar("inserting 8-grams"))
        reader.warn_invalid(stacklevel=3)
        from rbloom import Bloom

        bloom = Bloom.load(inserted.filters[0], int)
        for path in inserted.filters[1:]:
            bloom |= Bloom.load(path, int)
    hasher = Hasher()
    count = inserted.ngrams
    for pieces in _joined_documents(inserted):
        for carried, window in _across_cuts(pieces):
            across = hasher.hashes(window)[:carried].tolist()
            bloom.update(across)
            count += len(across)
    seconds["insert"] = time.perf_counter() - start
    if count > total:  # the corpus changed between the passes: the filter is fuller than its size assumed
        warnings.warn(
            f"the corpus grew while the filter was built ({count:,} 8-grams inserted, {total:,} counted): its "
            f"false-positive rate may exceed {fp_rate:g}",
            stacklevel=2,
        )

    start = time.perf_counter()
    payload = bloom.save_bytes()
    measured = measure_false_positives(bloom, fp_samples)
    seconds["false_positives"] = time.perf_counter() - start
    bits = bloom.size_in_bits
    distinct = bloom.approx_items
    k = max(1, round(-math.log2(fp_rate)))  # rbloom's number of hashes: ceil(-log2 p) at its optimal size
    expected = expected_false_positive_rate(bits, k, distinct) if math.isfinite(distinct) else None
    header = {
        "format": FORMAT,
        "n": N,
        "normalization": NORMALIZATION,
        "hash": HASH_NAME,
        "false_positive_rate": fp_rate,
        "size_in_bits": bits,
        "ngrams": count,
        "approx_distinct_ngrams": round(distinct) if math.isfinite(distinct) else None,
        "bytes_per_ngram": len(payload) / count,
        "expected_false_positive_rate": expected,
        "measured_false_positives": measured,
        "documents": counted.documents,
        "corpus": [{"path": str(f.resolve()), "bytes": f.stat().st_size} for f in files],
        "text_field": text_field,
    }
    atomic_write(output, _encode(header, payload))
    return BuildResult(output, header, seconds)


def _progress_bar(enabled: bool) -> Callable[[str], Callable[[int], None] | None]:
    def make(desc: str) -> Callable[[int], None] | None:
        if not enabled:
            return None
        from tqdm import tqdm

        bar = tqdm(desc=desc, unit=" 8-grams", unit_scale=True, leave=False)
        return bar.update

    return make
