"""The language-modelling denominators: word-level perplexity divides by the tokens of the original data set (its
words plus one end-of-line token per line; the canonical counts on the shared files), 1BW predicts and counts
each sentence's end, enwik8 and text8 divide by exactly their test split's 5,000,000 bytes / characters; and the
stride is documented where users read it."""

from __future__ import annotations

import math
import re

import pytest
import torch

from gpt2.evaluate import evaluate
from gpt2.evaluate.scoring import Score, Scorer
from gpt2.evaluate.tasks import perplexity
from gpt2.model import GPT, GPTConfig

N_CTX = 128


@pytest.fixture(scope="module")
def tiny(gpt2_tokenizer) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(n_positions=N_CTX, n_layer=2, n_head=2, n_embd=32)).eval()


@pytest.fixture
def one_nat_per_token(monkeypatch) -> list:
    """Replaces the model's scores by exactly 1 nat per target token (so NLL = tokens), and records the requests:
    the denominators can then be checked on whole files in seconds."""
    seen: list = []

    def score(self, requests, *, stride=None, exclude_first=None, desc=""):  # noqa: ANN001
        seen.extend(requests)
        return [Score(-float(len(t)), len(t), False, False, False, False) for _, t in requests]

    monkeypatch.setattr(Scorer, "score", score)
    return seen


# ---------------------------------------------------------------------- word level: the canonical counts
@pytest.mark.parametrize(
    ("task", "folder", "words", "lines"),
    [
        # Merity et al. 2016, Table 1: WikiText-2 (and WikiText-103) test 245,569 tokens
        ("wikitext2", "wikitext-2-raw", 241_211, 4_358),
        # Mikolov's PTB test: 82,430 tokens with one end-of-sentence per line (Zaremba et al. 2014: "82k")
        ("ptb", "ptb", 78_669, 3_761),
    ],
)
def test_word_ppl_divides_by_the_original_tokens_with_line_ends(
    shared_data, tiny, gpt2_tokenizer, one_nat_per_token, task, folder, words, lines
):
    r = evaluate(tiny, gpt2_tokenizer, task, data_dir=shared_data, offline=True)
    protocol = r["protocol"]["tasks"][task]
    assert (protocol["word_tokens"], protocol["line_ends"]) == (words, lines)
    assert protocol["words"] == {"wikitext2": 245_569, "ptb": 82_430}[task]
    assert protocol["tokens"] == sum(len(t) for _, t in one_nat_per_token)  # every token of the file, scored
    assert r["tasks"][task]["word_ppl"] == pytest.approx(math.exp(protocol["tokens"] / protocol["words"]))
    # every line end is predicted: the text the model read has one newline per original line
    read = "".join(gpt2_tokenizer.decode(t) for _, t in one_nat_per_token)
    assert read.count("\n") == lines


def test_the_same_counts_on_the_tokenized_wikitext_files(shared_data):
    """The count convention on the tokenized release too (test 245,569 and validation 217,646: Merity et al.)."""
    for name, expected in (("wiki.test.tokens", 245_569), ("wiki.valid.tokens", 217_646)):
        articles = perplexity.wikitext_articles((shared_data / "wikitext-2" / name).read_text(encoding="utf-8"))
        assert sum(sum(perplexity.original_tokens(a)) for a in articles) == expected, name


def test_with_limit_the_count_is_of_what_was_scored(shared_data, tiny, gpt2_tokenizer, one_nat_per_token):
    raw = (shared_data / "wikitext-2-raw" / "wiki.test.raw").read_text(encoding="utf-8")
    third_title = [m.start() for m in re.finditer(r"(?m)^ = [^=].* = $", raw)][2]
    first_two = raw[:third_title]  # the blank first line, then two articles
    r = evaluate(tiny, gpt2_tokenizer, "wikitext2", data_dir=shared_data, offline=True, limit=2)
    assert r["tasks"]["wikitext2"]["n"] == 2
    assert r["protocol"]["tasks"]["wikitext2"]["words"] == len(first_two.split()) + first_two.count("\n")

    ptb = (shared_data / "ptb" / "ptb.test.txt").read_text(encoding="utf-8").splitlines()[:10]
    r = evaluate(tiny, gpt2_tokenizer, "ptb", data_dir=shared_data, offline=True, limit=10)
    assert r["tasks"]["ptb"]["n"] == 10
    assert r["protocol"]["tasks"]["ptb"]["words"] == sum(len(line.split()) + 1 for line in ptb)


def test_1bw_predicts_and_counts_each_sentence_end(tmp_path, tiny, gpt2_tokenizer, one_nat_per_token):
    sentences = ["The company said it 's fine .", "Shares rose 5 % .", "", "He left ."]  # a blank line: no sentence
    (tmp_path / "1bw").mkdir()
    (tmp_path / "1bw" / "news.en.heldout-00000-of-00050").write_text("\n".join(sentences) + "\n")
    r = evaluate(tiny, gpt2_tokenizer, "1bw", data_dir=tmp_path, offline=True)
    assert r["tasks"]["1bw"]["n"] == 3
    assert r["protocol"]["tasks"]["1bw"]["words"] == (7 + 5 + 3) + 3  # the words, and one end of sentence each
    texts = [gpt2_tokenizer.decode(t) for _, t in one_nat_per_token]
    assert texts == ["The company said it's fine.\n", "Shares rose 5%.\n", "He left.\n"]  # the end is predicted
    one_nat_per_token.clear()
    r = evaluate(tiny, gpt2_tokenizer, "1bw", data_dir=tmp_path, offline=True, limit=1)
    assert r["protocol"]["tasks"]["1bw"]["words"] == 7 + 1 and len(one_nat_per_token) == 1


# ---------------------------------------------------------------------- enwik8 and text8: exactly the test split
def test_enwik8_counts_every_byte_of_a_split_that_starts_inside_a_character(
    tmp_path, tiny, gpt2_tokenizer, monkeypatch
):
    size = 3000
    monkeypatch.setattr(perplexity, "TEST_SIZE", size)
    body = ("<page><title>Caf\u00e9 \u20ac</title> na\u00efve \u65e5\u672c text </page>\n" * 80).encode()
    cut = next(i for i, b in enumerate(body) if b & 0xC0 == 0x80)  # the first byte inside a multi-byte character
    data = body[: cut + size]  # so the file's last `size` bytes start inside that character
    data = data[:-100] + b"\xff" + data[-99:]  # and hold one byte that is no UTF-8 at all
    tail = data[-size:]
    assert tail[0] & 0xC0 == 0x80 and len(tail) == size
    (tmp_path / "enwik8").mkdir()
    (tmp_path / "enwik8" / "enwik8").write_bytes(data)

    ids = perplexity.encode_bytes(gpt2_tokenizer, tail)
    assert gpt2_tokenizer.decode_bytes(ids) == tail  # the model reads exactly the test bytes
    r = evaluate(tiny, gpt2_tokenizer, "enwik8", data_dir=tmp_path, offline=True)
    protocol, t = r["protocol"]["tasks"]["enwik8"], r["tasks"]["enwik8"]
    assert protocol["bytes"] == size and protocol["tokens"] == len(ids)
    nll = math.log(t["token_ppl"]) * protocol["tokens"]
    assert t["bpb"] == pytest.approx(nll / math.log(2) / size, rel=1e-6)

    r = evaluate(tiny, gpt2_tokenizer, "enwik8", data_dir=tmp_path, offline=True, limit=2, stride=64)
    protocol = r["protocol"]["tasks"]["enwik8"]
    assert r["tasks"]["enwik8"]["n"] == 2 and protocol["tokens"] == N_CTX + 64
    assert protocol["bytes"] == len(gpt2_tokenizer.decode_bytes(ids[: N_CTX + 64]))  # what those windows cover


def test_text8_divides_by_the_characters_of_its_test_split(tmp_path, tiny, gpt2_tokenizer, monkeypatch):
    monkeypatch.setattr(perplexity, "TEST_SIZE", 2000)
    (tmp_path / "text8").mkdir()
    (tmp_path / "text8" / "text8").write_text(" anarchism originated as a term of abuse" * 100)  # 4,000 characters
    r = evaluate(tiny, gpt2_tokenizer, "text8", data_dir=tmp_path, offline=True)
    protocol, t = r["protocol"]["tasks"]["text8"], r["tasks"]["text8"]
    assert protocol["characters"] == 2000 and protocol["test_split"].startswith("the last 2,000 characters")
    nll = math.log(t["token_ppl"]) * protocol["tokens"]
    assert t["bpc"] == pytest.approx(nll / math.log(2) / 2000, rel=1e-6)


# ---------------------------------------------------------------------- the stride, as documented
def test_default_stride_is_disjoint_windows_and_says_why(tmp_path, tiny, gpt2_tokenizer, one_nat_per_token):
    from gpt2.commands.eval import parser

    (tmp_path / "ptb").mkdir()
    (tmp_path / "ptb" / "ptb.test.txt").write_text(" no it was n't black monday \n" * 50)
    r = evaluate(tiny, gpt2_tokenizer, "ptb", data_dir=tmp_path, offline=True)
    protocol = r["protocol"]["tasks"]["ptb"]
    assert protocol["stride"] == N_CTX and r["protocol"]["stride"] == N_CTX
    assert "no stride" in protocol["stride_basis"] and "not from the paper" in protocol["stride_basis"]
    help_text = " ".join(parser().format_help().split())
    assert "default: the context, i.e. disjoint windows" in help_text and "best match its figures" in help_text
    assert "the paper: 32" not in help_text and "paper's setting" not in help_text
    doc = " ".join((perplexity.__doc__ or "").split())
    assert "Default: disjoint windows" in doc and "not the paper's" in doc and "openai/gpt-2#78" in doc


def test_wikitext_articles_cover_the_whole_file(shared_data):
    raw = (shared_data / "wikitext-2-raw" / "wiki.test.raw").read_text(encoding="utf-8")
    articles = perplexity.wikitext_articles(raw)
    assert "".join(articles) == raw and all(a.lstrip(" \n").startswith("= ") for a in articles)
    assert perplexity.lines("a\nb") == ["a\n", "b"] and perplexity.lines("a\u2028b\n") == ["a\u2028b\n"]
    assert perplexity.original_tokens(" x y \n \n") == (2, 2)
