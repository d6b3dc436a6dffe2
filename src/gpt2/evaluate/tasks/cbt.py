"""The Children's Book Test (Hill et al. 2016): common nouns (CN) and named entities (NE).

Each example is 20 sentences of a book, then a 21st with one word replaced by XXXXX, and 10 candidate words.
Protocol (the paper's): each candidate is put into the blank, and the candidate plus the rest of the sentence is
scored given the 20 sentences and the start of the 21st; the most probable candidate is the answer; acc.
The context (shared by the 10 candidates) runs once. The text is PTB-style tokenized (`` '' quotes, split
clitics and punctuation), so it is de-tokenized first (detokenize.news).
Split: validation by default, the paper's choice (one of the test books is in WebText); --cbt-split test.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gpt2.errors import GPT2Error
from gpt2.evaluate import detokenize
from gpt2.evaluate.data import DataFile, lines, read_text
from gpt2.evaluate.tasks.base import Context, Result, Task, percent

CBT_ARCHIVE = "http://www.thespermwhale.com/jaseweston/babi/CBTest.tgz"
CBT_SHA256 = "932df0cadc1337b2a12b4c696b1041c1d1c6d4b6bd319874c6288f02e4a61e92"
BLANK = "XXXXX"


def cbt_file(kind: str, split: str) -> DataFile:
    name = f"cbtest_{kind}_{'valid_2000ex' if split == 'valid' else 'test_2500ex'}.txt"
    return DataFile("cbt", name, CBT_ARCHIVE, CBT_SHA256, member=f"CBTest/data/{name}")


@dataclass(frozen=True)
class CBTExample:
    sentences: list[str]
    query: str  # holds BLANK once
    answer: str
    candidates: list[str]


def read_cbt(path: Path) -> list[CBTExample]:
    """The official format: lines "1 sentence" .. "20 sentence", then "21 query\\tanswer\\t\\tc1|c2|...|c10",
    then a blank line."""
    examples, sentences = [], []
    for n, line in enumerate(lines(read_text(path)), start=1):
        if not line.strip():
            continue
        number, _, rest = line.rstrip("\n").partition(" ")
        if number == "21":
            fields = rest.split("\t")
            if len(fields) < 3 or BLANK not in fields[0]:
                raise GPT2Error(f"{path}:{n}: expected '21 query with {BLANK}<TAB>answer<TAB><TAB>candidates'")
            candidates = [c for c in fields[-1].strip().split("|") if c]
            answer = fields[1].strip()
            if answer not in candidates:
                raise GPT2Error(f"{path}:{n}: the answer {answer!r} is not among the candidates")
            examples.append(CBTExample(sentences, fields[0].strip(), answer, candidates))
            sentences = []
        elif number.isdigit():
            sentences.append(rest.strip())
        else:
            raise GPT2Error(f"{path}:{n}: expected a numbered line, got {line[:40]!r}")
    return examples


def cbt_group(ex: CBTExample) -> tuple[str, list[str]]:
    """(shared context text, one continuation text per candidate): the context ends where the blank begins."""
    context = detokenize.news(" ".join(ex.sentences))
    before, _, after = detokenize.news(ex.query).partition(BLANK)
    if before and not before.endswith(" "):  # the blank is glued to a quote or bracket: keep it so
        return f"{context} {before}", [c + after for c in ex.candidates]
    before = before.rstrip()
    return (f"{context} {before}" if before else context), [f" {c}{after}" for c in ex.candidates]


class CBT(Task):
    metrics = ("acc",)

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.name = f"cbt-{kind.lower()}"

    def run(self, ctx: Context) -> Result:
        split = ctx.options.get("cbt_split", "valid")
        f = cbt_file(self.kind, split)
        path = ctx.data.path(f)
        examples = read_cbt(path)[: ctx.limit]
        groups = []
        for ex in examples:
            context, conts = cbt_group(ex)
            groups.append((ctx.encode(context), [ctx.encode(c) for c in conts]))
        scores = ctx.scorer.score_shared(groups, desc=self.name)
        hits = []
        for ex, s in zip(examples, scores, strict=True):
            best = max(range(len(s)), key=lambda i: s[i].logprob)
            hits.append(ex.candidates[best] == ex.answer)
        protocol = {
            "data": ctx.data.describe(f, path, split=split),
            "scored": "candidate + rest of the sentence, given 20 sentences + the sentence up to the blank",
            "detokenizer": "news",
            "truncated_contexts": sum(s[0].truncated for s in scores),
        }
        return Result({"acc": percent(hits)}, len(examples), protocol)
