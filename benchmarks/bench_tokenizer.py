"""Encoding speed: our tokenizer's fast path against tiktoken and Hugging Face `tokenizers`, same text, same run.

    python benchmarks/bench_tokenizer.py [--repeats 5] [--data ../shared/data]

The text is every data file in the shared data folder (hellaswag decompressed), about 20 MB. Each figure is the
median over the repeats, in MB/s of UTF-8 input; ratios are against tiktoken's `gpt2` encoding measured in the
same run. "single" encodes the whole text as one string on one thread; "batched" encodes it as ~2,000 documents
on all cores. All three must produce the same ids, which is checked first.
"""

from __future__ import annotations

import argparse
import bz2
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_corpus(data: Path = DATA) -> dict[str, str]:
    """The text of each data file in the shared folder (not the vocabulary files), hellaswag decompressed."""
    texts = {}
    for path in sorted(p for p in data.rglob("*") if p.is_file()):
        if path.parent.name == "gpt2-vocab" or path.name in ("MANIFEST.md", ".gitattributes"):
            continue
        raw = bz2.decompress(path.read_bytes()) if path.suffix == ".bz2" else path.read_bytes()
        texts[str(path.relative_to(data))] = raw.decode("utf-8", errors="replace")
    return texts


def documents(text: str, n: int) -> list[str]:
    """`text` cut at line ends into about `n` documents."""
    lines = text.splitlines(keepends=True)
    per = max(1, len(lines) // n)
    return ["".join(lines[i : i + per]) for i in range(0, len(lines), per)]


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    a = p.parse_args()

    import tiktoken
    import tokenizers
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import ENDOFTEXT, r50k_pat_str

    from gpt2.tokenizer import Tokenizer

    vocab = a.data / "gpt2-vocab"
    os.environ["TIKTOKEN_CACHE_DIR"] = ""  # read the files each time, as we do

    def load_tiktoken() -> tiktoken.Encoding:
        ranks = data_gym_to_mergeable_bpe_ranks(str(vocab / "vocab.bpe"), str(vocab / "encoder.json"))
        return tiktoken.Encoding("gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens={ENDOFTEXT: 50256})

    def load_hf() -> tokenizers.Tokenizer:
        return tokenizers.ByteLevelBPETokenizer(str(vocab / "encoder.json"), str(vocab / "vocab.bpe"))

    print(f"loading GPT-2's vocabulary (median of {a.repeats}):")
    loads = {
        "ours (Tokenizer.from_pretrained)": median_seconds(lambda: Tokenizer.from_pretrained(vocab), a.repeats),
        "tiktoken (data_gym_to_mergeable_bpe_ranks + Encoding)": median_seconds(load_tiktoken, a.repeats),
        "tokenizers (ByteLevelBPETokenizer)": median_seconds(load_hf, a.repeats),
    }
    for name, s in loads.items():
        print(f"  {name:<56} {s * 1000:7.0f} ms")

    ours, tik, hf = Tokenizer.from_pretrained(vocab), load_tiktoken(), load_hf()
    texts = shared_corpus(a.data)
    text = "".join(texts.values())
    docs = documents(text, 2000)
    mb = len(text.encode("utf-8")) / 1e6
    threads = os.cpu_count() or 1
    print(f"\ntext: {len(texts)} files, {mb:.1f} MB, {len(docs)} documents for batches; {threads} cores")

    expected = tik.encode(text)
    assert ours.encode(text) == expected, "ours and tiktoken disagree"
    assert hf.encode(text).ids == expected, "tokenizers and tiktoken disagree"
    assert [i for d in ours.encode_batch(docs) for i in d] == [i for d in tik.encode_batch(docs) for i in d]
    print(f"ids agree ({len(expected):,} tokens, {mb * 1e6 / len(expected):.2f} bytes/token)\n")

    cases = {
        "single": {
            "ours": lambda: ours.encode(text),
            "tiktoken": lambda: tik.encode(text),
            "tokenizers": lambda: hf.encode(text),
        },
        "batched": {
            "ours": lambda: ours.encode_batch(docs),
            "tiktoken": lambda: tik.encode_batch(docs, num_threads=threads),
            "tokenizers": lambda: hf.encode_batch(docs),
        },
    }
    print(f"{'':8} {'':12} {'MB/s':>8} {'vs tiktoken':>12}   (median of {a.repeats})")
    for mode, fns in cases.items():
        # Interleaved repeats, so that a busy moment on a shared machine hits all three alike.
        times: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(a.repeats):
            for name, fn in fns.items():
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
        speed = {name: mb / statistics.median(ts) for name, ts in times.items()}
        for name, s in speed.items():
            print(f"{mode:8} {name:12} {s:8.1f} {s / speed['tiktoken']:11.2f}x")

    part = text[:1_000_000]
    slow = median_seconds(lambda: Tokenizer.from_pretrained(vocab).encode_reference(part), 1)
    print(f"\nreference path (pure Python, cold cache): {len(part.encode()) / 1e6 / slow:.2f} MB/s on the first 1 MB")


if __name__ == "__main__":
    main()
