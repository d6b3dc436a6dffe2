"""The server's decode loop (gpt2.serve.batcher.Engine) on its own: one failing row, prefix caching, chunked prefill."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from gpt2 import GPT, GPTConfig, generate
from gpt2.generate import SamplingOptions
from gpt2.quantize import quantize_int8
from gpt2.serve import batcher
from gpt2.serve.batcher import Engine, Event, Request
from gpt2.serve.prefix import BLOCK, PrefixCache


@pytest.fixture(scope="module", params=["float32", "int8"])
def model(request) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50257, n_positions=256, n_layer=2, n_head=2, n_embd=32)).eval()
    return quantize_int8(model) if request.param == "int8" else model


class Collector:
    """The events of several requests, by name, and a wait for all of them to finish."""

    def __init__(self) -> None:
        self.events: dict[str, list[Event]] = {}
        self.finished = threading.Semaphore(0)

    def emit(self, name: str):
        self.events[name] = []

        def emit(event: Event) -> None:
            self.events[name].append(event)
            if event.finish_reason:
                self.finished.release()

        return emit

    def wait(self) -> None:
        assert all(self.finished.acquire(timeout=120) for _ in self.events), "a request never finished"

    def text(self, name: str) -> str:
        return "".join(e.text for e in self.events[name])

    def finish(self, name: str) -> tuple[str | None, str | None]:
        last = self.events[name][-1]
        return last.finish_reason, last.error


def greedy(model: GPT, tokenizer, prompt: str, n: int) -> str:
    return generate(model, tokenizer, prompt, n, temperature=0)[0]


def test_a_failure_in_one_row_ends_that_row_alone(model, gpt2_tokenizer, monkeypatch) -> None:
    """Failures injected into single rows, while admitting (a seed torch refuses), at the first token (a logit bias
    outside the vocabulary) and mid-decoding (sampling that raises at the row's third token): those rows end with an
    error, and every other row in flight decodes to its greedy text."""
    real = batcher.sample_next
    draws = {"n": 0}

    def failing_sample_next(logits, options, generator=None):
        if options.seed == 666:
            draws["n"] += 1
            if draws["n"] == 3:
                raise RuntimeError("injected failure")
        return real(logits, options, generator)

    monkeypatch.setattr(batcher, "sample_next", failing_sample_next)
    engine = Engine(model, gpt2_tokenizer, max_batch=8)
    engine.start()
    got = Collector()
    prompts = {f"good{i}": f"Row {i} is fine" + " and" * i for i in range(5)}
    greedy_options = SamplingOptions(temperature=0)
    try:
        for name in ("good0", "good1"):
            engine.submit(Request(gpt2_tokenizer.encode(prompts[name]), 40, got.emit(name), greedy_options))
        bad = [
            ("seed", Request([464], 10, got.emit("seed"), SamplingOptions(seed=2**70))),
            ("bias", Request([464], 10, got.emit("bias"), greedy_options, logit_bias={10**6: 1.0})),
            ("draw", Request([464], 10, got.emit("draw"), SamplingOptions(seed=666))),
        ]
        for _, request in bad:
            engine.submit(request)
        for name in ("good2", "good3", "good4"):
            engine.submit(Request(gpt2_tokenizer.encode(prompts[name]), 40, got.emit(name), greedy_options))
        got.wait()
    finally:
        engine.stop()
    for name, prompt in prompts.items():
        assert got.finish(name)[0] in ("length", "stop") and got.text(name) == greedy(model, gpt2_tokenizer, prompt, 40)
    for name, _ in bad:
        reason, error = got.finish(name)
        assert reason == "error" and error, name
    assert "injected failure" in got.finish("draw")[1]
    assert sum(len(e.tokens) for e in got.events["draw"]) == 2  # its first two tokens came before the failure


def run(engine: Engine, requests: dict[str, tuple[list[int], int, dict]], gap: float = 0.0) -> Collector:
    """Submit the requests (name: prompt ids, max_tokens, Request keywords) in order and wait for all of them."""
    got = Collector()
    for name, (prompt, max_tokens, kw) in requests.items():
        kw = {"options": SamplingOptions(temperature=0), **kw}
        engine.submit(Request(prompt, max_tokens, got.emit(name), **kw))
        if gap:
            time.sleep(gap)
    got.wait()
    return got


def prompt_logprobs(model: GPT, ids: list[int]) -> list[float]:
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids]))[0].float(), dim=-1)
    return [float(logp[i, ids[i + 1]]) for i in range(len(ids) - 1)]


def test_prompts_that_begin_alike_reuse_the_cached_prefix_and_decode_as_without_it(model, gpt2_tokenizer) -> None:
    shared = gpt2_tokenizer.encode("A long preamble that several requests share, as few-shot prompts do. " * 3)
    assert len(shared) >= 3 * BLOCK
    endings = [gpt2_tokenizer.encode(f" Ending number {i} goes here") for i in range(4)]
    requests = {}
    for i, ending in enumerate(endings):
        requests[f"echo{i}"] = (shared + ending, 0, {"logprobs": 1, "echo_logprobs": True})
        requests[f"text{i}"] = (shared + ending, 12, {})
    requests["again"] = (shared + endings[0], 12, {})  # the whole prompt cached: all but its last token reused
    results = {}
    for size in (0, 64 * 2**20):
        engine = Engine(model, gpt2_tokenizer, max_batch=4, prefix_cache_bytes=size)
        engine.start()
        try:
            results[size] = run(engine, requests, gap=0.02)
        finally:
            engine.stop()
        hits = engine.metrics.registry.get_sample_value("gpt2_prefix_cache_hit_tokens_total")
        assert (hits == 0) if size == 0 else hits >= 8 * len(shared) // 2
    plain, cached = results[0], results[64 * 2**20]
    for name, (prompt, max_tokens, _) in requests.items():
        if name.startswith("echo"):
            [event] = [e for e in cached.events[name] if e.prompt]
            got = [t.logprob for t in event.tokens]
            [event] = [e for e in plain.events[name] if e.prompt]
            assert got[0] is None and got[1:] == pytest.approx([t.logprob for t in event.tokens][1:], abs=1e-5)
            assert got[1:] == pytest.approx(prompt_logprobs(model, prompt), abs=1e-4)
            assert [t.id for t in event.tokens] == prompt
        else:
            text = greedy(model, gpt2_tokenizer, gpt2_tokenizer.decode(prompt), max_tokens)
            assert cached.text(name) == plain.text(name) == text, name


def test_the_prefix_cache_reuses_blocks_and_shared_first_tokens_and_evicts_the_least_recently_used() -> None:
    n_layer, n_head, head_dim = 2, 2, 4
    per_token = 2 * n_layer * n_head * head_dim * 4
    cache = PrefixCache(3 * BLOCK * per_token, per_token)  # room for three blocks

    def kv(length: int, value: float) -> torch.Tensor:
        return torch.full((n_layer, n_head, length, head_dim), value)

    def held(prompt: list[int], scored: bool = False) -> tuple[int, int]:
        blocks, tokens = cache.match(prompt, scored)
        return len(blocks), tokens

    a = list(range(2 * BLOCK + 5))
    cache.insert(a, kv(len(a), 1.0), kv(len(a), 1.0), None, len(a))
    assert held(a) == (2, 2 * BLOCK) and held(a[: BLOCK + 3]) == (2, BLOCK + 3) and held(a[:5]) == (1, 5)
    assert held([*a[: BLOCK + 3], -1, *a[BLOCK + 4 :]]) == (2, BLOCK + 3)  # up to the first token that differs
    assert held(a, scored=True) == (0, 0)  # not scored: no log-probabilities to reuse
    assert held([7, *a[1:]]) == (0, 0)  # the same tokens after a different first token are another prefix
    b = [99] * BLOCK + a[BLOCK:]
    cache.insert(b, kv(len(b), 2.0), kv(len(b), 2.0), None, len(b))  # two more blocks: a's second one goes
    assert held(b) == (2, 2 * BLOCK) and held(a) == (1, BLOCK)
    assert float(cache.match(b)[0][1].k[0, 0, 0, 0]) == 2.0 and float(cache.match(a)[0][0].k[0, 0, 0, 0]) == 1.0
    assert set(cache.children) == {-1, cache.match(b)[0][0].id}  # the evicted block left its parent's index
    assert PrefixCache(0, per_token).enabled is False


def test_a_long_prompt_is_prefilled_in_chunks_while_other_rows_decode(model, gpt2_tokenizer) -> None:
    long = gpt2_tokenizer.encode("The long prompt goes on and on, " * 24)[:200]
    engine = Engine(model, gpt2_tokenizer, max_batch=4, prefill_chunk=16)
    order: list[str] = []
    engine.start()
    try:
        got = Collector()

        def recording(name: str):
            emit = got.emit(name)

            def record(event: Event) -> None:
                order.extend([name] * len(event.tokens))
                emit(event)

            return record

        runner = gpt2_tokenizer.encode("A stream already decoding")
        engine.submit(Request(runner, 40, recording("runner"), SamplingOptions(temperature=0), logprobs=0))
        deadline = time.monotonic() + 60
        while not order and time.monotonic() < deadline:  # the runner has joined the batch and decodes
            time.sleep(0.005)
        engine.submit(Request(long, 20, recording("long"), SamplingOptions(temperature=0), logprobs=1,
                              echo_logprobs=True))  # fmt: skip
        got.wait()
    finally:
        engine.stop()
    first = order.index("long")  # the long prompt's tokens arrive in one event: its echo, when prefilled
    assert order[:first].count("runner") >= 200 // 16 - 1  # a decode step between each two of its 13 chunks
    assert got.text("runner") == greedy(model, gpt2_tokenizer, "A stream already decoding", 40)
    assert got.text("long") == greedy(model, gpt2_tokenizer, gpt2_tokenizer.decode(long), 20)
    [echo] = [e for e in got.events["long"] if e.prompt]
    assert [t.logprob for t in echo.tokens][1:] == pytest.approx(prompt_logprobs(model, long), abs=1e-4)
