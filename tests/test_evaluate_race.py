"""RACE: the harness's prompt format, scoring worked out by hand on a two-article file, both data layouts, the
download that joins the official archive's files, and the real test split in ../shared/data."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
import torch

from gpt2.errors import GPT2Error
from gpt2.evaluate import TASKS, evaluate
from gpt2.evaluate.data import DataDir, DataFile, MissingData
from gpt2.evaluate.scoring import Score
from gpt2.evaluate.tasks import Context, race
from gpt2.model import GPT, GPTConfig

ARTICLES = [
    {
        "answers": ["B", "A"],
        "options": [["red", "blue", "green", "black"], ["a dog", "a cat", "a bird", "a fish"]],
        "questions": ["Tom's car is   _  .", "What does Tom have?"],
        "article": "Tom has a blue car and a dog.",
        "id": "high1.txt",
    },
    {
        "answers": ["C"],
        "options": [["Monday", "Tuesday", "Sunday", "Friday"]],
        "questions": ["When does Ann rest?"],
        "article": "Ann rests on Sunday.",
        "id": "high10.txt",
    },
]


@pytest.fixture(scope="module")
def tiny() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(n_positions=128, n_layer=1, n_head=1, n_embd=16)).eval()


@pytest.fixture()
def data(tmp_path) -> Path:
    (tmp_path / "race").mkdir()
    (tmp_path / "race" / "test_high.jsonl").write_text("".join(json.dumps(a) + "\n" for a in ARTICLES))
    return tmp_path


class FakeScorer:
    """Returns the given log-probabilities, one list of four per question in order, and records the groups."""

    def __init__(self, logprobs: list[list[float]]) -> None:
        self.logprobs = logprobs
        self.groups: list = []

    def score_shared(self, groups, *, desc: str = ""):  # noqa: ANN001
        self.groups = list(groups)
        return [[Score(lp, 1, False, False, False, False) for lp in row] for row in self.logprobs[: len(groups)]]


def run(model, tokenizer, data: Path, scorer, **kw) -> tuple:  # noqa: ANN001
    ctx = Context(model, tokenizer, scorer, DataDir(data, offline=True), **kw)
    return TASKS["race-high"].run(ctx), ctx


def test_prompt_is_the_harness_format():
    a = race.parse_article(ARTICLES[0])
    assert race.context(a, 0) == "Article: Tom has a blue car and a dog.\n\nTom's car is   _  ."
    # an earlier fill-in-the-blank question: its blank (the last five characters, " _  .") replaced by the answer
    assert race.context(a, 1) == "Article: Tom has a blue car and a dog.\n\nTom's car is  blue\nWhat does Tom have?"
    assert race.shot(a) == race.context(a, 1) + " a dog"
    b = race.parse_article({**ARTICLES[0], "questions": ["What colour is the car?", "What does Tom have?"]})
    assert race.context(b, 1) == (
        "Article: Tom has a blue car and a dog.\n\nQuestion: What colour is the car?\nAnswer: blue\nWhat does Tom have?"
    )


def test_scoring_worked_out_by_hand(tiny, gpt2_tokenizer, data):
    # question 1 (right: B "blue"): the total picks "red", per character (-1, -0.875, -1.2, -1.2) picks "blue"
    # question 2 (right: A, the last of article 1): both pick "a dog"
    # question 3 (right: C, the last of article 2): both pick "Monday" (per character -0.167 beats -0.333)
    scorer = FakeScorer([[-3, -3.5, -6, -6], [-1, -2, -3, -4], [-1, -5, -2, -5]])
    result, ctx = run(tiny, gpt2_tokenizer, data, scorer)
    assert result.n == 3
    assert result.metrics["acc"] == pytest.approx(100 / 3)
    assert result.metrics["acc_norm"] == pytest.approx(200 / 3)
    assert result.metrics["acc_last"] == pytest.approx(50.0)  # of the two last questions, one right
    prefix, options = scorer.groups[1]
    assert gpt2_tokenizer.decode(prefix) == race.context(race.parse_article(ARTICLES[0]), 1)
    assert [gpt2_tokenizer.decode(o) for o in options] == [" a dog", " a cat", " a bird", " a fish"]
    assert result.protocol["shots"] == 0 and result.protocol["articles"] == 2


def test_few_shot_examples_are_other_articles(tiny, gpt2_tokenizer, data):
    scorer = FakeScorer([[0.0] * 4] * 3)
    result, _ = run(tiny, gpt2_tokenizer, data, scorer, shots=1)
    a, b = (race.parse_article(x) for x in ARTICLES)
    prefixes = [gpt2_tokenizer.decode(p) for p, _ in scorer.groups]
    assert prefixes[0] == race.shot(b) + "\n\n" + race.context(a, 0)  # never its own article
    assert prefixes[2] == race.shot(a) + "\n\n" + race.context(b, 0)
    assert result.protocol["shots_from"].startswith("other articles of the same test split")


def test_both_layouts_and_limit(tiny, gpt2_tokenizer, data, tmp_path):
    folder = tmp_path / "other" / "race" / "RACE" / "test" / "high"
    folder.mkdir(parents=True)
    for a in reversed(ARTICLES):  # written out of order: read in file-name order, as the JSON Lines file is
        (folder / a["id"].removeprefix("high")).write_text(json.dumps(a))
    assert race.read_folder(folder) == race.read_jsonl(data / "race" / "test_high.jsonl")
    r1 = evaluate(tiny, gpt2_tokenizer, "race-high", data_dir=tmp_path / "other", offline=True, limit=2)
    r2 = evaluate(tiny, gpt2_tokenizer, "race-high", data_dir=data, offline=True, limit=2)
    assert r1["tasks"] == r2["tasks"] and r1["tasks"]["race-high"]["n"] == 2
    assert r1["protocol"]["tasks"]["race-high"]["data"]["format"] == "official per-article JSON files"


def test_bad_records_name_their_line(tmp_path):
    bad = dict(ARTICLES[0], answers=["B", "E"])
    (tmp_path / "t.jsonl").write_text(json.dumps(ARTICLES[1]) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(GPT2Error, match=r"t.jsonl:2: expected a RACE article"):
        race.read_jsonl(tmp_path / "t.jsonl")
    (tmp_path / "1.txt").write_text(json.dumps(dict(ARTICLES[1], options=[["a", "b", "c"]])))  # three options
    with pytest.raises(GPT2Error, match=r"1.txt: expected a RACE article"):
        race.read_folder(tmp_path)


def test_download_joins_the_official_files_by_name(tmp_path, monkeypatch, tiny, gpt2_tokenizer):
    monkeypatch.setenv("GPT2_CACHE", str(tmp_path / "cache"))
    archive = tmp_path / "RACE.tar.gz"
    files = {
        "RACE/test/high/2.txt": ARTICLES[1],  # "10.txt" < "2.txt": byte order, as ../shared/data's files are
        "RACE/test/high/10.txt": ARTICLES[0],
        "RACE/test/middle/1.txt": ARTICLES[1],
        "RACE/dev/high/1.txt": ARTICLES[1],
    }
    with tarfile.open(archive, "w:gz") as t:
        for name, record in files.items():
            raw = json.dumps(record).encode()
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            t.addfile(info, io.BytesIO(raw))
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    good = DataFile("race", "test_high.jsonl", archive.as_uri(), digest, join="RACE/test/high")
    monkeypatch.setattr(TASKS["race-high"], "file", good)
    r = evaluate(tiny, gpt2_tokenizer, "race-high", data_dir=tmp_path / "data")
    assert r["tasks"]["race-high"]["n"] == 3
    path = tmp_path / "cache" / "data" / "race" / "test_high.jsonl"
    assert path.read_bytes() == (json.dumps(ARTICLES[0]) + "\n" + json.dumps(ARTICLES[1]) + "\n").encode()
    bad = DataFile("race", "test_middle.jsonl", archive.as_uri(), "0" * 64, join="RACE/test/middle")
    with pytest.raises(MissingData, match="checksum mismatch"):
        DataDir(tmp_path / "data").path(bad)
    assert "the files of RACE/test/middle, joined one per line" in bad.where


def test_the_real_test_split(shared_data, tiny, gpt2_tokenizer):
    high = race.read_jsonl(shared_data / "race/test_high.jsonl")
    assert high[0].id == "high10001.txt" and high[0].questions[0].answer == 3
    assert high[0].questions[0].question == "From Para.1 we learn that lying is very   _  ."
    r = evaluate(tiny, gpt2_tokenizer, "race-high", data_dir=shared_data, offline=True, limit=5)
    protocol = r["protocol"]["tasks"]["race-high"]
    assert r["tasks"]["race-high"]["n"] == 5 and protocol["data"]["known_copy"] is True
    assert protocol["truncated_contexts"] == 5  # the 128-token toy window cannot hold an article: cut, and said so
