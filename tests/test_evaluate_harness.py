"""The tasks that say they follow lm-evaluation-harness (race-high/race-middle, hellaswag) and the one whose prompt
coincides with a harness task (lambada, its lambada_openai), held to the harness itself: every prompt string equal to
the harness's own doc_to_text / doc_to_choice / doc_to_target, and the metrics equal to the harness's on the same
weights (a small random GPT-2 written by transformers, which the harness runs through its HFLM)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from harness_docs import race_doc, task
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt2.evaluate import evaluate
from gpt2.evaluate.scoring import Scorer
from gpt2.evaluate.tasks import hellaswag, lambada, race
from gpt2.model import GPT
from gpt2.tokenizer import Tokenizer

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is a test-only oracle (the test extra)")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, gpt2_tokenizer) -> Path:
    """A random GPT-2 with a 1,024-token window, written by transformers with GPT-2's vocabulary."""
    folder = tmp_path_factory.mktemp("hf-harness")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_positions=1024, n_embd=64, n_layer=2, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0
    )
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    gpt2_tokenizer.save_pretrained(folder)
    return folder


def harness_run(checkpoint: Path, harness_task) -> tuple[dict, list[dict]]:  # noqa: ANN001
    """The harness's metrics and per-document samples for one task on the checkpoint, as `lm_eval --model hf`."""
    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(checkpoint), device="cpu", batch_size=8)
    out = evaluator.evaluate(lm, {"t": harness_task}, log_samples=True)
    return out["results"]["t"], sorted(out["samples"]["t"], key=lambda s: s["doc_id"])


def read_race(shared_data: Path, level: str) -> list[dict]:
    return [json.loads(line) for line in (shared_data / f"race/test_{level}.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("level", ["high", "middle"])
def test_race_prompts_are_the_harness_prompts(shared_data, tmp_path, level):
    records = read_race(shared_data, level)
    # every question of every article, as the last question of a harness document holding the ones before it
    docs = [race_doc(r, i + 1) for r in records for i in range(len(r["questions"]))]
    harness = task("race/race.yaml", docs, tmp_path, "test")
    n, filled = 0, 0
    for record in records:
        article = race.parse_article(record)
        for i, q in enumerate(article.questions):
            doc = docs[n]
            assert race.context(article, i) == harness.doc_to_text(doc), (record["id"], i)
            assert list(q.options) == harness.doc_to_choice(doc) and q.answer == harness.doc_to_target(doc)
            filled += sum(e.question.endswith("  _  .") for e in article.questions[:i])
            n += 1
        last = docs[n - 1]
        assert race.shot(article) == harness.doc_to_text(last) + " " + harness.doc_to_choice(last)[q.answer]
    assert n == {"high": 3498, "middle": 1436}[level]
    assert filled > 500  # earlier fill-in-the-blank questions, the case that once lost its words, are exercised


def test_race_acc_last_is_the_harness_acc(shared_data, checkpoint, tmp_path):
    """The harness's `race` (each article's last question, the high level) on the first 60 articles of the real
    split, those whose prompt and longest option fit the 1,024-token window, against our acc_last: the same
    log-likelihood per option, so the same picks."""
    tok = Tokenizer.from_pretrained(checkpoint)
    model = GPT.from_pretrained(checkpoint)

    def fits(record: dict) -> bool:
        article = race.parse_article(record)
        q = len(article.questions) - 1
        longest = max(len(tok.encode(" " + o)) for o in article.questions[q].options)
        return len(tok.encode(race.context(article, q))) + longest <= 1024

    records = [r for r in read_race(shared_data, "high")[:60] if fits(r)]
    assert len(records) >= 40
    (tmp_path / "race").mkdir()
    (tmp_path / "race" / "test_high.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    ours = evaluate(model, tok, "race-high", data_dir=tmp_path, offline=True)
    assert ours["protocol"]["tasks"]["race-high"]["truncated_contexts"] == 0
    assert "lm-evaluation-harness 0.4.13" in ours["protocol"]["tasks"]["race-high"]["protocol_source"]

    metrics, samples = harness_run(checkpoint, task("race/race.yaml", [race_doc(r) for r in records], tmp_path, "test"))
    articles = [race.parse_article(r) for r in records]
    groups = [
        (tok.encode(race.context(a, len(a.questions) - 1)), [tok.encode(" " + o) for o in a.questions[-1].options])
        for a in articles
    ]
    scores = Scorer(model).score_shared(groups)
    for sample, row in zip(samples, scores, strict=True):
        theirs = [ll for ll, _ in sample["filtered_resps"]]
        assert [s.logprob for s in row] == pytest.approx(theirs, abs=2e-3)
        top, second = sorted(theirs, reverse=True)[:2]
        assert top - second > 1e-2, "a near tie would make the picks depend on float rounding; pick other weights"
    assert ours["tasks"]["race-high"]["acc_last"] == pytest.approx(100 * metrics["acc,none"])


HELLASWAG_TEXT = st.lists(
    st.sampled_from([*"abcXYZ .,'-é[]", " [title]", "[header]", " [step]", "  "]), max_size=12
).map("".join)
HELLASWAG_RECORD = st.fixed_dictionaries(
    {
        "activity_label": HELLASWAG_TEXT,
        "ctx_a": HELLASWAG_TEXT,
        "ctx_b": HELLASWAG_TEXT,
        "endings": st.lists(HELLASWAG_TEXT, min_size=4, max_size=4),
        "label": st.sampled_from(["0", "1", "2", "3"]),
    }
)


@pytest.fixture(scope="module")
def harness_hellaswag(tmp_path_factory):
    return _hellaswag_task(tmp_path_factory.mktemp("hellaswag"), [json.loads(json.dumps(HELLASWAG_EXAMPLE))])


HELLASWAG_EXAMPLE = {
    "activity_label": "Making a cake",
    "ctx_a": "A woman [title] mixes flour.  She",
    "ctx_b": "pours [step] the batter",
    "endings": ["into a pan.", " [title] bakes it", "eats  it", "[header] leaves"],
    "label": "0",
}


@settings(max_examples=60, deadline=None)
@given(records=st.lists(HELLASWAG_RECORD, min_size=1, max_size=20))
def test_hellaswag_strings_are_the_harness_strings(harness_hellaswag, records):
    """The WikiHow markup ([title], other [tags], double spaces) cleaned as the harness's process_docs cleans it."""
    import datasets

    docs = harness_hellaswag.config.process_docs(datasets.Dataset.from_list([HELLASWAG_EXAMPLE, *records]))
    for record, doc in zip([HELLASWAG_EXAMPLE, *records], docs, strict=True):
        context, endings, gold = hellaswag.parse_record(record)
        assert context == harness_hellaswag.doc_to_text(doc)
        assert endings == harness_hellaswag.doc_to_choice(doc) and gold == harness_hellaswag.doc_to_target(doc)


def _hellaswag_task(folder: Path, records: list[dict]):
    return task("hellaswag/hellaswag.yaml", records, folder, "validation")


def llama_cpp_records(shared_data: Path, n: int) -> list[dict]:
    """Official-layout HellaSwag records rebuilt from the first n tasks of llama.cpp's rendering (already cleaned,
    so cleaning them again changes nothing): activity label before the first ": ", the rest as ctx_a."""
    examples = hellaswag.read_llama_cpp(shared_data / "hellaswag/hellaswag_val_full.txt.bz2")[:n]
    return [
        {"activity_label": c.partition(": ")[0], "ctx_a": c.partition(": ")[2], "ctx_b": "", "endings": e, "label": g}
        for c, e, g in examples
    ]


def test_hellaswag_acc_and_acc_norm_are_the_harness_figures(shared_data, checkpoint, tmp_path):
    records = llama_cpp_records(shared_data, 40)
    (tmp_path / "hellaswag").mkdir()
    (tmp_path / "hellaswag" / "hellaswag_val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    tok, model = Tokenizer.from_pretrained(checkpoint), GPT.from_pretrained(checkpoint)
    ours = evaluate(model, tok, "hellaswag", data_dir=tmp_path, offline=True)["tasks"]["hellaswag"]
    metrics, samples = harness_run(checkpoint, _hellaswag_task(tmp_path, records))
    groups = [
        (tok.encode(c), [tok.encode(" " + e) for e in endings])
        for c, endings, _ in map(hellaswag.parse_record, records)
    ]
    for sample, row in zip(samples, Scorer(model).score_shared(groups), strict=True):
        assert [s.logprob for s in row] == pytest.approx([ll for ll, _ in sample["filtered_resps"]], abs=2e-3)
    assert ours["n"] == 40
    assert ours["acc"] == pytest.approx(100 * metrics["acc,none"])
    assert ours["acc_norm"] == pytest.approx(100 * metrics["acc_norm,none"])


def test_lambada_context_and_target_are_the_harness_lambada_openai(shared_data, tmp_path):
    passages = lambada.read_lambada(shared_data / "lambada/lambada_test.jsonl")
    harness = task("lambada/lambada_openai.yaml", [{"text": p} for p in passages], tmp_path, "test")
    docs = harness.dataset["test"]
    assert len(docs) == len(passages) == 5153
    for text, doc in zip(passages, docs, strict=True):
        assert lambada.split_last_word(text) == (harness.doc_to_text(doc), harness.doc_to_target(doc)), text[-60:]
    assert sum("  " in p for p in passages) > 100  # double spaces, where splitting on " " could part ways


def test_lambada_acc_and_ppl_are_the_harness_figures(shared_data, checkpoint, tmp_path):
    passages = lambada.read_lambada(shared_data / "lambada/lambada_test.jsonl")[:40]
    tok, model = Tokenizer.from_pretrained(checkpoint), GPT.from_pretrained(checkpoint)
    ours = evaluate(model, tok, "lambada", data_dir=shared_data, offline=True, limit=40)["tasks"]["lambada"]
    metrics, samples = harness_run(checkpoint, task("lambada/lambada_openai.yaml", [{"text": p} for p in passages],
                                                    tmp_path, "test"))  # fmt: skip
    assert ours["n"] == len(samples) == 40
    assert ours["acc"] == pytest.approx(100 * metrics["acc,none"])
    assert ours["ppl"] == pytest.approx(metrics["perplexity,none"], rel=1e-4)
