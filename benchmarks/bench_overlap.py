"""8-gram overlap speed: the Bloom filter (gpt2.analysis.overlap) against a plain Python set of the 8-gram strings,
same text, same run.

    python benchmarks/bench_overlap.py [--repeats 3] [--data ../shared/data] [--copies 4]

The corpus is every text file of the shared data folder but WikiText (hellaswag decompressed, about 26 MB),
--copies times with the letters of each copy shifted, so the copies share no 8-gram and the filter does not fit the
CPU caches. Figures are
medians over the repeats:
  build:  8-grams/s of `build_filter` end to end on one process and on every core (both passes, the file written,
          no false-positive sampling), and of the filter's insertion step alone (normalised words in, filter out);
          against `set.update` of the 8-gram strings (normalising and joining counted as well);
  query:  8-grams/s of looking up a held-out text (WikiText-2 test) in the filter and in the set;
  memory: bytes per 8-gram of the saved filter (1e-8) and of the set (sys.getsizeof of the set and its strings).
"""

from __future__ import annotations

import argparse
import bz2
import os
import statistics
import string
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def corpus(data: Path, copies: int) -> str:
    texts = []
    for path in sorted(p for p in data.rglob("*") if p.is_file()):
        skip = path.parent.name in ("gpt2-vocab", "wikitext-2", "wikitext-2-raw")  # WikiText is the held-out text
        if skip or path.name in ("MANIFEST.md", ".gitattributes"):
            continue
        raw = bz2.decompress(path.read_bytes()) if path.suffix == ".bz2" else path.read_bytes()
        texts.append(raw.decode("utf-8", errors="replace"))
    text = "\n".join(texts)
    # each copy's letters shifted (a Caesar cipher), so the copies share no 8-gram
    low, up = string.ascii_lowercase, string.ascii_uppercase
    shifted = [text.translate(str.maketrans(low + up, low[c:] + low[:c] + up[c:] + up[:c])) for c in range(copies)]
    return "\n".join(shifted)


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="runs per figure; the median is shown")
    ap.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    ap.add_argument("--copies", type=int, default=4, help="copies of the shared text in the corpus")
    a = ap.parse_args()

    from gpt2.analysis.bloom import Hasher, _new_bloom, build_filter, load_filter, ngrams, normalize
    from gpt2.analysis.overlap import units_of

    text = corpus(a.data, a.copies)
    words = normalize(text)
    n = len(words) - 7
    print(f"corpus: {len(text.encode()) / 1e6:.1f} MB, {len(words):,} words, {n:,} 8-grams")
    held_words = [normalize(u.text) for u in units_of(a.data / "wikitext-2-raw" / "wiki.test.raw")[1]]
    held_n = sum(max(0, len(w) - 7) for w in held_words)

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "corpus.txt"
        src.write_text(text, "utf-8")
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        out = Path(tmp) / "f.bloom"
        for workers in sorted({1, cores}):
            secs, _ = timed(lambda w=workers: build_filter([src], out, workers=w, fp_samples=0), a.repeats)
            print(f"build_filter, {workers} process(es): {n / secs / 1e6:.2f}M 8-grams/s ({secs:.1f} s)")
        filt = load_filter(Path(tmp) / "f.bloom")
        filter_bytes = (Path(tmp) / "f.bloom").stat().st_size

    def insert() -> object:
        bloom = _new_bloom(n, 1e-8)
        bloom.update(Hasher().hashes(words).tolist())
        return bloom

    secs, _ = timed(insert, a.repeats)
    print(f"filter insert (hash + add), 1 process: {n / secs / 1e6:.2f}M 8-grams/s")

    def set_build() -> set[str]:
        s: set[str] = set()
        s.update(ngrams(normalize(text)))
        return s

    secs, grams = timed(set_build, 1)
    print(f"set build (normalise + join + add), 1 process: {n / secs / 1e6:.2f}M 8-grams/s")

    def query_filter() -> int:
        return sum(int(filt.contains(w).sum()) for w in held_words)

    def query_set() -> int:
        return sum(sum(map(grams.__contains__, ngrams(w))) for w in held_words)

    secs_f, hits_f = timed(query_filter, a.repeats)
    secs_s, hits_s = timed(query_set, a.repeats)
    print(f"query WikiText-2 test ({held_n:,} 8-grams): filter {held_n / secs_f / 1e6:.2f}M/s ({hits_f} hits), "
          f"set {held_n / secs_s / 1e6:.2f}M/s ({hits_s} hits)")  # fmt: skip
    set_bytes = sys.getsizeof(grams) + sum(map(sys.getsizeof, grams))
    per = len(grams)
    print(f"{per:,} distinct 8-grams; bytes per distinct 8-gram: filter {filter_bytes / per:.2f} (the file, sized "
          f"for all {n:,} at 1e-8), set {set_bytes / per:.1f} (the set and its strings)")  # fmt: skip


if __name__ == "__main__":
    main()
