"""The Winograd Schema Challenge, WSC273 (the first 273 schemas of Davis's WSCollection.xml).

Each schema is a sentence with an ambiguous pronoun and two candidate referents. Protocol (Trinh & Le 2018, as
the paper uses it): substitute each candidate for the pronoun and compare the model's probabilities.
* acc_partial: score only what follows the substituted candidate, given everything before it (the paper's
  choice: the candidate's own probability no longer biases the decision).
* acc_full: score the whole sentence (from <|endoftext|>).
Substitution: "candidate's" for possessive pronouns (his, their, its, and her before a noun); a leading
"The"/"A"/"An" is lower-cased in mid-sentence and a candidate is capitalised at a sentence start.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from gpt2.errors import GPT2Error
from gpt2.evaluate.data import DataFile
from gpt2.evaluate.tasks.base import Context, Result, Task, percent, take

WSC = DataFile(
    "wsc273",
    "WSCollection.xml",
    "https://cs.nyu.edu/faculty/davise/papers/WinogradSchemas/WSCollection.xml",
    "98c845a5b33c109f2c49742e726fac592bbb1fdc3b3706b604de12f9c9f58c91",
    # the official file, and the LF-only copy in ../shared/data (same schemas, 162 fewer carriage returns)
    file_sha256=(
        "98c845a5b33c109f2c49742e726fac592bbb1fdc3b3706b604de12f9c9f58c91",
        "8d72fe16331cfcddfc2f8ec6f87c5a07e186f913e023705a998a5cc6011994e4",
    ),
)
WSC273 = 273
_POSSESSIVE = {"his", "their", "its"}
_NOT_A_NOUN = {"to", "and", "for", "with", "in", "on", "at", "that", "because", "but", "so", "as", "from", "about"}


@dataclass(frozen=True)
class Schema:
    before: str  # text before the pronoun
    pronoun: str
    after: str  # text after it
    options: tuple[str, str]
    label: int  # index of the correct option


def _clean(text: str | None) -> str:
    return " ".join((text or "").split())


def read_wsc(path: Path) -> list[Schema]:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise GPT2Error(f"{path}: not valid XML ({e})") from None
    schemas = []
    for i, s in enumerate(root.iter("schema")):
        text, answers = s.find("text"), s.find("answers")
        if text is None or answers is None:
            raise GPT2Error(f"{path}: schema {i + 1} lacks <text> or <answers>")
        options = [_clean(a.text) for a in answers.findall("answer")]
        correct = _clean(s.findtext("correctAnswer")).rstrip(".")
        if len(options) != 2 or correct not in ("A", "B"):
            raise GPT2Error(f"{path}: schema {i + 1} needs two answers and a correctAnswer of A or B")
        pron = _clean(text.findtext("pron"))
        schemas.append(
            Schema(
                _clean(text.findtext("txt1")),
                pron,
                _clean(text.findtext("txt2")),
                (options[0], options[1]),
                "AB".index(correct),
            )
        )
    return schemas


def substitute(s: Schema, option: str) -> str:
    """The candidate as it reads in the pronoun's place."""
    first_word = s.after.split(" ", 1)[0].lower() if s.after else ""
    if s.pronoun.lower() in _POSSESSIVE or (
        s.pronoun.lower() == "her" and first_word[:1].isalpha() and first_word not in _NOT_A_NOUN
    ):
        option += "'s"
    head, _, rest = option.partition(" ")
    if s.pronoun[:1].isupper():
        return option[:1].upper() + option[1:]
    if head in ("The", "A", "An") and rest:
        return f"{head.lower()} {rest}"
    return option


def continuation(s: Schema) -> str:
    """The text after the pronoun as it follows the candidate: punctuation attaches, words get a space."""
    glued = s.after[:1] in (".", ",", ";", ":", "!", "?", "")
    return s.after if glued else " " + s.after


class Winograd(Task):
    name = "winograd"
    metrics = ("acc_partial", "acc_full")

    def run(self, ctx: Context) -> Result:
        path = ctx.data.path(WSC)
        schemas = take(read_wsc(path)[:WSC273], ctx.limit)
        partial, full = [], []
        for s in schemas:
            for option in s.options:
                head = (f"{s.before} " if s.before else "") + substitute(s, option)
                tail = continuation(s)
                partial.append((ctx.encode(head), ctx.encode(tail)))
                full.append(([ctx.tokenizer.eot_id], ctx.encode(head + tail)))
        sp = ctx.scorer.score(partial, desc=f"{self.name} partial")
        sf = ctx.scorer.score(full, desc=f"{self.name} full")

        def accuracy(scores: list) -> float:
            picks = [int(scores[2 * i + 1].logprob > scores[2 * i].logprob) for i in range(len(schemas))]
            return percent([p == s.label for p, s in zip(picks, schemas, strict=True)])

        protocol = {
            "data": ctx.data.describe(WSC, path, schemas=f"first {WSC273} of the collection"),
            "partial": "log P(text after the candidate | text before the pronoun + candidate)",
            "full": "log P(whole sentence with the candidate | <|endoftext|>)",
        }
        return Result({"acc_partial": accuracy(sp), "acc_full": accuracy(sf)}, len(schemas), protocol)
