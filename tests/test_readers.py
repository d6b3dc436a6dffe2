"""One reader per data set: the overlap analysis (gpt2.analysis.overlap.units_of) splits every data set the
evaluation reads into the evaluation's examples, the same number with the same texts, on the real files in
../shared/data and on the official formats that folder lacks (CBT, CoQA, 1BW, HellaSwag's JSON Lines)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from test_evaluate_tasks import CBT_EXAMPLE, COQA, HELLASWAG

from gpt2.analysis.bloom import normalize
from gpt2.analysis.overlap import units_of
from gpt2.evaluate.data import lines
from gpt2.evaluate.tasks import cbt, cnn_dm, coqa, hellaswag, lambada, nq, perplexity, race, winograd, wmt


def lm_documents(corpus: str) -> Callable[[Path], list[str]]:
    """The documents a language-modelling task scores."""
    return lambda path: perplexity.CORPORA[corpus].documents(path, None)


def ptb_sentences(path: Path) -> list[str]:
    # the evaluation scores PTB as one stream and counts its sentences, the stream's lines
    (stream,) = lm_documents("ptb")(path)
    return lines(stream)


def hellaswag_tasks(examples: list[hellaswag.Example]) -> list[str]:
    return ["\n".join([context, *endings]) for context, endings, _ in examples]


def hellaswag_llama_cpp(path: Path) -> list[str]:
    return hellaswag_tasks(hellaswag.read_llama_cpp(path))


def nq_questions(path: Path) -> list[str]:
    return ["\n".join([question, *answers]) for question, answers in nq.read_nq(path)]


def cnn_dm_articles(path: Path) -> list[str]:
    return [f"{article}\n{highlights}" for article, highlights in cnn_dm.read_summeval(path, None)]


def race_articles(path: Path) -> list[str]:
    return [
        "\n".join([a.text, *(line for q in a.questions for line in (q.question, *q.options))])
        for a in race.read_jsonl(path)
    ]


def wsc_sentences(path: Path) -> list[str]:
    schemas = winograd.read_wsc(path)[: winograd.WSC273]
    return [(f"{s.before} " if s.before else "") + s.pronoun + winograd.continuation(s) for s in schemas]


WMT_FILES = [f"wmt14-en-fr/newstest2014-fren-{s}.sgm" for s in ("src.en", "ref.fr", "src.fr", "ref.en")] + [
    f"wmt14-en-de/newstest2014-deen-{s}.sgm" for s in ("src.en", "ref.de", "src.de", "ref.en")
]
# (file, kind, examples, the evaluation's examples as texts): every shared file of a data set both read
SHARED = [
    ("lambada/lambada_test.jsonl", "lambada", 5153, lambada.read_lambada),
    ("wikitext-2-raw/wiki.test.raw", "wikitext", 60, lm_documents("wikitext2")),
    ("wikitext-2/wiki.test.tokens", "wikitext", 60, lm_documents("wikitext2")),
    ("wikitext-2/wiki.valid.tokens", "wikitext", 60, lm_documents("wikitext2")),
    ("ptb/ptb.test.txt", "ptb", 3761, ptb_sentences),
    ("ptb/ptb.valid.txt", "ptb", 3370, ptb_sentences),
    *((name, "wmt", 3003, wmt.read_sgm) for name in WMT_FILES),
    ("wmt14-en-fr/newstest2013-src.en.sgm", "wmt", 3000, wmt.read_sgm),  # the few-shot pools
    ("wmt14-en-de/newstest2013-ref.de.sgm", "wmt", 3000, wmt.read_sgm),
    ("hellaswag/hellaswag_val_full.txt.bz2", "hellaswag", 10042, hellaswag_llama_cpp),
    ("nq_open/NQ-open.dev.jsonl", "nq", 3610, nq_questions),
    ("race/test_high.jsonl", "race", 1045, race_articles),
    ("race/test_middle.jsonl", "race", 362, race_articles),
    ("cnn_dm/summeval_cnndm_test100.jsonl", "cnn_dm", 100, cnn_dm_articles),
    ("wsc273/WSCollection.xml", "winograd", 273, wsc_sentences),
]


@pytest.mark.parametrize(("name", "kind", "count", "examples"), SHARED, ids=[row[0] for row in SHARED])
def test_overlap_and_evaluation_split_each_shared_data_set_alike(
    shared_data: Path, name: str, kind: str, count: int, examples: Callable[[Path], list[str]]
) -> None:
    found, units = units_of(shared_data / name)
    assert found == kind
    assert [u.text for u in units] == examples(shared_data / name)
    assert len(units) == count


def test_both_lambada_files_hold_the_same_passages(shared_data: Path) -> None:
    _, test = units_of(shared_data / "lambada/lambada_test.jsonl")
    _, openai = units_of(shared_data / "lambada/lambada_openai.jsonl")  # {"context", "continuation"}
    assert openai == test


def test_wikitext_articles_start_only_at_titles_between_blank_lines(shared_data: Path) -> None:
    # WikiText-2 has 60 test and 60 validation articles (Merity et al. 2016, Table 1)
    for name in ("wikitext-2-raw/wiki.test.raw", "wikitext-2/wiki.test.tokens"):
        text = (shared_data / name).read_text("utf-8")
        _, units = units_of(shared_data / name)
        assert "".join(u.text for u in units) == text
        assert units[0].name.startswith("Robert ")
        # two lines of a filter article's formulas have a title's shape; they stay inside it
        [inside] = [u for u in units if " = 1 henry and " in u.text or " = 1 <unk> and <unk> C = " in u.text]
        assert " = 1 rad / s and " in inside.text or " = 1 <unk> / s and " in inside.text
    assert perplexity.wikitext_articles(" = A = \n x \n = B = \n y \n") == [" = A = \n x \n = B = \n y \n"]
    assert perplexity.wikitext_articles(" = A = \n \n x \n \n = B = \n \n y \n") == [
        " = A = \n \n x \n \n",
        " = B = \n \n y \n",
    ]
    assert perplexity.wikitext_title(" \n = B = \n \n y \n") == "B" and perplexity.wikitext_title(" x \n") == ""


def test_the_official_formats_the_shared_folder_lacks(tmp_path: Path) -> None:
    (tmp_path / "cbtest_NE_valid_2000ex.txt").write_text(CBT_EXAMPLE * 2, "utf-8")
    kind, units = units_of(tmp_path / "cbtest_NE_valid_2000ex.txt")
    examples = cbt.read_cbt(tmp_path / "cbtest_NE_valid_2000ex.txt")
    assert kind == "cbt" and len(units) == len(examples) == 2
    assert [u.text for u in units] == ["\n".join([*ex.sentences, ex.query.replace("XXXXX", "dog")]) for ex in examples]

    (tmp_path / "coqa-dev-v1.0.json").write_text(json.dumps(COQA), "utf-8")
    kind, units = units_of(tmp_path / "coqa-dev-v1.0.json")
    (story,) = coqa.read_coqa(tmp_path / "coqa-dev-v1.0.json")
    assert kind == "coqa" and [(u.name, u.text) for u in units] == [(COQA["data"][0]["id"], coqa.transcript(story))]

    sentences = ["The company said it 's fine .", "Shares rose 5 % .", "", "He left ."]
    (tmp_path / "news.en.heldout-00000-of-00050").write_text("\n".join(sentences) + "\n", "utf-8")
    kind, units = units_of(tmp_path / "news.en.heldout-00000-of-00050")
    assert kind == "1bw" and [u.text for u in units] == lm_documents("1bw")(tmp_path / "news.en.heldout-00000-of-00050")
    assert len(units) == 3

    (tmp_path / "hellaswag_val.jsonl").write_text(json.dumps(HELLASWAG) + "\n", "utf-8")
    kind, units = units_of(tmp_path / "hellaswag_val.jsonl")
    assert kind == "hellaswag" and [u.text for u in units] == hellaswag_tasks(
        hellaswag.read_official(tmp_path / "hellaswag_val.jsonl")
    )
    # the same task in llama.cpp's rendering has the same 8-grams (it keeps "he" lower-case)
    context, label = "Roof shingle removal: A man is sitting on a roof. he", str(HELLASWAG["label"])
    (tmp_path / "hellaswag_val_full.txt").write_text("\n".join([context, label, *HELLASWAG["endings"]]) + "\n")
    _, rendered = units_of(tmp_path / "hellaswag_val_full.txt")
    assert [normalize(u.text) for u in rendered] == [normalize(u.text) for u in units]
