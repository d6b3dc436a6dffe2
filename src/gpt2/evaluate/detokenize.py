"""De-tokenizers: undo the word tokenization of the older benchmarks so that GPT-2 reads ordinary text.

The paper (section 3.1): these data sets were tokenized and pre-processed in ways GPT-2 never saw in WebText, so
it scores them through "invertible de-tokenizers" that remove the artifacts. Each rule below maps one
tokenization artifact back to the plain-text form it came from; the word counts that normalise perplexity are
taken from the original text, so de-tokenizing changes what the model reads but not what it is scored against.

Invertibility, measured (tests/test_detokenize.py): each line of the shared files is de-tokenized, then
re-tokenized by the data set's own rules (WikiText: Moses-style spaced punctuation and non-breaking prefixes,
` @-@ `, ` @,@ `, ` @.@ `, split clitics, `= = Heading = =`; PTB: split clitics, `N` for numbers, `$ N`), and
compared with the original line. Lines that come back exactly:
* PTB (Mikolov's): test 3,761 of 3,761 (100%), validation 3,370 of 3,370 (100%);
* WikiText-2: raw test 4,349 of 4,358 (99.79%), tokenized test 4,355 of 4,358 (99.93%), tokenized validation
  3,751 of 3,760 (99.76%).
The rest are ambiguities the source leaves, which no rule can undo: a double space (`1 @.@  hrvatski`), a
possessive or a `--` the WikiText tokenizer left attached (`monitors' `, `numbers--4,000`), `var.` before an
`<unk>` that hides whether the next word was lower case, a quote whose pair is lost.
"""

from __future__ import annotations

import re

# "do n't" -> "don't", "John 's" -> "John's": clitics the tokenizers split off the word before them.
_CLITICS = re.compile(r" (n't|'s|'re|'ve|'ll|'d|'m|'S|N'T|'RE|'VE|'LL|'D|'M)(?![\w'])")
_LINE_EDGES = re.compile(r"(?m)^ +| +$")


def _heading(m: re.Match[str]) -> str:
    level = m.group(1).count("=")
    return f"{'=' * level} {m.group(2).strip()} {'=' * level}"


def wikitext(text: str) -> str:
    """WikiText (Merity et al. 2016): `@-@`, `@,@`, `@.@` number joins, spaced punctuation, brackets and quotes,
    `= = Heading = =` section titles, and the space that opens and closes every line."""
    s = text.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
    s = re.sub(r"(?m)^ ?((?:= )+)(.+?)(?: =)+ ?$", _heading, s)
    s = _CLITICS.sub(r"\1", s)
    # a plural possessive ("the players ' union"); not the quote after a clitic ("Eliot 's ' Preludes '")
    s = re.sub(r"(?<=\w)s ' ", "s' ", s)
    s = re.sub(r"([(\[{]) ", r"\1", s)
    s = re.sub(r" ([)\]}])", r"\1", s)
    s = re.sub(r'(?m)" ([^"\n]*?) "', r'"\1"', s)
    s = re.sub(r" ([.,;:!?%])(?=\s|$)", r"\1", s)
    return _LINE_EDGES.sub("", s)


def ptb(text: str) -> str:
    """Mikolov's Penn Treebank: split clitics (` n't`, ` 's`), `N` standing for every number (shown to the model
    as a digit), `$ 1`, and the space that opens and closes every line. Lower case and `<unk>` stay: they carry
    no recoverable information."""
    s = _CLITICS.sub(r"\1", text)
    s = re.sub(r"(?<!\S)N(?!\S)", "1", s)
    s = s.replace("$ 1", "$1").replace("# 1", "#1")
    return _LINE_EDGES.sub("", s)


def news(text: str) -> str:
    """PTB/Moses-style tokenized prose (CNN/Daily Mail as SummEval ships it, One Billion Word, CBT): split clitics,
    spaced punctuation, ``` `` ``` and `''` quotes, -LRB-/-RRB- brackets."""
    s = re.sub(r"-LRB-|-lrb-", "(", text)
    s = re.sub(r"-RRB-|-rrb-", ")", s)
    s = re.sub(r"-LSB-|-lsb-", "[", s)
    s = re.sub(r"-RSB-|-rsb-", "]", s)
    s = re.sub(r"`` ?", '"', s)
    s = re.sub(r" ?''", '"', s)
    s = _CLITICS.sub(r"\1", s)
    s = re.sub(r"([(\[{$#]) ", r"\1", s)
    s = re.sub(r" ([)\]}])", r"\1", s)
    s = re.sub(r" ([.,;:!?%]|\.\.\.)(?=\s|$|[\"'])", r"\1", s)
    s = re.sub(r'(?m)" ([^"\n]*?) "', r'"\1"', s)
    return _LINE_EDGES.sub("", s)
