"""`gpt2 overlap build|test`: the paper's test-set contamination check (Radford et al. 2019, Section 4) with a
Bloom filter of a training corpus's 8-grams (gpt2.analysis.overlap)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpt2 overlap",
        description="Measure how many of a test set's 8-grams occur in a training corpus, as the GPT-2 paper did "
        "(Section 4): build a Bloom filter of the corpus's 8-grams once, then test files against it.",
    )
    sub = p.add_subparsers(dest="action", required=True, metavar="{build,test}")
    b = sub.add_parser(
        "build",
        help="build the Bloom filter of a corpus's 8-grams",
        description="Build the Bloom filter of a corpus's normalised 8-grams (two streaming passes, all cores).",
    )
    b.add_argument("--corpus", nargs="+", required=True, help=".txt / .jsonl(.gz/.zst/.bz2/.xz) files or folders")
    b.add_argument("--output", required=True, help="the filter file to write (parameters, bits and a checksum)")
    b.add_argument(
        "--false-positive-rate",
        type=float,
        default=1e-8,
        metavar="P",
        help="the bound the filter is sized for (default 1e-8, the paper's)",
    )
    b.add_argument(
        "--fp-samples",
        type=int,
        default=1_000_000,
        help="random 8-grams that measure the false-positive rate after the build (default 1M, as the paper)",
    )
    b.add_argument("--workers", type=int, help="processes that read and hash the corpus (default: every core)")
    b.add_argument("--text-field", default="text", help="JSON Lines field holding the text (default: text)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")

    t = sub.add_parser(
        "test",
        help="report the share of test files' 8-grams found in a filter",
        description="Report, per test file, the share of its 8-grams found in the filter, overall and per "
        "document or example (LAMBADA passages, WikiText articles, PTB sentences, ...), the documents with the "
        "most overlap, and the CDF of per-document overlap (the paper's Figure 5).",
    )
    t.add_argument("--filter", help="a filter made by `gpt2 overlap build` (needed unless --exact)")
    t.add_argument("--data", nargs="+", required=True, help="test files (or folders) to measure")
    t.add_argument("--json", metavar="OUT", help="write the figures per file (overlap, ngrams, per document) here")
    t.add_argument(
        "--plot", metavar="PNG", default="overlap.png", help="the CDF of per-document overlap (default: overlap.png)"
    )
    t.add_argument("--no-plot", action="store_true", help="draw no CDF")
    t.add_argument(
        "--exact",
        action="store_true",
        help="also count with a Python set of the corpus's 8-grams (small corpora), to check the filter",
    )
    t.add_argument("--corpus", nargs="+", help="the corpus for --exact (default: the files the filter was built from)")
    t.add_argument("--top", type=int, default=5, help="documents with the most overlap to show per file (default 5)")
    t.add_argument("--text-field", default="text", help="JSON Lines field holding the text (default: text)")
    return p


def run(argv: list[str]) -> None:
    a = parser().parse_args(argv)
    if a.action == "build":
        build(a)
    else:
        test(a)


def build(a: argparse.Namespace) -> None:
    from gpt2.analysis.bloom import build_filter

    r = build_filter(
        a.corpus,
        a.output,
        a.false_positive_rate,
        workers=a.workers,
        text_field=a.text_field,
        fp_samples=a.fp_samples,
        progress=not a.quiet,
    )
    h, fp = r.header, r.header["measured_false_positives"]
    s = r.seconds
    rate = sum(s.values())
    print(
        f"{r.path}: {h['ngrams']:,} 8-grams (about {h['approx_distinct_ngrams']:,} distinct) from "
        f"{_count(h['documents'], 'document')}; {h['size_in_bits'] / 8 / 2**20:,.1f} MiB, "
        f"{h['bytes_per_ngram']:.2f} bytes per 8-gram, sized for a false-positive rate of {h['false_positive_rate']:g}"
    )
    measured = f"{fp['hits']} of {fp['samples']:,} random 8-grams found"
    if fp["samples"]:
        measured += f" (rate {fp['rate']:.2g}" + (f", < {fp['upper_95']:.1g} at 95%)" if fp["upper_95"] else ")")
    print(f"false positives: {measured}; expected {h['expected_false_positive_rate']:.2g}")
    print(
        f"time: count {s['count']:.1f} s, insert {s['insert']:.1f} s "
        f"({h['ngrams'] / max(s['insert'], 1e-9):,.0f} 8-grams/s), false positives {s['false_positives']:.1f} s; "
        f"{rate:.1f} s in all"
    )


def test(a: argparse.Namespace) -> None:
    from gpt2.analysis.bloom import load_filter
    from gpt2.analysis.overlap import exact_ngrams, measure_overlap, plot_cdf
    from gpt2.errors import GPT2Error
    from gpt2.io import atomic_write

    if a.top < 0:
        raise GPT2Error(f"--top must be >= 0, got {a.top}")
    if not a.filter and not a.exact:
        raise GPT2Error("give --filter FILE (made by `gpt2 overlap build`), or --exact with --corpus")
    filt = load_filter(a.filter) if a.filter else None
    exact = None
    if a.exact:
        corpus = a.corpus or ([c["path"] for c in filt.header["corpus"]] if filt else None)
        if not corpus:
            raise GPT2Error("--exact without --filter needs --corpus FILES to build the set from")
        exact = exact_ngrams(corpus, filt.header.get("text_field", a.text_field) if filt else a.text_field)
        print(f"exact: {len(exact):,} distinct 8-grams in the corpus", file=sys.stderr)
    results = measure_overlap(a.data, filt, exact, a.text_field)
    for r in results:
        d = r.to_dict(a.top)
        share = f"{100 * d['overlap']:.2f}%" if d["overlap"] is not None else "n/a"
        line = (
            f"{d['file']} ({d['kind']}, {_count(d['documents'], 'document')}): {share} of {d['ngrams']:,} 8-grams "
            f"{'in the filter' if filt else 'in the corpus'}"
        )
        if d["median_document_overlap"] is not None:
            line += (
                f"; per document: mean {100 * d['mean_document_overlap']:.2f}%, median "
                f"{100 * d['median_document_overlap']:.2f}%, {d['documents_with_overlap']:,} of "
                f"{d['documents_scored']:,} with any"
            )
        print(line)
        if filt is not None and exact is not None:
            exact_share = f"{100 * d['exact_overlap']:.2f}%" if d["exact_overlap"] is not None else "n/a"
            print(f"  exact: {exact_share} ({d['exact_hits']:,} 8-grams; filter false positives: "
                  f"{d['filter_false_positives']:,})")  # fmt: skip
        for u in d["top"]:
            if not u["hits"]:
                break
            print(
                f"  {100 * u['overlap']:6.2f}% of {u['ngrams']:,}  {u['name']}: {u['preview'][:60]!r}"
                f" (e.g. {u.get('first_match', '')!r})"
            )
    if a.json:
        payload = {
            "filter": str(Path(a.filter).resolve()) if a.filter else None,
            "filter_header": {k: v for k, v in filt.header.items() if k != "corpus"} if filt else None,
            "exact": bool(a.exact),
            "files": {r.file: r.to_dict(a.top) for r in results},
        }
        atomic_write(a.json, json.dumps(payload, indent=1) + "\n")
        print(f"wrote {a.json}")
    if not a.no_plot:
        print(f"wrote {plot_cdf(results, a.plot)}")


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"
