"""Sampling: the decoding loop (padding, cache, sliding window), the sampling rules, and text with stop strings."""

from __future__ import annotations

import importlib

import pytest
import torch

from gpt2 import GPT, GPT2Error, GPTConfig, generate, generate_stream

transformers = pytest.importorskip("transformers")
gen = importlib.import_module("gpt2.generate")  # `gpt2.generate` the attribute is the function

TINY = dict(vocab_size=97, n_positions=32, n_layer=2, n_head=4, n_embd=32)


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[GPT, transformers.GPT2LMHeadModel]:
    """The same random tiny weights in transformers and in our model."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(**TINY, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    theirs = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # HF initialises biases to 0 and LayerNorms to 1/0: randomise them so they matter
        for name, p in theirs.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    folder = tmp_path_factory.mktemp("hf-tiny")
    theirs.save_pretrained(folder)
    theirs.generation_config.eos_token_id = None  # run every step
    theirs.generation_config.pad_token_id = 0
    return GPT.from_pretrained(folder), theirs


@pytest.fixture(scope="module")
def model() -> GPT:
    """A tiny random model over GPT-2's real vocabulary, for the text-level tests."""
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=50257, n_positions=64, n_layer=2, n_head=2, n_embd=32)).eval()


# ------------------------------------------------------------------------------------------------ ids
def test_greedy_equals_transformers_generate(pair) -> None:
    ours, theirs = pair
    torch.manual_seed(1)
    for length in (1, 5, 12):
        prompt = torch.randint(0, TINY["vocab_size"], (1, length))
        expected = theirs.generate(prompt, do_sample=False, max_new_tokens=15, attention_mask=torch.ones_like(prompt))
        assert torch.equal(ours.generate(prompt, 15, temperature=0), expected)


def test_left_padded_batch_rows_equal_their_unpadded_selves(pair) -> None:
    ours, _ = pair
    torch.manual_seed(2)
    prompts = [torch.randint(0, TINY["vocab_size"], (n,)).tolist() for n in (3, 9, 1, 6)]
    forced = torch.randint(0, TINY["vocab_size"], (4, 8))  # teacher-forced continuations
    with torch.inference_mode():
        decoder = gen.Decoder(ours, prompts, max_new_tokens=8)
        assert decoder.padded
        steps = [decoder.prefill()] + [decoder.step(forced[:, t]) for t in range(7)]
        for row, prompt in enumerate(prompts):
            full = ours(torch.tensor([prompt + forced[row, :7].tolist()]))[0]  # the row alone, no padding
            got = torch.stack([s[row] for s in steps])
            torch.testing.assert_close(got, full[len(prompt) - 1 :], atol=1e-5, rtol=1e-5)
    # and sampling: a batch gives each row what it gives alone
    batch = gen.generate_ids(ours, torch.tensor([[5, 6, 7, 8]]), 4, gen.SamplingOptions(0))
    texts = list(gen.iter_tokens(ours, [[7, 8], [5, 6, 7, 8]], 4, gen.SamplingOptions(0)))
    assert torch.stack(texts, 1)[1].tolist() == batch[0, 4:].tolist()
    alone = gen.generate_ids(ours, torch.tensor([[7, 8]]), 4, gen.SamplingOptions(0))
    assert torch.stack(texts, 1)[0].tolist() == alone[0, 2:].tolist()


def test_per_step_work_does_not_grow_with_the_sequence(pair) -> None:
    """Every decoding step makes the same torch calls whatever the length so far: no re-reading of the past."""
    from torch.overrides import TorchFunctionMode

    class Count(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.calls: list[str] = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.calls.append(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    ours, _ = pair
    for prompts in ([[1, 2, 3]], [[1, 2, 3], [4]]):  # plain and padded
        with torch.inference_mode():
            decoder = gen.Decoder(ours, prompts, max_new_tokens=25)
            decoder.prefill()
            per_step = []
            for t in range(24):
                with Count() as count:
                    decoder.step(torch.full((len(prompts),), t))
                per_step.append(count.calls)
        assert all(calls == per_step[0] for calls in per_step), prompts


def test_generation_beyond_the_context_slides_the_window(pair) -> None:
    ours, _ = pair
    ctx = TINY["n_positions"]
    prompt = [[3, 1, 4, 1, 5], [9, 2, 6]]  # padded too
    forced = torch.randint(0, TINY["vocab_size"], (2, 3 * ctx))
    with torch.inference_mode():
        decoder = gen.Decoder(ours, prompt, max_new_tokens=3 * ctx)
        logits, slides = decoder.prefill(), 0
        for t in range(3 * ctx - 1):
            lo_before = decoder.lo
            logits = decoder.step(forced[:, t])
            slides += decoder.lo != lo_before
            assert decoder.end - decoder.lo <= ctx
            for row in range(2):  # each row: the full forward over the window the cache now holds
                window = decoder.tokens[row, decoder.lo : decoder.end][decoder.valid[row, decoder.lo : decoder.end]]
                expected = ours(window[None])[0, -1]
                torch.testing.assert_close(logits[row], expected, atol=1e-5, rtol=1e-5)
    assert slides >= 3
    out = ours.generate(torch.tensor([[1, 2, 3]]), 2 * ctx, temperature=0.8, top_k=10, seed=0)
    assert out.shape == (1, 3 + 2 * ctx) and out.max() < TINY["vocab_size"]


def test_prompt_longer_than_the_context_keeps_the_most_recent_tokens(pair) -> None:
    ours, _ = pair
    torch.manual_seed(3)
    long = torch.randint(0, TINY["vocab_size"], (1, TINY["n_positions"] + 10))
    with pytest.warns(UserWarning, match="42 tokens is longer than the context \\(32\\); keeping its last 32"):
        out = ours.generate(long, 5, temperature=0)
    assert torch.equal(out[:, :42], long)
    recent = ours.generate(long[:, -TINY["n_positions"] :], 5, temperature=0)
    assert torch.equal(out[:, -5:], recent[:, -5:])


def test_bad_arguments_are_clear_errors(pair) -> None:
    ours, _ = pair
    idx = torch.tensor([[1, 2]])
    for kwargs, message in [
        (dict(temperature=-1), "temperature must be >= 0"),
        (dict(top_k=0), "top_k must be >= 1"),
        (dict(top_p=0.0), "top_p must be in \\(0, 1\\]"),
        (dict(top_p=1.5), "top_p must be in \\(0, 1\\]"),
    ]:
        with pytest.raises(GPT2Error, match=message):
            ours.generate(idx, 3, **kwargs)
    with pytest.raises(GPT2Error, match="max_new_tokens must be >= 0"):
        ours.generate(idx, -1)
    with pytest.raises(GPT2Error, match="token id 97 is outside the model's vocabulary \\(0..96\\)"):
        ours.generate(torch.tensor([[1, 97]]), 3)
    with pytest.raises(GPT2Error, match="every prompt needs at least one token"):
        list(gen.iter_tokens(ours, [[1], []], 3))
    assert torch.equal(ours.generate(idx, 0), idx)


# ------------------------------------------------------------------------------------------------ sampling rules
def test_top_k_and_top_p_keep_what_transformers_keeps() -> None:
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    torch.manual_seed(4)
    logits = torch.randn(64, 500) * 3
    for top_k, top_p in [(1, None), (7, None), (None, 0.5), (None, 0.95), (40, 0.9), (None, 1e-6)]:
        values, indices = gen.candidates(logits, top_k, top_p)
        ours = torch.zeros_like(logits, dtype=torch.bool).scatter(1, indices, values.isfinite())
        expected = logits.clone()
        if top_k is not None:
            expected = TopKLogitsWarper(top_k)(None, expected)
        if top_p is not None:
            expected = TopPLogitsWarper(top_p)(None, expected)
        assert torch.equal(ours, expected.isfinite()), (top_k, top_p)


def test_degenerate_settings_are_greedy() -> None:
    torch.manual_seed(5)
    logits = torch.randn(16, 300)
    greedy = logits.argmax(-1)
    assert torch.equal(gen.sample_next(logits, gen.SamplingOptions(0.0)), greedy)
    assert torch.equal(gen.sample_next(logits, gen.SamplingOptions(1.0, top_k=1)), greedy)
    assert torch.equal(gen.sample_next(logits, gen.SamplingOptions(1.0, top_p=1e-6)), greedy)
    assert torch.equal(
        gen.sample_next(logits, gen.SamplingOptions(1e-3)), greedy
    )  # a tiny temperature sharpens onto the argmax


@pytest.mark.parametrize(
    "temperature, top_k, top_p, expected",
    [
        (1.0, None, None, [0.5, 0.3, 0.15, 0.05]),
        (2.0, None, None, "tempered"),
        (1.0, 2, None, [0.5 / 0.8, 0.3 / 0.8, 0, 0]),
        (1.0, None, 0.6, [0.5 / 0.8, 0.3 / 0.8, 0, 0]),  # 0.5 < 0.6, so the second token is needed too
        (1.0, None, 0.85, [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0]),
    ],
)
def test_sampling_frequencies(temperature: float, top_k: int | None, top_p: float | None, expected) -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    if expected == "tempered":
        expected = probs.pow(1 / temperature) / probs.pow(1 / temperature).sum()
    n = 40_000
    logits = probs.log().expand(n, 4)
    draws = gen.sample_next(logits, gen.SamplingOptions(temperature, top_k, top_p), torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).double() / n
    torch.testing.assert_close(freq, torch.as_tensor(expected, dtype=torch.double), atol=0.01, rtol=0)


def test_seeds_repeat_and_differ(pair) -> None:
    ours, _ = pair
    idx = torch.tensor([[1, 2, 3], [4, 5, 6]])
    a = ours.generate(idx, 20, temperature=1.0, seed=7)
    assert torch.equal(a, ours.generate(idx, 20, temperature=1.0, seed=7))
    assert not torch.equal(a, ours.generate(idx, 20, temperature=1.0, seed=8))
    assert not torch.equal(a[0, 3:], a[1, 3:])


def test_sampling_works_in_bfloat16(pair) -> None:
    ours, _ = pair
    half = GPT(ours.config).eval()
    half.load_state_dict(ours.state_dict())
    half = half.to(torch.bfloat16)
    idx = torch.tensor([[1, 2, 3, 4]])
    out = half.generate(idx, 12, temperature=0.9, top_k=20, top_p=0.9, seed=0)
    assert out.shape == (1, 16) and out.dtype == torch.long and out.max() < TINY["vocab_size"]
    with torch.inference_mode():  # the cached bf16 path (one row per step) agrees with the bf16 full forward
        decoder = gen.Decoder(half, [[1, 2, 3, 4, 5, 6]], 4)
        steps = [decoder.prefill()] + [decoder.step(torch.tensor([t])) for t in (7, 8, 9)]
        full = half(torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9]]))[0, 5:]
    torch.testing.assert_close(torch.cat(steps).float(), full.float(), atol=0.1, rtol=0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # float32 weights, bf16 compute: as training samples
        assert ours.generate(idx, 6, temperature=0).shape == (1, 10)
    torch.testing.assert_close(full.float(), ours(torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9]]))[0, 5:], atol=0.1, rtol=0)


# ------------------------------------------------------------------------------------------------ lookahead
def test_ngram_lookup_drafts_what_followed_the_latest_occurrence() -> None:
    lookup = gen.NgramLookup([1, 2, 3, 9, 1, 2, 3, 4, 5, 0, 2, 3])
    assert lookup.draft(3) == [4, 5, 0]  # "2 3" last occurred before 4 (a 3-gram "0 2 3" never did)
    lookup.append(7)
    assert lookup.draft(2) == []  # "3 7" never occurred before
    lookup.append(1)
    assert lookup.draft(2) == []  # nor "7 1"; one token ("1") is too little to go on by default
    one = gen.NgramLookup(lookup.ids, min_n=1)
    assert one.draft(5) == [2, 3, 4, 5, 0]  # the latest occurrence of "1"
    assert one.draft(12) == [2, 3, 4, 5, 0, 2, 3, 7, 1, 2, 3, 4]  # past the end: the loop "2 ... 1" again
    assert gen.NgramLookup([5]).draft(4) == []
    assert gen.NgramLookup([8, 8, 8]).draft(3) == [8, 8, 8]


@pytest.mark.parametrize("lookahead", [1, 3, 8])
def test_lookahead_greedy_gives_the_same_tokens(pair, lookahead) -> None:
    ours, _ = pair
    torch.manual_seed(3)
    for prompt in ([1, 2, 3, 1, 2, 3, 1], torch.randint(0, TINY["vocab_size"], (20,)).tolist()):
        idx = torch.tensor([prompt])
        for n in (1, 2, 7, 40):  # 40 + 20 > 32: the window slides between drafts
            plain = ours.generate(idx, n, temperature=0)
            assert torch.equal(ours.generate(idx, n, temperature=0, lookahead=lookahead), plain), n


def test_lookahead_checks_several_drafts_per_forward_pass(pair) -> None:
    ours, _ = pair
    calls = []
    original = gen.Decoder.extend
    gen.Decoder.extend = lambda self, new: calls.append(new.numel()) or original(self, new)
    try:
        out = ours.generate(torch.tensor([[4, 5, 6] * 3]), 20, temperature=0, lookahead=4)
    finally:
        gen.Decoder.extend = original
    assert calls and max(calls) == 5  # the last token and 4 drafts at once
    assert torch.equal(out, ours.generate(torch.tensor([[4, 5, 6] * 3]), 20, temperature=0))


def test_lookahead_on_a_loop_needs_a_pass_per_lookahead_plus_one_tokens(pair, monkeypatch) -> None:
    """A text that loops (as the scripted choices below do) is drafted right after one period: each forward
    pass then yields lookahead + 1 tokens."""
    ours, _ = pair
    loop = [11, 12, 13, 14, 15, 16, 17]
    script = iter(loop * 20)  # each sampling decision settles the next position, in order
    monkeypatch.setattr(gen, "sample_next", lambda *a, **k: torch.tensor([next(script)]))
    monkeypatch.setattr(gen, "verify", lambda *a, **k: next(script))
    passes = []
    for name in ("step", "extend"):
        original = getattr(gen.Decoder, name)
        monkeypatch.setattr(gen.Decoder, name, lambda self, t, f=original: passes.append(1) or f(self, t))
    out = list(
        gen.iter_tokens(ours, [[1, 2]], 28, gen.SamplingOptions(lookahead=4))
    )  # 30 tokens: within the context of 32
    assert [int(t) for t in out] == (loop * 4)[:28]
    # passes to find tokens 2-9 one by one (the first period, then the loop's first two tokens again: a 2-gram
    # seen before), then 5 tokens a pass for the other 19
    assert len(passes) == 8 + -(-19 // 5)


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, None, None), (0.5, 3, None), (1.0, None, 0.7)])
@pytest.mark.parametrize("draft", [0, 2, 4])
def test_verify_keeps_the_sampling_distribution(temperature, top_k, top_p, draft) -> None:
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    g, n = torch.Generator().manual_seed(draft), 20_000
    options = gen.SamplingOptions(temperature, top_k, top_p)
    got = torch.tensor([gen.verify(logits, draft, options, g) for _ in range(n)])
    expected = gen.sample_next(logits.expand(200_000, 5), options, torch.Generator().manual_seed(1))
    freq = torch.bincount(got, minlength=5).double() / n
    torch.testing.assert_close(freq, torch.bincount(expected, minlength=5).double() / 200_000, atol=0.012, rtol=0)


def test_lookahead_sampling_repeats_with_a_seed_and_needs_one_row(pair) -> None:
    ours, _ = pair
    idx = torch.tensor([[1, 2, 3, 1, 2, 3]])
    a = ours.generate(idx, 30, temperature=0.8, top_k=5, seed=3, lookahead=4)
    assert torch.equal(a, ours.generate(idx, 30, temperature=0.8, top_k=5, seed=3, lookahead=4))
    assert a.shape == (1, 36) and int(a.max()) < TINY["vocab_size"]
    with pytest.raises(GPT2Error, match="single prompt"):
        ours.generate(torch.tensor([[1, 2], [3, 4]]), 3, lookahead=2)
    with pytest.raises(GPT2Error, match="lookahead"):
        ours.generate(idx, 3, lookahead=-1)


def test_sampling_options_check_their_values_and_keywords_still_work(pair) -> None:
    ours, _ = pair
    for bad, message in [
        (dict(temperature=-1), "temperature must be >= 0"),
        (dict(top_k=0), "top_k must be >= 1"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
        (dict(lookahead=-2), "lookahead must be >= 0"),
    ]:
        with pytest.raises(GPT2Error, match=message):
            gen.SamplingOptions(**bad)
    idx = torch.tensor([[3, 4, 5]])
    options = gen.SamplingOptions(temperature=0.7, top_k=5, top_p=0.9, seed=11)
    # GPT.generate's keywords and one SamplingOptions are the same request
    assert torch.equal(
        ours.generate(idx, 6, temperature=0.7, top_k=5, top_p=0.9, seed=11), gen.generate_ids(ours, idx, 6, options)
    )
    assert gen.SamplingOptions(0).greedy and not options.greedy


# ------------------------------------------------------------------------------------------------ text
def feed(tokenizer, ids: list[int], stop=(), stop_at_eot=True) -> tuple[list[str], str]:
    row = gen.Completion(tokenizer, stop, stop_at_eot)
    pieces = []
    for token in ids:
        if row.done:
            break
        pieces.append(row.add(token))
    pieces.append(row.finish())
    return pieces, "".join(pieces)


def test_stop_strings_including_one_split_across_tokens(gpt2_tokenizer) -> None:
    text = "The cat sat on the mat. The dog barked at the postman."
    ids = gpt2_tokenizer.encode(text)
    pieces_of = [gpt2_tokenizer.decode([i]) for i in ids]
    assert "t. T" not in pieces_of and "mat. The" in text  # "t. T" spans the tokens " mat", ".", " The"
    for stop, expected in [
        (["t. T"], "The cat sat on the ma"),
        (["dog", "sat"], "The cat "),
        (["postman."], "The cat sat on the mat. The dog barked at the "),
        (["absent"], text),
    ]:
        pieces, result = feed(gpt2_tokenizer, ids, stop)
        assert result == expected and "".join(pieces) == expected, stop
        emitted = ""
        for piece in pieces:  # never a character of a stop string, nor anything after it
            emitted += piece
            assert expected.startswith(emitted)


def test_multibyte_characters_split_across_tokens(gpt2_tokenizer) -> None:
    text = "naïve 🙂 café"
    ids = gpt2_tokenizer.encode(text)
    assert len(ids) > len(text.split())  # the emoji takes several byte-level tokens
    pieces, result = feed(gpt2_tokenizer, ids)
    assert result == text and "\ufffd" not in "".join(pieces)
    pieces, result = feed(gpt2_tokenizer, ids, stop=["🙂"])
    assert result == "naïve "


def test_endoftext_ends_a_row(gpt2_tokenizer) -> None:
    ids = gpt2_tokenizer.encode("one two") + [gpt2_tokenizer.eot_id] + gpt2_tokenizer.encode(" three")
    assert feed(gpt2_tokenizer, ids)[1] == "one two"
    assert feed(gpt2_tokenizer, ids, stop_at_eot=False)[1] == "one two<|endoftext|> three"


def test_text_generation_end_to_end(model: GPT, gpt2_tokenizer) -> None:
    kw = dict(temperature=1.0, top_k=40, seed=3)
    [sample] = generate(model, gpt2_tokenizer, "Hello, my name is", 24, **kw)
    assert sample and sample == generate(model, gpt2_tokenizer, "Hello, my name is", 24, **kw)[0]
    # several samples per prompt differ from each other
    samples = generate(model, gpt2_tokenizer, "Hello, my name is", 24, num_samples=3, **kw)
    assert len(samples) == 3 and len(set(samples)) == 3
    # streaming yields pieces that join to the same text, for the same seed
    streamed = list(generate_stream(model, gpt2_tokenizer, "Hello, my name is", 24, **kw))
    assert len(streamed) > 1 and "".join(streamed) == sample
    # a stop string taken from the middle of that sample cuts there, streamed or not
    stop = sample[len(sample) // 2 : len(sample) // 2 + 3]
    cut = sample[: sample.index(stop)]
    assert generate(model, gpt2_tokenizer, "Hello, my name is", 24, stop=[stop], **kw) == [cut]
    assert "".join(generate_stream(model, gpt2_tokenizer, "Hello, my name is", 24, stop=[stop], **kw)) == cut


def test_batched_prompts_of_different_lengths(model: GPT, gpt2_tokenizer) -> None:
    prompts = ["Hi", "The quick brown fox jumps over", "<|endoftext|>A"]
    together = generate(model, gpt2_tokenizer, prompts, 16, temperature=0, num_samples=2)
    assert together == [generate(model, gpt2_tokenizer, p, 16, temperature=0, num_samples=2) for p in prompts]
    assert all(len(samples) == 2 and samples[0] == samples[1] for samples in together)  # greedy


def test_a_row_that_samples_endoftext_stops(model: GPT, gpt2_tokenizer) -> None:
    eot = gpt2_tokenizer.eot_id
    biased = GPT(model.config).eval()
    biased.load_state_dict(model.state_dict())
    with torch.no_grad():  # make <|endoftext|> the likeliest next token everywhere
        biased.transformer.ln_f.weight.zero_()
        biased.transformer.ln_f.bias.copy_(torch.randn(model.config.n_embd))
        biased.transformer.wte.weight[eot] = biased.transformer.ln_f.bias * 100
    assert generate(biased, gpt2_tokenizer, ["a", "b c"], 10, temperature=0) == [[""], [""]]
    text = generate(biased, gpt2_tokenizer, "a", 3, temperature=0, stop_at_eot=False)[0]
    assert text == "<|endoftext|>" * 3
