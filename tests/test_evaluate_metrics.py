"""Metrics and de-tokenizers of the evaluation suite, on hand-computable cases."""

from __future__ import annotations

import math

import pytest

from gpt2.evaluate import detokenize
from gpt2.evaluate.metrics import (
    bits_per_unit,
    coqa_scores,
    corpus_bleu,
    exact_match,
    max_over_golds,
    normalize_answer,
    perplexity,
    rouge_f1,
    token_f1,
)


def test_normalize_answer_drops_case_punctuation_articles_and_extra_space():
    assert normalize_answer("The  Eiffel-Tower, in Paris!") == "eiffeltower in paris"
    assert normalize_answer("an apple a day") == "apple day"
    assert normalize_answer("theater") == "theater"  # articles only as whole words


def test_exact_match_and_token_f1_by_hand():
    assert exact_match("The cat.", "cat") == 1.0
    assert exact_match("a cat sat", "cat") == 0.0
    # "cat sat" vs "cat sat down": 2 common tokens, precision 1, recall 2/3 -> F1 0.8
    assert token_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)
    assert token_f1("dog", "cat") == 0.0
    assert token_f1("", "the") == 1.0  # both normalise to empty: CoQA's "unknown" agreement
    assert token_f1("cat", "") == 0.0
    # repeated tokens are clipped: pred "cat cat", gold "cat" -> 1 common, P 1/2, R 1 -> 2/3
    assert token_f1("cat cat", "cat") == pytest.approx(2 / 3)
    assert max_over_golds(exact_match, "Paris", ["London", "paris"]) == 1.0


def test_coqa_leave_one_out_by_hand():
    # golds a, a, b: leaving out each gold in turn, the best of the other two is 1, 1, 1 for "a" -> EM 1
    assert coqa_scores("a b", ["a b", "a b", "c"]) == (1.0, 1.0)
    # pred "c" vs golds [x, y, c]: leaving out x or y keeps c (1); leaving out c gives 0 -> 2/3
    em, f1 = coqa_scores("c", ["x", "y", "c"])
    assert em == pytest.approx(2 / 3) and f1 == pytest.approx(2 / 3)
    assert coqa_scores("x y", ["x z"]) == (0.0, 0.5)


def test_bleu_by_hand():
    # n-gram precisions 5/6, 3/5, 2/4, 1/3, equal lengths (no brevity penalty): BLEU = geometric mean
    expected = 100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert corpus_bleu(["the cat sat on the mat"], ["the cat sat on a mat"]) == pytest.approx(expected, abs=0.01)
    assert corpus_bleu(["a b c d e"], ["a b c d e"]) == pytest.approx(100.0)


def test_rouge_by_hand():
    s = rouge_f1(["the cat sat"], ["the cat ran"])
    # unigrams 2/3 both ways; bigrams "the cat" of 2; LCS "the cat" = 2 of 3 (one sentence: rougeLsum = rougeL)
    assert s == pytest.approx({"rouge1": 200 / 3, "rouge2": 50.0, "rougeLsum": 200 / 3, "rougeL": 200 / 3})
    assert rouge_f1(["a b", "c d"], ["a b", "x y"])["rouge1"] == pytest.approx(50.0)  # mean over examples


def test_rouge_lsum_is_summary_level_lcs_over_sentences():
    # sentences in the other order: one LCS over the whole text finds "a b" (or "c d"), 2 of 4 tokens -> 50;
    # the summary-level LCS (ROUGE-1.5.5's ROUGE-L, Table 4's R-L) matches each reference sentence with the
    # prediction's sentences: "a b" and "c d" both found, 4 of 4 -> 100
    s = rouge_f1(["c d\na b"], ["a b\nc d"])
    assert s["rougeL"] == pytest.approx(50.0) and s["rougeLsum"] == pytest.approx(100.0)
    assert s["rouge1"] == pytest.approx(100.0)  # n-grams ignore the line breaks
    # union LCS: reference sentence "a b c d" against prediction sentences "a x" and "c y": union {a, c} -> 2 of 4
    s = rouge_f1(["a x\nc y"], ["a b c d"], ("rougeLsum",))
    assert s == pytest.approx({"rougeLsum": 100 * 2 * (2 / 4) * (2 / 4) / (2 / 4 + 2 / 4)})


def test_perplexity_and_bits():
    assert perplexity(2 * math.log(4), 2) == pytest.approx(4.0)
    assert bits_per_unit(8 * math.log(2), 4) == pytest.approx(2.0)
    assert math.isnan(perplexity(1.0, 0))


def test_wikitext_detokenizer_by_hand():
    raw = ' = = Career = = \n The 1 @,@ 000 @-@ year plan ( a " big " one ) , was n\'t 3 @.@ 5 m ; he said . \n'
    assert detokenize.wikitext(raw) == '== Career ==\nThe 1,000-year plan (a "big" one), wasn\'t 3.5 m; he said.\n'
    assert detokenize.wikitext(" = Robert Boulter = \n") == "= Robert Boulter =\n"
    assert detokenize.wikitext(" the players ' union \n") == "the players' union\n"


def test_ptb_detokenizer_by_hand():
    assert detokenize.ptb(" it 's N years and we do n't know $ N \n") == "it's 1 years and we don't know $1\n"
    assert detokenize.ptb(" no <unk> here \n") == "no <unk> here\n"  # unknown words carry no text to recover


def test_news_detokenizer_by_hand():
    text = "`` It 's fine , '' he said -LRB- twice -RRB- . Team 's 0-0 draw ; really ?"
    assert detokenize.news(text) == "\"It's fine,\" he said (twice). Team's 0-0 draw; really?"


def test_wikitext_detokenizer_on_the_real_file(shared_data):
    raw = (shared_data / "wikitext-2-raw" / "wiki.test.raw").read_text(encoding="utf-8")
    text = detokenize.wikitext(raw)
    for artifact in (" @-@ ", " @,@ ", " @.@ ", " , ", " . ", "= = "):
        assert artifact not in text
    assert text.count("\n") == raw.count("\n")  # line structure (paragraphs, headings) is kept
