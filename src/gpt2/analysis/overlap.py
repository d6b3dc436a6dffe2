"""Test-set contamination, as the paper measured it (Radford et al. 2019, Section 4, "Generalization vs
Memorization"): the share of a test set's 8-grams found in a Bloom filter of a training corpus (gpt2.analysis.bloom),
per file and per example.

A file of one of the evaluation's data sets is split into the examples the evaluation scores, read by that task's
own reader (gpt2.evaluate.tasks), so that "an example" means the same thing in the contamination report and in the
evaluation: LAMBADA passages, WikiText articles, PTB and 1BW sentences, CBT questions, WMT segments, CoQA stories,
HellaSwag contexts with their endings, NQ questions with their answers, RACE articles with their questions, CNN /
Daily Mail articles with their highlights, WSC273 schemas. Any other file is one unit per JSON Lines record (its
text field, or all its strings), or one unit.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt2.analysis.bloom import N, OverlapFilter, joined_hashes, ngrams, normalize
from gpt2.errors import GPT2Error
from gpt2.evaluate.data import read_jsonl, read_text
from gpt2.evaluate.tasks import cbt, cnn_dm, coqa, hellaswag, lambada, nq, perplexity, race, winograd, wmt
from gpt2.io import DocumentReader, input_files, is_jsonl


@dataclass
class Unit:
    """One document or example of a test set: what the paper's Figure 5 counts one of."""

    name: str
    text: str


def _numbered(noun: str, texts: Iterable[str]) -> list[Unit]:
    return [Unit(f"{noun} {i}", text) for i, text in enumerate(texts, start=1)]


def _lambada(path: Path) -> list[Unit]:
    return _numbered("passage", lambada.read_lambada(path))


def _wikitext(path: Path) -> list[Unit]:
    articles = perplexity.wikitext_articles(read_text(path))
    return [Unit(perplexity.wikitext_title(a) or f"article {i}", a) for i, a in enumerate(articles, start=1)]


def _sentences(path: Path) -> list[Unit]:
    return _numbered("sentence", perplexity.read_sentences(path))


def _cbt(path: Path) -> list[Unit]:
    # the passage as the model reads it, the answer in the blank; the other candidates are not text of the book
    texts = ("\n".join([*ex.sentences, ex.query.replace(cbt.BLANK, ex.answer)]) for ex in cbt.read_cbt(path))
    return _numbered("question", texts)


def _wmt(path: Path) -> list[Unit]:
    return _numbered("segment", wmt.read_sgm(path))


def _coqa(path: Path) -> list[Unit]:
    return [Unit(s.id or f"story {i}", coqa.transcript(s)) for i, s in enumerate(coqa.read_coqa(path), start=1)]


def _hellaswag_units(examples: list[hellaswag.Example]) -> list[Unit]:
    return _numbered("task", ("\n".join([context, *endings]) for context, endings, _ in examples))


def _hellaswag_official(path: Path) -> list[Unit]:
    return _hellaswag_units(hellaswag.read_official(path))


def _hellaswag_llama_cpp(path: Path) -> list[Unit]:
    return _hellaswag_units(hellaswag.read_llama_cpp(path))


def _nq(path: Path) -> list[Unit]:
    return _numbered("question", ("\n".join([question, *answers]) for question, answers in nq.read_nq(path)))


def _race(path: Path) -> list[Unit]:
    units = []
    for a in race.read_jsonl(path):
        # the article, then each question and its four options; the answer letters and the file name are no text
        questions = [line for q in a.questions for line in (q.question, *q.options)]
        units.append(Unit(a.id, "\n".join([a.text, *questions])))
    return units


def _cnn_dm(path: Path) -> list[Unit]:
    pairs = cnn_dm.read_summeval(path, None)
    return _numbered("article", (f"{article}\n{highlights}" for article, highlights in pairs))


def _winograd(path: Path) -> list[Unit]:
    schemas = winograd.read_wsc(path)[: winograd.WSC273]
    sentences = ((f"{s.before} " if s.before else "") + s.pronoun + winograd.continuation(s) for s in schemas)
    return _numbered("schema", sentences)


# The evaluation's data sets by file name (lower-cased), as its data folder names them: (kind, a JSON Lines file or
# not, whether a name is one, the units). A JSON Lines file not named here is read as records.
_TEST_SETS: list[tuple[str, bool, Callable[[str], bool], Callable[[Path], list[Unit]]]] = [
    ("lambada", True, lambda n: n.startswith("lambada"), _lambada),
    ("nq", True, lambda n: n.startswith("nq-open"), _nq),
    ("race", True, lambda n: n.startswith(("test_high.", "test_middle.")), _race),
    ("cnn_dm", True, lambda n: n.startswith("summeval_cnndm"), _cnn_dm),
    ("hellaswag", True, lambda n: n.startswith("hellaswag"), _hellaswag_official),
    ("wikitext", False, lambda n: n.startswith("wiki.") or "wikitext" in n, _wikitext),
    ("ptb", False, lambda n: n.startswith("ptb."), _sentences),
    ("1bw", False, lambda n: n.startswith("news.en.heldout") or "1b_benchmark" in n, _sentences),
    ("cbt", False, lambda n: n.startswith("cbtest"), _cbt),
    ("wmt", False, lambda n: n.endswith((".sgm", ".sgm.gz")), _wmt),
    ("coqa", False, lambda n: n.startswith("coqa") and n.endswith(".json"), _coqa),
    ("hellaswag", False, lambda n: n.startswith("hellaswag") and ".txt" in n, _hellaswag_llama_cpp),
    ("winograd", False, lambda n: n == winograd.WSC.name.lower(), _winograd),
]


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _records(path: Path, text_field: str) -> list[Unit]:
    texts = []
    for record in read_jsonl(path, lambda record: record, "JSON"):
        text = record.get(text_field) if isinstance(record, dict) else None
        texts.append(text if isinstance(text, str) else " ".join(_strings(record)))
    return _numbered("record", texts)


def units_of(path: str | os.PathLike, text_field: str = "text") -> tuple[str, list[Unit]]:
    """A test file's kind and its units: the examples the evaluation scores when the file is one of its data sets
    (read by the task's reader), else one unit per JSON Lines record (its `text_field`, or all its strings) or one
    per file."""
    path = Path(path)
    name, jsonl = path.name.lower(), is_jsonl(path)
    for kind, jsonl_set, matches, units in _TEST_SETS:
        if jsonl_set == jsonl and matches(name):
            return kind, units(path)
    if jsonl:
        return "jsonl", _records(path, text_field)
    text = read_text(path)
    return "text", [Unit(path.name, text)] if text.strip() else []


@dataclass
class FileOverlap:
    """The overlap of one test file's 8-grams with a filter (and, with --exact, with the exact set)."""

    file: str
    kind: str
    units: list[dict[str, Any]]
    ngrams: int
    hits: int
    exact_hits: int | None = None

    @property
    def overlap(self) -> float | None:
        return self.hits / self.ngrams if self.ngrams else None

    def to_dict(self, top: int) -> dict[str, Any]:
        scored = [u for u in self.units if u["ngrams"]]
        shares = sorted(u["overlap"] for u in scored)
        d: dict[str, Any] = {
            "file": self.file,
            "kind": self.kind,
            "documents": len(self.units),
            "documents_scored": len(scored),
            "ngrams": self.ngrams,
            "hits": self.hits,
            "overlap": self.overlap,
            "mean_document_overlap": sum(shares) / len(shares) if shares else None,
            "median_document_overlap": shares[len(shares) // 2] if shares else None,
            "documents_with_overlap": sum(1 for s in shares if s > 0),
            "top": sorted(scored, key=lambda u: (-u["overlap"], -u["hits"]))[:top],
            "per_document": [{k: u[k] for k in ("name", "ngrams", "hits", "overlap")} for u in self.units],
        }
        if self.exact_hits is not None:
            d["exact_hits"] = self.exact_hits
            d["exact_overlap"] = self.exact_hits / self.ngrams if self.ngrams else None
            d["filter_false_positives"] = self.hits - self.exact_hits
        return d


def exact_ngrams(corpus: Sequence[str | os.PathLike], text_field: str = "text") -> set[str]:
    """Every 8-gram of the corpus in a Python set: the ground truth for small corpora (--exact)."""
    grams: set[str] = set()
    reader = DocumentReader(input_files(corpus), text_field)
    for doc in reader.texts():
        grams.update(ngrams(normalize(doc)))
    reader.warn_invalid(stacklevel=3)
    return grams


def measure_overlap(
    test_files: Sequence[str | os.PathLike],
    filt: OverlapFilter | None = None,
    exact: set[str] | None = None,
    text_field: str = "text",
) -> list[FileOverlap]:
    """Each test file's 8-grams looked up in the filter (and in `exact`, when given), per unit. With only `exact`
    the exact figures stand in for the filter's."""
    if filt is None and exact is None:
        raise GPT2Error("nothing to test against: give a filter, or --exact with the corpus")
    out = []
    for path in input_files(test_files):
        kind, units = units_of(path, text_field)
        rows, total, hits, exact_total = [], 0, 0, 0
        word_lists = [normalize(unit.text) for unit in units]
        in_filter = None
        if filt is not None and units:
            hashes, offsets = joined_hashes(filt.hasher, word_lists)
            in_filter = filt.contains_hashes(hashes)
        for i, (unit, words) in enumerate(zip(units, word_lists, strict=True)):
            exact_found = [g in exact for g in ngrams(words)] if exact is not None else None
            if in_filter is not None:
                start = int(offsets[i])
                found = in_filter[start : start + max(0, len(words) - N + 1)].tolist()
            else:
                found = exact_found or []
            count, hit = max(0, len(words) - N + 1), sum(found)
            row = {
                "name": unit.name,
                "ngrams": count,
                "hits": hit,
                "overlap": hit / count if count else None,
                "preview": " ".join(unit.text.split())[:100],
            }
            if hit:
                i = found.index(True)
                row["first_match"] = " ".join(words[i : i + N])
            if exact_found is not None:
                row["exact_hits"] = sum(exact_found)
                exact_total += row["exact_hits"]
            rows.append(row)
            total += count
            hits += hit
        out.append(FileOverlap(str(path), kind, rows, total, hits, exact_total if exact is not None else None))
    return out


def plot_cdf(results: Iterable[FileOverlap], output: str | os.PathLike, title: str | None = None) -> Path:
    """The CDF of per-document overlap, one curve per test file: the paper's Figure 5."""
    from gpt2.plot import new_figure, save_png

    fig = new_figure(figsize=(7, 4.5), dpi=120)
    ax = fig.add_subplot()
    for i, r in enumerate(results):
        shares = sorted(100 * u["overlap"] for u in r.units if u["ngrams"])
        if not shares:
            continue
        ys = [(j + 1) / len(shares) for j in range(len(shares))]
        ax.step(shares, ys, where="post", color=f"C{i}", label=f"{Path(r.file).name} ({r.kind}, {len(shares)} docs)")
    ax.set_xlabel("8-grams of the document found in the filter (%)")
    ax.set_ylabel("cumulative fraction of documents")
    ax.set_ylim(0, 1.01)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title or "Per-document 8-gram overlap (as Radford et al. 2019, Figure 5)", fontsize=10)
    fig.tight_layout()
    output = save_png(fig, output)
    return output
