"""`lambada` and `wikitext2` against an independent computation: Hugging Face's GPT2LMHeadModel and GPT-2
tokenizer on the same random-weight checkpoint, with the protocol re-implemented here from its definition."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from gpt2.evaluate import detokenize, evaluate
from gpt2.model import GPT
from gpt2.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")
N_CTX = 256


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, gpt2_tokenizer):
    """A small random GPT-2 written by transformers (with GPT-2's vocabulary), and HF's model and tokenizer."""
    folder = tmp_path_factory.mktemp("hf-tiny")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_positions=N_CTX, n_embd=64, n_layer=2, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0
    )
    hf = transformers.GPT2LMHeadModel(config).eval()
    hf.save_pretrained(folder)
    gpt2_tokenizer.save_pretrained(folder)
    hf_tok = transformers.GPT2TokenizerFast.from_pretrained(folder)  # reads the vocab.json + merges.txt just written
    return folder, hf, hf_tok


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
