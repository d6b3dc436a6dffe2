"""`lambada`, `wikitext2`, `race-high` and `writingprompts` against an independent computation: Hugging Face's
GPT2LMHeadModel and GPT-2 tokenizer on the same random-weight checkpoint, with the protocol re-implemented here from
its definition (RACE's prompt is lm-evaluation-harness's own function)."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from harness_docs import race_doc

from gpt2.evaluate import detokenize, evaluate
from gpt2.evaluate.tasks import writingprompts
from gpt2.model import GPT
from gpt2.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")
N_CTX = 256


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, gpt2_tokenizer):
    """A small random GPT-2 written by transformers (with GPT-2's vocabulary), and HF's model and tokenizer."""
    folder = tmp_path_factory.mktemp("hf-tiny")
    return folder, *tiny_checkpoint(folder, gpt2_tokenizer, N_CTX)


def hf_logprobs(hf, ids: list[int]) -> torch.Tensor:
    """log P(ids[i+1] | ids[:i+1]) as a row per position: (len(ids) - 1, vocab), float64."""
    with torch.no_grad():
        return hf(torch.tensor([ids[:-1]])).logits[0].double().log_softmax(-1)


def test_lambada_matches_transformers(checkpoint, shared_data):
    folder, hf, hf_tok = checkpoint
    limit = 24
    ours = evaluate(
        GPT.from_pretrained(folder), Tokenizer.from_pretrained(folder), "lambada", data_dir=shared_data,
        offline=True, limit=limit,
    )  # fmt: skip
    assert ours["protocol"]["tasks"]["lambada"]["truncated_contexts"] == 0
    lines = (shared_data / "lambada" / "lambada_test.jsonl").read_text().splitlines()[:limit]
    total, hits, last_hits = [], [], []
    for line in lines:
        text = json.loads(line)["text"]
        context, word = text.rsplit(" ", 1)
        c, t = hf_tok(context).input_ids, hf_tok(" " + word).input_ids
        logp = hf_logprobs(hf, c + t)[len(c) - 1 :]
        total.append(sum(logp[i, tok].item() for i, tok in enumerate(t)))
        argmax = logp.argmax(-1).tolist()
        hits.append(argmax == t)
        last_hits.append(argmax[-1] == t[-1])
    r = ours["tasks"]["lambada"]
    assert r["n"] == limit
    assert r["ppl"] == pytest.approx(math.exp(-sum(total) / limit), rel=1e-4)
    assert r["acc"] == pytest.approx(100 * sum(hits) / limit)
    assert r["acc_last_token"] == pytest.approx(100 * sum(last_hits) / limit)


@pytest.mark.parametrize("stride", [N_CTX, 100])
def test_wikitext2_perplexity_matches_transformers(checkpoint, shared_data, stride):
    folder, hf, hf_tok = checkpoint
    ours = evaluate(
        GPT.from_pretrained(folder), Tokenizer.from_pretrained(folder), "wikitext2", data_dir=shared_data,
        offline=True, limit=1, stride=stride,
    )  # fmt: skip
    # the first article: the file's start (a blank line, then its title line) up to the next title line
    raw = (shared_data / "wikitext-2-raw" / "wiki.test.raw").read_text(encoding="utf-8")
    titles = [m.start() for m in re.finditer(r"(?m)^ = [^=].* = $", raw)]
    article = raw[: titles[1]]
    ids = [hf_tok.eos_token_id, *hf_tok(detokenize.wikitext(article)).input_ids]
    assert len(ids) > 3 * N_CTX  # several windows

    # the documented windows: the first scores ids[1 : N_CTX + 1]; each later one the next `stride` tokens,
    # reading the N_CTX tokens before them
    def nll_of(start: int, lo: int, hi: int) -> float:  # tokens ids[lo:hi], reading ids[start : hi - 1]
        logp = hf_logprobs(hf, ids[start:hi])
        return -logp[torch.arange(lo - start - 1, hi - start - 1), torch.tensor(ids[lo:hi])].sum().item()

    end = N_CTX + 1
    nll = nll_of(0, 1, end)
    while end < len(ids):
        new_end = min(len(ids), end + stride)
        nll += nll_of(new_end - 1 - N_CTX, end, new_end)
        end = new_end
    r = ours["tasks"]["wikitext2"]
    assert r["n"] == 1
    assert r["token_ppl"] == pytest.approx(math.exp(nll / (len(ids) - 1)), rel=1e-4)
    # per token of the original data set: its words and one end-of-line token per line (openai/gpt-2#78)
    assert r["word_ppl"] == pytest.approx(math.exp(nll / (len(article.split()) + article.count("\n"))), rel=1e-4)
    assert ours["protocol"]["tasks"]["wikitext2"]["windows"] > 3


def tiny_checkpoint(folder, gpt2_tokenizer, n_positions: int):
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_positions=n_positions, n_embd=64, n_layer=2, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0
    )
    hf = transformers.GPT2LMHeadModel(config).eval()
    hf.save_pretrained(folder)
    gpt2_tokenizer.save_pretrained(folder)
    return hf, transformers.GPT2TokenizerFast.from_pretrained(folder)  # reads the vocab.json + merges.txt just written


def race_prompt(record: dict, i: int) -> str:
    """lm-evaluation-harness's own RACE prompt (preprocess_race.doc_to_text) for question i of an article."""
    preprocess_race = pytest.importorskip("lm_eval.tasks.race.preprocess_race")
    return preprocess_race.doc_to_text(race_doc(record, i + 1))


def hf_continuations(hf, context: list[int], continuations: list[list[int]]) -> list[float]:
    """log P(continuation | context) of each, from HF's transformer and lm_head: the continuations in one
    right-padded batch (causal, so padding after a sequence cannot change it), only their positions projected."""
    longest = max(len(t) for t in continuations)
    ids = torch.zeros(len(continuations), len(context) + longest, dtype=torch.long)
    for row, t in enumerate(continuations):
        ids[row, : len(context) + len(t)] = torch.tensor(context + t)
    with torch.no_grad():
        hidden = hf.transformer(ids[:, :-1]).last_hidden_state
        totals = []
        for row, t in enumerate(continuations):
            at = torch.arange(len(context) - 1, len(context) - 1 + len(t))
            logp = hf.lm_head(hidden[row, at]).double().log_softmax(-1)
            totals.append(logp[torch.arange(len(t)), torch.tensor(t)].sum().item())
    return totals


def test_race_matches_transformers(tmp_path_factory, gpt2_tokenizer, shared_data):
    folder = tmp_path_factory.mktemp("hf-race")
    hf, hf_tok = tiny_checkpoint(folder, gpt2_tokenizer, 1024)  # a window that holds a whole article
    limit = 6  # the first article's 5 questions (the 5th its last), then the first of the next
    ours = evaluate(
        GPT.from_pretrained(folder), Tokenizer.from_pretrained(folder), "race-high", data_dir=shared_data,
        offline=True, limit=limit,
    )  # fmt: skip
    assert ours["protocol"]["tasks"]["race-high"]["truncated_contexts"] == 0
    records = [json.loads(line) for line in (shared_data / "race/test_high.jsonl").read_text().splitlines()[:2]]
    acc, acc_norm, acc_last = [], [], []
    for record in records:
        for i in range(len(record["questions"])):
            if len(acc) == limit:
                break
            c = hf_tok(race_prompt(record, i)).input_ids
            totals = hf_continuations(hf, c, [hf_tok(" " + o).input_ids for o in record["options"][i]])
            gold = "ABCD".index(record["answers"][i])
            acc.append(max(range(4), key=lambda j: totals[j]) == gold)
            acc_norm.append(max(range(4), key=lambda j: totals[j] / len(record["options"][i][j])) == gold)
            if i == len(record["questions"]) - 1:
                acc_last.append(acc[-1])
    r = ours["tasks"]["race-high"]
    assert r["n"] == limit and len(acc_last) == 1
    assert r["acc"] == pytest.approx(100 * sum(acc) / limit)
    assert r["acc_norm"] == pytest.approx(100 * sum(acc_norm) / limit)
    assert r["acc_last"] == pytest.approx(100 * sum(acc_last))


def test_writingprompts_perplexity_matches_transformers(checkpoint, tmp_path):
    folder, hf, hf_tok = checkpoint
    prompts = ["[ WP ] A dragon learns to read .", "[ EU ] The moon is n't real ."]
    stories = [
        "`` Hello , '' said the dragon . <newline> <newline> It did n't know how . It read a book about books .",
        "The moon ( really ) was cheese ! <newline> Everyone knew it , and nobody said it .",
    ]
    (tmp_path / "writingprompts").mkdir()
    (tmp_path / "writingprompts/test.wp_source").write_text("".join(p + "\n" for p in prompts))
    (tmp_path / "writingprompts/test.wp_target").write_text("".join(s + "\n" for s in stories))
    ours = evaluate(
        GPT.from_pretrained(folder), Tokenizer.from_pretrained(folder), "writingprompts", data_dir=tmp_path,
        offline=True,
    )  # fmt: skip
    nll, tokens, words = 0.0, 0, 0
    for prompt, story in zip(prompts, stories, strict=True):
        # context: <|endoftext|> + prompt + blank line; target: the story, then <|endoftext|> (the end of story)
        c = [hf_tok.eos_token_id, *hf_tok(writingprompts.detok(prompt) + "\n\n").input_ids]
        t = [*hf_tok(writingprompts.detok(story)).input_ids, hf_tok.eos_token_id]
        logp = hf_logprobs(hf, c + t)[len(c) - 1 :]
        nll -= sum(logp[j, tok].item() for j, tok in enumerate(t))
        tokens += len(t)
        words += len(story.split()) + 1  # the file's tokens, <newline> markers included, and the end of story
    r = ours["tasks"]["writingprompts"]
    assert r["n"] == 2 and ours["protocol"]["tasks"]["writingprompts"]["words"] == words == 43
    assert r["token_ppl"] == pytest.approx(math.exp(nll / tokens), rel=1e-4)
    assert r["word_ppl"] == pytest.approx(math.exp(nll / words), rel=1e-4)
