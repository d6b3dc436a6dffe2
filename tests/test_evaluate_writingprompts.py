"""WritingPrompts: small files in the official format (test.wp_source / test.wp_target), the de-tokenizer and the
original-token count, scoring worked out by hand, the samples written beside the results, and the download."""

from __future__ import annotations

import io
import math
import tarfile
from pathlib import Path

import pytest
import torch

from gpt2.errors import GPT2Error
from gpt2.evaluate import TASKS, evaluate
from gpt2.evaluate.data import DataDir, DataFile
from gpt2.evaluate.scoring import Score, Scorer
from gpt2.evaluate.tasks import Context, writingprompts
from gpt2.model import GPT, GPTConfig

PROMPTS = ["[ WP ] A dragon learns to read .", "[ WP ] A dragon learns to read .", "[ EU ] The moon is n't real ."]
STORIES = [
    "`` Hello , '' said the dragon . <newline> <newline> It did n't know how .",  # 16 tokens + end of story
    "She read a book .",  # 5 + 1
    "The moon ( really ) was cheese !",  # 8 + 1
]


@pytest.fixture(scope="module")
def tiny() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(n_positions=128, n_layer=1, n_head=1, n_embd=16)).eval()


def write(folder: Path, prompts: list[str] = PROMPTS, stories: list[str] = STORIES) -> Path:
    (folder / "writingprompts").mkdir(parents=True, exist_ok=True)
    (folder / "writingprompts" / "test.wp_source").write_text("".join(p + "\n" for p in prompts))
    (folder / "writingprompts" / "test.wp_target").write_text("".join(s + "\n" for s in stories))
    return folder


def test_detokenizer_and_original_tokens():
    assert writingprompts.detok(STORIES[0]) == '"Hello," said the dragon.\n\nIt didn\'t know how.'
    assert writingprompts.detok(STORIES[2]) == "The moon (really) was cheese!"
    assert writingprompts.detok(PROMPTS[2]) == "[EU] The moon isn't real."
    assert [writingprompts.original_tokens(s) for s in STORIES] == [17, 6, 9]


class FakeScorer:
    def __init__(self) -> None:
        self.requests: list = []

    def score(self, requests, *, stride=None, desc=""):  # noqa: ANN001
        self.requests = list(requests)
        return [Score(-float(i + 1), 10, False, False, False, False) for i in range(len(requests))]


def test_scoring_worked_out_by_hand(tmp_path, tiny, gpt2_tokenizer):
    scorer = FakeScorer()
    ctx = Context(tiny, gpt2_tokenizer, scorer, DataDir(write(tmp_path), offline=True))
    r = TASKS["writingprompts"].run(ctx)
    # NLL 1 + 2 + 3 = 6 nats over 17 + 6 + 9 = 32 original tokens, and over 3 x 10 BPE tokens
    assert r.n == 3 and r.protocol["words"] == 32 and r.protocol["tokens"] == 30
    assert r.metrics["word_ppl"] == pytest.approx(math.exp(6 / 32))
    assert r.metrics["token_ppl"] == pytest.approx(math.exp(6 / 30))
    eot = gpt2_tokenizer.eot_id
    context, target = scorer.requests[2]
    assert context == [eot, *gpt2_tokenizer.encode("[EU] The moon isn't real.\n\n")]
    assert target == [*gpt2_tokenizer.encode("The moon (really) was cheese!"), eot]  # the end of story is predicted
    assert "samples" not in r.protocol


def test_runs_on_a_model_and_limit(tmp_path, tiny, gpt2_tokenizer):
    r = evaluate(tiny, gpt2_tokenizer, "writingprompts", data_dir=write(tmp_path), offline=True, limit=2)
    t, p = r["tasks"]["writingprompts"], r["protocol"]["tasks"]["writingprompts"]
    assert t["n"] == 2 and p["words"] == 23 and t["word_ppl"] > 1 and t["token_ppl"] > 1
    assert p["data"]["stories_in_file"] == 3 and p["data"]["whole_test_split"] is False


def test_samples_are_written_for_reading(tmp_path, tiny, gpt2_tokenizer, monkeypatch):
    seen: dict = {}

    def fake(ctx, prompts, max_new_tokens, **kw):  # noqa: ANN001, ANN003
        seen.update(prompts=list(prompts), max_new=max_new_tokens, **kw)
        return [f" Story {i}.\n\nThe end." for i in range(len(prompts))]

    monkeypatch.setattr(writingprompts, "generate_all", fake)
    out = tmp_path / "results.writingprompts.md"
    options = {"samples": 5, "samples_path": out}
    ctx = Context(tiny, gpt2_tokenizer, Scorer(tiny), DataDir(write(tmp_path), offline=True), options=options)
    r = TASKS["writingprompts"].run(ctx)
    # the distinct prompts, in file order; top-k 40 sampling at temperature 1, to <|endoftext|>
    assert seen["prompts"] == [
        "<|endoftext|>[WP] A dragon learns to read.\n\n",
        "<|endoftext|>[EU] The moon isn't real.\n\n",
    ]
    assert seen["top_k"] == 40 and seen["temperature"] == 1.0 and seen["stop"] == ()
    assert seen["max_new"] == 128 - len(gpt2_tokenizer.encode("[WP] A dragon learns to read.\n\n")) - 1
    assert r.protocol["samples"][1] == {"prompt": "[EU] The moon isn't real.", "story": "Story 1.\n\nThe end."}
    text = out.read_text()
    assert "## 2. [EU] The moon isn't real.\n\nStory 1.\n\nThe end.\n" in text and r.protocol["samples_file"] == str(
        out
    )


def test_real_samples_from_a_model(tmp_path, tiny, gpt2_tokenizer):
    ctx = Context(
        tiny, gpt2_tokenizer, Scorer(tiny), DataDir(write(tmp_path), offline=True), options={"samples": 1}, seed=3
    )
    a = TASKS["writingprompts"].run(ctx).protocol["samples"]
    b = TASKS["writingprompts"].run(ctx).protocol["samples"]
    assert a == b and len(a) == 1 and a[0]["story"]  # seeded: the same story twice


def test_unpaired_files_are_an_error(tmp_path, tiny, gpt2_tokenizer):
    write(tmp_path, PROMPTS[:2], STORIES)
    with pytest.raises(GPT2Error, match="has 2 prompts but .* has 3 stories"):
        evaluate(tiny, gpt2_tokenizer, "writingprompts", data_dir=tmp_path, offline=True)


def test_download_extracts_the_two_members(tmp_path, monkeypatch, tiny, gpt2_tokenizer):
    monkeypatch.setenv("GPT2_CACHE", str(tmp_path / "cache"))
    archive = tmp_path / "writingPrompts.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        for name, rows in (("test.wp_source", PROMPTS), ("test.wp_target", STORIES), ("valid.wp_source", ["x"])):
            raw = "".join(r + "\n" for r in rows).encode()
            info = tarfile.TarInfo(f"writingPrompts/{name}")
            info.size = len(raw)
            t.addfile(info, io.BytesIO(raw))
    for const, member in (("SOURCE", "test.wp_source"), ("TARGET", "test.wp_target")):
        f = DataFile("writingprompts", member, archive.as_uri(), None, member=f"writingPrompts/{member}")
        monkeypatch.setattr(writingprompts, const, f)
    r = evaluate(tiny, gpt2_tokenizer, "writingprompts", data_dir=tmp_path / "data")
    assert r["tasks"]["writingprompts"]["n"] == 3
    assert (tmp_path / "cache/data/writingprompts/test.wp_target").read_text().splitlines() == STORIES


def test_the_command_writes_samples_beside_the_results(tmp_path, tiny, gpt2_tokenizer, capsys):
    from gpt2.cli import main

    tiny.save_pretrained(tmp_path / "model", tokenizer=gpt2_tokenizer)
    out = tmp_path / "results.json"
    data = str(write(tmp_path / "data"))
    main(["eval", "--model", str(tmp_path / "model"), "--tasks", "writingprompts", "--data-dir", data, "--offline",
          "--samples", "2", "--output", str(out), "--no-progress"])  # fmt: skip
    stories = (tmp_path / "results.writingprompts.md").read_text()
    assert stories.count("## ") == 2 and "[WP] A dragon learns to read." in stories
    assert capsys.readouterr().out.startswith("| ")
