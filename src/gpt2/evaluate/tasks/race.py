"""RACE (Lai et al. 2017), the official test split, high-school (race-high: 1,045 articles, 3,498 questions) and
middle-school (race-middle: 362 articles, 1,436 questions) levels: pick the right one of four options.

Not in the GPT-2 paper. The protocol is GPT-3's (Brown et al. 2020, section 3.6, and its appendix G example for
RACE: the article, then the earlier questions of the same article with their answers, then the question) as
lm-evaluation-harness 0.4.13 implements it (EleutherAI/lm-evaluation-harness, lm_eval/tasks/race/preprocess_race.py,
doc_to_text, and race.yaml); tests/test_evaluate_harness.py compares every prompt of both levels with the harness's
own doc_to_text, and acc_last with its acc on the same weights:
* context = "Article: " + article + "\\n\\n", then for each EARLIER question of the same article
  "Question: " + question + "\\n" + "Answer: " + its right option + "\\n", then the question itself, bare (no
  "Question:" label, no "Answer:"). A fill-in-the-blank question (one that ends in "  _  .") among the earlier
  ones is written with its blank filled: the question without its last five characters (" _  .", the harness's
  `problem["question"][:-5]`) + its right option + "\\n", with no label. (Older harness versions kept only those
  five characters instead, dropping the question's words; their figures are not comparable with these.)
* each option is scored as " " + option given the context (the harness's target delimiter), the context running
  once for the four.
* acc: the option with the highest total log-probability. acc_norm: the highest log-probability per character
  of the option (the harness's acc_norm; GPT-3 itself normalised RACE by the option's unconditional probability,
  section 2.4, which neither the harness nor we do).
* Every question is scored, with the questions before it in its article as context (so the n are the test
  split's question counts). The harness makes one document per article and scores only its LAST question (its
  `race` task, high level only: 1,045 documents); acc_last is that figure: the accuracy over the scored questions
  that are the last of their article.
Few-shot (this project's choice): GPT-3 drew K examples from the training split; we read only the test split, so
the K examples come from OTHER articles of the same test split (never the article being asked about), each the
harness's full document (its article and questions, the last one answered " " + right option), separated by blank
lines as the harness's few-shot delimiter does. Default: zero-shot. A context longer than the model's window
loses its oldest tokens (counted in the protocol as truncated_contexts).
Data, either layout: the official per-article JSON files (RACE.tar.gz's RACE/test/<level>/*.txt, one JSON object
each: answers, options, questions, article, id) under race/RACE/test/<level>/ or race/test/<level>/; or those
files joined one per line, sorted by file name, as race/test_<level>.jsonl (../shared/data's layout, and what a
download of the official archive makes, checked by its sha256). File order is the names' order in both, so
--limit N (the first N questions) means the same questions in either layout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt2.errors import GPT2Error
from gpt2.evaluate.data import DataFile
from gpt2.evaluate.data import read_jsonl as read_records
from gpt2.evaluate.tasks.base import Context, Result, Task, percent, sample_shots

RACE_URL = "http://www.cs.cmu.edu/~glai1/data/race/RACE.tar.gz"
# Not published by the authors; the digest two independent public projects pin for the archive at that address.
RACE_SHA256 = "b2769cc9fdc5c546a693300eb9a966cec6870bd349fbc44ed5225f8ad33006e5"
# ../shared/data's JSON Lines files (the official test files joined, bytes unchanged; its MANIFEST.md)
_JSONL_SHA256 = {
    "high": "2720e17464d52b36ce78865846735592d923d35d34288ef7443baa4f57216795",
    "middle": "942f0052caa0176cc60049920691d72460e8f4f40cbab54bb09dbe1fda6e40fa",
}
LETTERS = "ABCD"
_BLANK = "  _  ."  # how RACE's fill-in-the-blank questions end
HARNESS = "GPT-3 (Brown et al. 2020) as lm-evaluation-harness 0.4.13 implements it (race task)"


def jsonl_file(level: str) -> DataFile:
    return DataFile(
        "race",
        f"test_{level}.jsonl",
        RACE_URL,
        RACE_SHA256,
        join=f"RACE/test/{level}",
        file_sha256=(_JSONL_SHA256[level],),
    )


@dataclass(frozen=True)
class Question:
    question: str
    options: tuple[str, str, str, str]
    answer: int  # 0-3


@dataclass(frozen=True)
class Article:
    id: str
    text: str
    questions: tuple[Question, ...]


def parse_article(d: dict) -> Article:
    qs, opts, answers = d["questions"], d["options"], d["answers"]
    if not (len(qs) == len(opts) == len(answers)) or not qs:
        raise ValueError("questions, options and answers differ in number")
    questions = []
    for q, o, a in zip(qs, opts, answers, strict=True):
        if len(o) != 4 or a not in LETTERS or not all(isinstance(x, str) for x in (q, a, *o)):
            raise ValueError("a question needs 4 options and an answer letter A-D")
        questions.append(Question(q, tuple(o), LETTERS.index(a)))
    return Article(str(d["id"]), d["article"], tuple(questions))


_EXPECTED = "a RACE article: a JSON object with article, questions, options (4 each), answers (A-D) and id"


def _parse(text: str, where: str) -> Article:
    try:
        return parse_article(json.loads(text))
    except (ValueError, KeyError, TypeError):
        raise GPT2Error(f"{where}: expected {_EXPECTED}") from None


def read_jsonl(path: Path) -> list[Article]:
    return read_records(path, parse_article, _EXPECTED)


def read_folder(folder: Path) -> list[Article]:
    """The official per-article files of one level, in file-name order (as the JSON Lines layout is)."""
    files = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix == ".txt"), key=lambda p: p.name.encode())
    if not files:
        raise GPT2Error(f"{folder}: no RACE article files (*.txt)")
    return [_parse(p.read_text(encoding="utf-8"), str(p)) for p in files]


def earlier(q: Question) -> str:
    """An answered earlier question, as the harness writes it (a blank question gets its answer in the blank)."""
    if q.question[-6:] == _BLANK:
        return q.question[:-5] + q.options[q.answer] + "\n"
    return "Question: " + q.question + "\n" + "Answer: " + q.options[q.answer] + "\n"


def context(article: Article, i: int) -> str:
    """The prompt for question i of the article; its options follow as " " + option."""
    return (
        "Article: " + article.text + "\n\n" + "".join(earlier(q) for q in article.questions[:i])
        + article.questions[i].question
    )  # fmt: skip


def shot(article: Article) -> str:
    """A few-shot example: the harness's document for the article, its last question answered."""
    last = article.questions[-1]
    return context(article, len(article.questions) - 1) + " " + last.options[last.answer]


class RACE(Task):
    metrics = ("acc", "acc_norm", "acc_last")
    few_shot_default = 0

    def __init__(self, level: str) -> None:
        self.level = level
        self.name = f"race-{level}"
        self.file = jsonl_file(level)

    def articles(self, ctx: Context) -> tuple[list[Article], dict[str, Any]]:
        root = ctx.data.root  # a download makes the JSON Lines file, so only --data-dir can hold the folders
        for folder in (root / "race" / "RACE" / "test" / self.level, root / "race" / "test" / self.level):
            if folder.is_dir():
                fmt = "official per-article JSON files"
                return read_folder(folder), {"file": str(folder), "source": RACE_URL, "format": fmt}
        path = ctx.data.path(self.file)
        fmt = "the official per-article JSON files joined one per line, by file name"
        return read_jsonl(path), ctx.data.describe(self.file, path, format=fmt)

    def run(self, ctx: Context) -> Result:
        articles, provenance = self.articles(ctx)
        items = [(a, i) for a, article in enumerate(articles) for i in range(len(article.questions))]
        items = items[: ctx.limit]
        k = self.shots(ctx)
        groups = []
        for n, (a, i) in enumerate(items):
            shots = sample_shots(articles, k, ctx.seed, f"{self.name}{n}", exclude=a)
            prefix = "".join(shot(s) + "\n\n" for s in shots) + context(articles[a], i)
            options = articles[a].questions[i].options
            groups.append((ctx.encode(prefix), [ctx.encode(" " + o) for o in options]))
        scores = ctx.scorer.score_shared(groups, desc=self.name)
        acc, acc_norm, acc_last = [], [], []
        for (a, i), s in zip(items, scores, strict=True):
            q = articles[a].questions[i]
            acc.append(max(range(4), key=lambda j: s[j].logprob) == q.answer)
            acc_norm.append(max(range(4), key=lambda j: s[j].logprob / max(len(q.options[j]), 1)) == q.answer)
            if i == len(articles[a].questions) - 1:
                acc_last.append(acc[-1])
        protocol = {
            "data": provenance,
            "split": f"test, {self.level} school",
            "protocol_source": HARNESS,
            "prompt": "'Article: {article}\\n\\n' + earlier questions 'Question: {q}\\nAnswer: {a}\\n' (a blank "
            "question '{q with its blank filled by a}\\n') + '{question}'",
            "continuation": "' ' + option",
            "acc_norm": "log-probability per character of the option",
            "acc_last": f"accuracy on each article's last question, the harness's figure ({len(acc_last)} questions)",
            "shots": k,
            "shots_from": "other articles of the same test split (GPT-3 used the training split)" if k else None,
            "articles": len({a for a, _ in items}),
            "truncated_contexts": sum(s[0].truncated for s in scores),
        }
        metrics = {"acc": percent(acc), "acc_norm": percent(acc_norm), "acc_last": percent(acc_last)}
        return Result(metrics, len(items), protocol)
