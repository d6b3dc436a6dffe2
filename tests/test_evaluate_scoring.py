"""The scoring engine: batched, windowed and shared-prefix log-likelihoods against plain forward passes."""

from __future__ import annotations

import random

import pytest
import torch

from gpt2.errors import GPT2Error
from gpt2.evaluate.scoring import Scorer, windows
from gpt2.model import GPT, GPTConfig

V = 97


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=V, n_positions=32, n_layer=2, n_head=2, n_embd=32)).eval()


def reference(model: GPT, context: list[int], target: list[int]) -> tuple[float, list[bool]]:
    """Summed log-probability of target and per-token argmax hits, from one plain forward pass."""
    seq = torch.tensor([context + target])
    with torch.no_grad():
        logp = model(seq[:, :-1])[0].double().log_softmax(-1)
    rows = range(len(context) - 1, len(context) + len(target) - 1)
    return sum(logp[r, t].item() for r, t in zip(rows, target, strict=True)), [
        int(logp[r].argmax()) == t for r, t in zip(rows, target, strict=True)
    ]


def random_requests(n: int, seed: int, max_len: int = 30) -> list[tuple[list[int], list[int]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        c = rng.randint(1, max_len - 8)
        out.append(([rng.randrange(V) for _ in range(c)], [rng.randrange(V) for _ in range(rng.randint(1, 8))]))
    return out


def test_scores_match_a_plain_forward_pass_for_any_batching(model):
    requests = random_requests(25, seed=1)
    for batch_size in (1, 4, 25):  # padding and batch composition must not change anything
        scores = Scorer(model, batch_size=batch_size).score(requests)
        for (c, t), s in zip(requests, scores, strict=True):
            logprob, hits = reference(model, c, t)
            assert s.logprob == pytest.approx(logprob, abs=1e-4)
            assert s.n_tokens == len(t) and s.greedy == all(hits) and s.last_greedy == hits[-1]
            assert not s.truncated


def greedy_continuation(model: GPT, context: list[int], n: int) -> list[int]:
    out = model.generate(torch.tensor([context]), n, temperature=0)
    return out[0, len(context) :].tolist()


def test_greedy_flags_and_the_first_token_filter(model):
    context = [5, 6, 7]
    target = greedy_continuation(model, context, 3)
    scorer = Scorer(model)
    (s,) = scorer.score([(context, target)])
    assert s.greedy and s.last_greedy and s.greedy_filtered
    with torch.no_grad():
        logits = model(torch.tensor([context]))[0, -1]
    second = int(logits.topk(2).indices[1])
    # the runner-up as first token: not greedy, but greedy once the winner is excluded from the first argmax
    exclude = torch.zeros(V, dtype=torch.bool)
    exclude[target[0]] = True
    (s,) = scorer.score([(context, [second])], exclude_first=exclude)
    assert not s.greedy and s.greedy_filtered
    (s,) = scorer.score([(context, target)], exclude_first=exclude)
    assert s.greedy and not s.greedy_filtered


@pytest.mark.parametrize("n_ctx,stride", [(32, 32), (32, 8), (32, 1), (5, 2)])
def test_windows_score_every_token_once_with_enough_context(n_ctx, stride):
    for c, t in [(1, 100), (40, 3), (10, 10), (1, 1)]:
        spans = list(windows([0] * c, [0] * t, n_ctx, stride))
        scored = [i for _, p, q in spans for i in range(p, q)]
        assert scored == list(range(c, c + t))
        for start, p, q in spans:
            assert 0 <= start < p and q - 1 - start <= n_ctx  # input fits, and the first scored token has context
            if (p, q) != (spans[0][1], spans[0][2]):
                assert p - start >= n_ctx - stride + 1  # later windows: at least n_ctx - stride tokens of context


def test_long_documents_are_windowed_not_truncated(model):
    rng = random.Random(3)
    doc = [rng.randrange(V) for _ in range(150)]  # about 5 windows of the 32-token context
    for stride in (32, 7):
        (s,) = Scorer(model, batch_size=3).score([([0], doc)], stride=stride)
        assert s.n_tokens == len(doc)
        expected = 0.0
        for start, p, q in windows([0], doc, 32, stride):  # each window's tokens from their own forward pass
            seq = [0, *doc]
            logprob, _ = reference(model, seq[start:p], seq[p:q])
            expected += logprob
        assert s.logprob == pytest.approx(expected, abs=1e-3)
    (s,) = Scorer(model).score([(list(range(60)), [1, 2])])
    assert s.truncated and s.n_tokens == 2  # a context longer than the window loses its oldest tokens, visibly


def test_shared_prefix_scores_equal_independent_scores(model):
    rng = random.Random(4)
    groups = []
    for _ in range(9):
        prefix = [rng.randrange(V) for _ in range(rng.randint(1, 20))]
        conts = [[rng.randrange(V) for _ in range(rng.randint(1, 6))] for _ in range(rng.randint(1, 4))]
        groups.append((prefix, conts))
    groups.append(([rng.randrange(V) for _ in range(45)], [[1, 2, 3], [4]]))  # prefix must lose its oldest tokens
    scorer = Scorer(model, batch_size=6)
    shared = scorer.score_shared(groups)
    for (prefix, conts), scores in zip(groups, shared, strict=True):
        longest = max(map(len, conts))
        for cont, s in zip(conts, scores, strict=True):
            kept = prefix[-(32 + 1 - longest) :]
            logprob, hits = reference(model, kept, cont)
            assert s.logprob == pytest.approx(logprob, abs=1e-4)
            assert s.greedy == all(hits) and s.truncated == (len(kept) < len(prefix))


def test_bad_requests_are_clear_errors(model):
    scorer = Scorer(model)
    with pytest.raises(GPT2Error, match="non-empty"):
        scorer.score([([], [1])])
    with pytest.raises(GPT2Error, match="stride"):
        scorer.score([([1], [2])], stride=33)
    with pytest.raises(GPT2Error, match="longer than the context"):
        scorer.score_shared([([1], [list(range(40))])])
    with pytest.raises(GPT2Error, match="batch size"):
        Scorer(model, batch_size=0)
