"""The de-tokenizers are invertible: de-tokenize each line of the shared WikiText and PTB files, re-tokenize it with
the data set's own conventions (written out here, independently of gpt2.evaluate.detokenize), and count the lines
that come back exactly. The thresholds are the measured counts (detokenize.py's docstring states them), so a rule
that starts losing information, on a single line, fails here."""

from __future__ import annotations

import re

import pytest

from gpt2.evaluate import detokenize

CLITICS = r"n't|'s|'re|'ve|'ll|'d|'m|N'T|'S|'RE|'VE|'LL|'D|'M"
# Moses's English non-breaking prefixes (tokenizer's nonbreaking_prefix.en): a period after one stays on the word,
# as do periods of abbreviations with inner dots (U.S.) and of single capitals (initials: "T. S. Eliot").
MOSES_PREFIXES = (
    "Adj Adm Adv Asst Bart Bldg Brig Bros Capt Cmdr Col Comdr Con Corp Cpl DR Dr Drs Ens Gen Gov Hon Hr Hosp Insp Lt "
    "MM MR MRS MS Maj Messrs Mlle Mme Mr Mrs Ms Msgr Op Ord Pfc Ph Prof Pvt Rep Reps Res Rev Rt Sen Sens Sfc Sgt Sr "
    "St Supt Surg v vs i.e rev e.g Jan Feb Mar Apr Jun Jul Aug Sep Sept Oct Nov Dec"
)
PREFIXES = frozenset(MOSES_PREFIXES.split(" "))
NUMERIC_ONLY = frozenset({"No", "Nos", "Art", "Nr", "pp"})  # ... only before a number: "No. 5" but "No ."


def split_periods(words: list[str]) -> list[str]:
    """Moses's rule for a word ending in ".": split the period off unless the word is an abbreviation."""
    out = []
    for i, w in enumerate(words):
        following = words[i + 1] if i + 1 < len(words) else ""
        stem = w[:-1]
        if w.endswith(".") and stem and not stem.endswith("."):
            abbreviation = (
                ("." in stem and re.search(r"[^\W\d_]", stem))
                or stem in PREFIXES
                or (len(stem) == 1 and stem.isupper())
                or (stem in NUMERIC_ONLY and following[:1].isdigit())
                or following[:1].islower()
            )
            w = w if abbreviation else f"{stem} ."
        out.append(w)
    return out


def wikitext_tokenize_text(s: str) -> str:
    # number and hyphen joins first, as placeholders, so the punctuation rules below leave them alone
    s = re.sub(r"(?<=[\w>])-(?=[\w<])", "\x01", s)
    number = r"(?<![\w.,])(?:\d+|<unk>)(?:[.,](?:\d+|<unk>))+(?!\w|[.,](?:\d|<unk>))"
    s = re.sub(number, lambda m: m.group().replace(".", "\x02").replace(",", "\x03"), s)
    s = re.sub(rf"(?<=\S)({CLITICS})(?![\w'])", r" \1", s)
    s = re.sub(r"(?<=\w)s'(?!\w)", "s '", s)
    s = re.sub(r"([(\[{])(?=\S)", r"\1 ", s)
    s = re.sub(r"(?<=\S)([)\]}])", r" \1", s)
    s = re.sub(r'"([^"]*?)"', r'" \1 "', s)
    s = re.sub(r"(?<=\S)([;:!?%]|,(?!\d))", r" \1", s)
    s = re.sub(r"(?<=[^\s.])(\.\.\.)", r" \1", s)
    s = " ".join(split_periods(s.split(" ")))
    return s.replace("\x01", " @-@ ").replace("\x02", " @.@ ").replace("\x03", " @,@ ")


def wikitext_tokenize(line: str) -> str:
    """One line as WikiText writes it: tokens spaced, `= = Heading = =`, and a space at each end."""
    if not line:
        return " "
    if m := re.fullmatch(r"(=+) (.*?) (=+)", line):
        marks = " ".join("=" * len(m.group(1)))
        return f" {marks} {wikitext_tokenize_text(m.group(2))} {marks} "
    return f" {wikitext_tokenize_text(line)} "


def ptb_tokenize(line: str) -> str:
    """One line as Mikolov's PTB writes it: clitics split, every number `N`, a space at each end."""
    s = re.sub(rf"(?<=\S)({CLITICS})(?![\w'])", r" \1", line)
    s = re.sub(r"(?<!\S)1(?!\S)", "N", s)
    s = re.sub(r"([$#])1(?!\S)", r"\1 N", s)
    return f" {s} " if s else s


def round_trips(text: str, detok, retok) -> tuple[int, int]:  # noqa: ANN001
    """(lines that come back exactly, lines)."""
    original = text.split("\n")[:-1]
    restored = detok(text).split("\n")[:-1]
    assert len(restored) == len(original)  # the de-tokenizer keeps every line
    return sum(retok(d) == o for d, o in zip(restored, original, strict=True)), len(original)


@pytest.mark.parametrize(
    ("path", "at_least", "lines"),
    [
        ("ptb/ptb.test.txt", 3761, 3761),  # 100%
        ("ptb/ptb.valid.txt", 3370, 3370),  # 100%
        ("wikitext-2-raw/wiki.test.raw", 4349, 4358),  # 99.79%
        ("wikitext-2/wiki.test.tokens", 4355, 4358),  # 99.93%
        ("wikitext-2/wiki.valid.tokens", 3751, 3760),  # 99.76%
    ],
)
def test_detokenizers_round_trip_on_the_shared_files(shared_data, path, at_least, lines):
    text = (shared_data / path).read_text(encoding="utf-8")
    if path.startswith("ptb"):
        ok, total = round_trips(text, detokenize.ptb, ptb_tokenize)
    else:
        ok, total = round_trips(text, detokenize.wikitext, wikitext_tokenize)
    assert total == lines
    assert ok >= at_least, f"{path}: {ok} of {total} lines round-trip ({ok / total:.2%})"


def test_the_re_tokenizers_invert_known_lines():
    """The re-tokenizers themselves, on lines of the real files (so a pass above is not a vacuous one)."""
    for line in (
        " = = = 2000 – 2005 = = = ",
        ' In 2000 Boulter had a guest @-@ starring role on " The Bill " ; he earned $ 1 @,@ 000 @.@ 50 . ',
        " T. S. Eliot 's ' Preludes ' , the players ' union , and Turret No. 5 ( c . 1920 ) . ",
    ):
        assert wikitext_tokenize(detokenize.wikitext(line + "\n").rstrip("\n")) == line
    line = " it 's N years and the dow fell $ N but we do n't know mr. <unk> 's plan "
    assert ptb_tokenize(detokenize.ptb(line + "\n").rstrip("\n")) == line


def test_a_possessive_after_a_clitic_keeps_its_quote():
    # the plural-possessive rule once glued the quote that follows "'s" onto it: "Eliot's' Preludes"
    assert detokenize.wikitext(" T. S. Eliot 's ' Preludes ' \n") == "T. S. Eliot's ' Preludes'\n"
