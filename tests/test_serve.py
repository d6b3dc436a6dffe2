"""`gpt2 serve`, driven by the official openai client against a tiny model served on a loopback port."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from gpt2 import GPT, GPTConfig, generate  # noqa: E402
from gpt2.quantize import quantize_int8  # noqa: E402
from gpt2.serve.app import create_app  # noqa: E402
from gpt2.serve.server import BackgroundServer  # noqa: E402

NAME = "tiny"
CTX = 128


def tiny(dtype: str, cls: type[GPT] = GPT) -> GPT:
    """The tests' model: a tiny random GPT-2 with GPT-2's vocabulary, in float32 or quantised to int8."""
    torch.manual_seed(0)
    model = cls(GPTConfig(vocab_size=50257, n_positions=CTX, n_layer=2, n_head=2, n_embd=32)).eval()
    return quantize_int8(model) if dtype == "int8" else model


@pytest.fixture(scope="module", params=["float32", "int8"])
def model(request) -> GPT:
    """Every test of the server runs on the float32 model and on its int8 quantisation (`--dtype int8`)."""
    return tiny(request.param)


@pytest.fixture(scope="module")
def server(model, gpt2_tokenizer):
    with BackgroundServer(create_app(model, gpt2_tokenizer, NAME, max_batch=8)) as url:
        yield url


@pytest.fixture()
def client(server):
    with openai.OpenAI(base_url=f"{server}/v1", api_key="unused", timeout=60, max_retries=0) as c:
        yield c


def greedy(model, tokenizer, prompt: str, n: int) -> str:
    return generate(model, tokenizer, prompt, n, temperature=0)[0]


def post(server: str, body, **kw) -> httpx.Response:
    data = body if isinstance(body, (bytes, str)) or not isinstance(body, dict) else json.dumps(body)
    headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
    return httpx.post(f"{server}/v1/completions", content=data, headers=headers, timeout=kw.pop("timeout", 30), **kw)


# ---------------------------------------------------------------------------------------------- completions
def test_a_greedy_completion_is_gpt2_generate_s_text_with_usage(client, model, gpt2_tokenizer) -> None:
    out = client.completions.create(model=NAME, prompt="Hello world", max_tokens=12, temperature=0)
    assert out.object == "text_completion" and out.model == NAME and len(out.choices) == 1
    assert out.choices[0].text == greedy(model, gpt2_tokenizer, "Hello world", 12)
    assert out.choices[0].finish_reason in ("length", "stop")
    prompt_tokens = len(gpt2_tokenizer.encode("Hello world"))
    assert out.usage.prompt_tokens == prompt_tokens and 0 < out.usage.completion_tokens <= 12
    assert out.usage.total_tokens == prompt_tokens + out.usage.completion_tokens


def test_prompt_forms_token_ids_and_lists(client, model, gpt2_tokenizer) -> None:
    ids = gpt2_tokenizer.encode("The cat")
    by_ids = client.completions.create(model=NAME, prompt=ids, max_tokens=6, temperature=0)
    by_text = client.completions.create(model=NAME, prompt="The cat", max_tokens=6, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    many = client.completions.create(model=NAME, prompt=["The cat", "A dog"], max_tokens=6, temperature=0)
    assert [c.index for c in many.choices] == [0, 1]
    assert many.choices[1].text == greedy(model, gpt2_tokenizer, "A dog", 6)
    assert many.choices[0].text == by_text.choices[0].text
    assert many.usage.prompt_tokens == len(ids) + len(gpt2_tokenizer.encode("A dog"))
    lists = client.completions.create(model=NAME, prompt=[ids, ids[:1]], max_tokens=6, temperature=0)
    assert lists.choices[0].text == by_text.choices[0].text and len(lists.choices) == 2


def test_a_stream_equals_the_greedy_text_and_ends_with_done(server, client, model, gpt2_tokenizer) -> None:
    pieces, finish = [], None
    for chunk in client.completions.create(model=NAME, prompt="Once upon", max_tokens=20, temperature=0, stream=True):
        for choice in chunk.choices:
            pieces.append(choice.text)
            finish = choice.finish_reason or finish
    assert len(pieces) > 1 and finish in ("length", "stop")
    assert "".join(pieces) == greedy(model, gpt2_tokenizer, "Once upon", 20)
    with httpx.stream("POST", f"{server}/v1/completions", timeout=30,
                      json={"model": NAME, "prompt": "Once upon", "max_tokens": 5, "stream": True}) as r:  # fmt: skip
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)
    assert json.loads(lines[-2][6:])["usage"]["completion_tokens"] == 5  # usage rides on the last chunk


def test_stream_include_usage_sends_a_usage_chunk(client) -> None:
    chunks = list(client.completions.create(model=NAME, prompt="Hi", max_tokens=4, stream=True,
                                            stream_options={"include_usage": True}))  # fmt: skip
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4


def test_n_2_gives_two_choices(client) -> None:
    out = client.completions.create(model=NAME, prompt="Hello", max_tokens=10, n=2, seed=3, temperature=1.0)
    assert [c.index for c in out.choices] == [0, 1] and out.choices[0].text != out.choices[1].text
    assert out.usage.completion_tokens == 20 or "stop" in {c.finish_reason for c in out.choices}
    same = client.completions.create(model=NAME, prompt="Hello", max_tokens=10, n=2, temperature=0)
    assert same.choices[0].text == same.choices[1].text


def test_seeds_reproduce_text_as_gpt2_generate_samples_it(client, model, gpt2_tokenizer) -> None:
    def sample(seed: int) -> str:
        return (
            client.completions.create(model=NAME, prompt="Seeded", max_tokens=15, seed=seed, extra_body={"top_k": 40})
            .choices[0]
            .text
        )

    a, b, c = sample(7), sample(7), sample(8)
    assert a == b and a != c
    assert a == generate(model, gpt2_tokenizer, "Seeded", 15, top_k=40, seed=7)[0]


def test_stop_strings_cut_the_text(client, model, gpt2_tokenizer) -> None:
    full = greedy(model, gpt2_tokenizer, "Stop here", 30)
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    expected = full[: full.find(stop)]
    for stream in (False, True):
        kw = dict(model=NAME, prompt="Stop here", max_tokens=30, temperature=0, stop=[stop, "\x00never"])
        if stream:
            chunks = list(client.completions.create(stream=True, **kw))
            text = "".join(c.text for ch in chunks for c in ch.choices)
            finish = [c.finish_reason for ch in chunks for c in ch.choices if c.finish_reason]
        else:
            out = client.completions.create(**kw)
            text, finish = out.choices[0].text, [out.choices[0].finish_reason]
        assert text == expected and finish == ["stop"]


def test_logprobs_are_the_model_s_log_softmax(client, model, gpt2_tokenizer) -> None:
    out = client.completions.create(model=NAME, prompt="Count", max_tokens=6, temperature=0, logprobs=3)
    lp = out.choices[0].logprobs
    ids = gpt2_tokenizer.encode("Count")
    new = [gpt2_tokenizer.encode(t, allowed_special="all")[0] for t in lp.tokens]  # whole-UTF-8 tokens here
    assert "".join(lp.tokens) == out.choices[0].text and len(new) == 6
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids + new]))[0].float(), dim=-1)
    for t, token in enumerate(new):
        row = logp[len(ids) - 1 + t]
        assert lp.token_logprobs[t] == pytest.approx(float(row[token]), abs=1e-4)
        top = sorted(lp.top_logprobs[t].values(), reverse=True)
        assert top == pytest.approx(row.topk(3).values.tolist(), abs=1e-4)
        assert lp.tokens[t] in lp.top_logprobs[t]  # greedy: the chosen one is the likeliest
    assert lp.text_offset == [sum(len(x) for x in lp.tokens[:i]) for i in range(6)]


def test_echo_scores_the_prompt(client, model, gpt2_tokenizer) -> None:
    ids = gpt2_tokenizer.encode("The quick brown fox")
    out = client.completions.create(model=NAME, prompt="The quick brown fox", max_tokens=0, echo=True, logprobs=0)
    lp = out.choices[0].logprobs
    assert out.choices[0].text == "The quick brown fox" and lp.token_logprobs[0] is None
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids]))[0].float(), dim=-1)
    expected = [float(logp[i, ids[i + 1]]) for i in range(len(ids) - 1)]
    assert lp.token_logprobs[1:] == pytest.approx(expected, abs=1e-4)
    more = client.completions.create(model=NAME, prompt="The quick", max_tokens=4, echo=True, temperature=0)
    assert more.choices[0].text == "The quick" + greedy(model, gpt2_tokenizer, "The quick", 4)
    streamed = client.completions.create(model=NAME, prompt="The quick", max_tokens=4, echo=True, temperature=0,
                                         stream=True)  # fmt: skip
    assert "".join(c.text for ch in streamed for c in ch.choices) == more.choices[0].text


def test_logit_bias_forces_a_token(client) -> None:
    out = client.completions.create(model=NAME, prompt="x", max_tokens=5, logit_bias={"262": 100}, seed=0)
    assert out.choices[0].text == " the" * 5


def test_text_offsets_are_character_offsets_into_the_text(client, gpt2_tokenizer) -> None:
    """Byte-level tokens (the pizza emoji is three tokens) count the characters they complete, as OpenAI's."""
    text = "I love \U0001f355 and caf\u00e9 "
    ids = gpt2_tokenizer.encode(text)
    pieces = [gpt2_tokenizer.decode_bytes([i]) for i in ids]
    assert any(not _whole_utf8(piece) for piece in pieces)  # the case that once counted "bytes:\xf0\x9f" as text
    # the characters that the bytes before each token make whole
    expected = [len(b"".join(pieces[:i]).decode("utf-8", errors="ignore")) for i in range(len(ids))]
    out = client.completions.create(model=NAME, prompt=text, max_tokens=0, echo=True, logprobs=0)
    assert out.choices[0].text == text and out.choices[0].logprobs.text_offset == expected
    more = client.completions.create(model=NAME, prompt=text, max_tokens=6, echo=True, logprobs=0, temperature=0)
    lp = more.choices[0].logprobs
    assert lp.text_offset[: len(ids)] == expected
    assert lp.text_offset[len(ids) :] == [len(text) + sum(map(len, lp.tokens[len(ids) : i])) for i in
                                          range(len(ids), len(lp.tokens))]  # fmt: skip


def _whole_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_a_stop_string_leaves_its_tokens_out_of_logprobs(client) -> None:
    kw = dict(model=NAME, prompt="Stop here", max_tokens=30, seed=1, logprobs=1, extra_body={"top_k": 0})
    tokens = client.completions.create(**kw).choices[0].logprobs.tokens  # a seeded sample: the same each time
    k = next(i for i in range(3, len(tokens)) if len(tokens[i]) >= 2 and tokens[i] not in "".join(tokens[:i]))
    stop = tokens[k]  # a whole token that first occurs there, so the text ends exactly at a token boundary
    for stream in (False, True):
        kw["stop"] = [stop]
        if stream:
            chunks = [c for ch in client.completions.create(stream=True, **kw) for c in ch.choices]
            text = "".join(c.text for c in chunks)
            got = [t for c in chunks if c.logprobs for t in c.logprobs.tokens]
            offsets = [o for c in chunks if c.logprobs for o in c.logprobs.text_offset]
        else:
            choice = client.completions.create(**kw).choices[0]
            text, got, offsets = choice.text, choice.logprobs.tokens, choice.logprobs.text_offset
        assert text == "".join(tokens[:k]) and got == tokens[:k], stream
        assert offsets == [len("".join(tokens[:i])) for i in range(k)], stream


def test_top_logprobs_include_the_sampled_token(client) -> None:
    out = client.completions.create(model=NAME, prompt="Sampled", max_tokens=12, temperature=2.0, seed=5,
                                    logprobs=2, extra_body={"top_k": 0})  # fmt: skip
    lp = out.choices[0].logprobs
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert top[token] == logprob and 2 <= len(top) <= 3
    assert any(len(top) == 3 for top in lp.top_logprobs)  # sampled outside the two likeliest: N + 1 entries
    echo = client.completions.create(model=NAME, prompt="The quick brown fox", max_tokens=0, echo=True, logprobs=1)
    lp = echo.choices[0].logprobs
    assert lp.top_logprobs[0] is None
    for token, logprob, top in zip(lp.tokens[1:], lp.token_logprobs[1:], lp.top_logprobs[1:], strict=True):
        assert top[token] == logprob and 1 <= len(top) <= 2


# ---------------------------------------------------------------------------------------------- errors
def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": NAME, "prompt": "a", "temperature": -1}, "temperature"),
        ({"model": NAME, "prompt": "a", "top_p": 0}, "top_p"),
        ({"model": NAME, "prompt": "a", "n": 0}, "n"),
        ({"model": NAME, "prompt": "a", "max_tokens": "many"}, "max_tokens"),
        ({"model": NAME, "prompt": "a", "logprobs": 99}, "logprobs"),
        ({"model": NAME}, "prompt"),
        ({"model": NAME, "prompt": []}, "prompt"),
        ({"model": NAME, "prompt": {"text": "a"}}, "prompt"),
        ({"model": NAME, "prompt": [1, 99999999]}, "prompt"),
        ({"model": NAME, "prompt": "a", "max_tokens": CTX}, "max_tokens"),
        ({"model": NAME, "prompt": "a " * (CTX + 10), "max_tokens": 1}, "prompt"),
        ({"model": NAME, "prompt": "a", "frobnicate": 1}, "frobnicate"),
        ({"model": NAME, "prompt": "a", "stop": ["x"] * 20}, "stop"),
        ({"model": NAME, "prompt": "a", "logit_bias": {"cat": 1}}, "logit_bias"),
        ({"prompt": "a"}, "model"),
        ({"model": NAME, "prompt": "a", "stream": "yes"}, "stream"),
        ({"model": NAME, "prompt": "a", "echo": 1}, "echo"),
        ({"model": NAME, "prompt": "a", "max_tokens": True}, "max_tokens"),
        ({"model": NAME, "prompt": "a", "seed": 2**70}, "seed"),
        ({"model": NAME, "prompt": "a", "seed": 2**64}, "seed"),
        ({"model": NAME, "prompt": "a", "seed": -(2**63) - 1}, "seed"),
        ({"model": NAME, "prompt": "a", "seed": 1.5}, "seed"),
    ],
)
def test_a_bad_request_is_a_400_naming_the_field(server, body, param) -> None:
    r = post(server, body)
    assert r.status_code == 400, r.text
    assert error_of(r)["param"] == param and error_of(r)["type"] == "invalid_request_error"


def test_a_number_that_is_not_finite_is_refused_as_such(server) -> None:
    for field in ("temperature", "top_p", "presence_penalty"):
        r = post(server, f'{{"model": "{NAME}", "prompt": "a", "{field}": NaN}}')
        assert r.status_code == 400 and error_of(r)["param"] == field, r.text
        assert "finite" in error_of(r)["message"], error_of(r)["message"]


def test_the_openapi_schema_promises_the_errors_the_server_answers(server) -> None:
    schema = httpx.get(f"{server}/openapi.json", timeout=10).json()
    responses = schema["paths"]["/v1/completions"]["post"]["responses"]
    assert "422" not in json.dumps(schema["paths"]) and "HTTPValidationError" not in json.dumps(schema)
    assert {"200", "400", "401", "404", "413"} <= set(responses)
    error = responses["400"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert set(schema["components"]["schemas"][error]["properties"]) == {"error"}


def test_the_docs_page_needs_nothing_from_elsewhere(server) -> None:
    """/docs is Swagger UI from files shipped with the server: every script, style and icon it loads is local."""
    import re

    page = httpx.get(f"{server}/docs", timeout=10)
    assert page.status_code == 200 and "swagger" in page.text.lower()
    links = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", page.text)
    assert len(links) >= 3, links
    for link in links:
        assert link.startswith("/"), f"/docs loads {link} from elsewhere"
        assert httpx.get(f"{server}{link}", timeout=10).status_code == 200, link


def test_other_client_errors(server) -> None:
    r = post(server, b"{not json")
    assert r.status_code == 400 and "JSON" in error_of(r)["message"]
    r = post(server, {"model": "gpt-4", "prompt": "a"})
    assert r.status_code == 404 and error_of(r)["code"] == "model_not_found"
    r = post(server, {"model": NAME, "prompt": "a" * (3 * 1024 * 1024)})
    assert r.status_code == 413 and error_of(r)["code"] == "body_too_large"

    def chunked():  # no Content-Length: counted as it arrives
        yield b'{"model": "tiny", "prompt": "'
        for _ in range(40):
            yield b"a" * 65536
        yield b'"}'

    r = post(server, chunked())
    assert r.status_code == 413 and error_of(r)["code"] == "body_too_large"
    r = httpx.post(f"{server}/v1/chat/completions", json={"model": NAME, "messages": []}, timeout=10)
    assert r.status_code == 404 and "not a chat model" in error_of(r)["message"]
    r = httpx.get(f"{server}/v1/nothing", timeout=10)
    assert r.status_code == 404 and error_of(r)["code"] == "not_found"


def test_the_openai_client_raises_its_own_errors(client) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=NAME, prompt="a", max_tokens=10_000)
    assert e.value.status_code == 400 and "context length" in e.value.message
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="davinci", prompt="a")


def test_models_and_health(client, server) -> None:
    assert [m.id for m in client.models.list().data] == [NAME]
    assert client.models.retrieve(NAME).id == NAME
    health = httpx.get(f"{server}/health", timeout=10).json()
    assert health["status"] == "ok" and health["model"] == NAME


def test_metrics_count_requests_tokens_latencies_and_prefix_hits(model, gpt2_tokenizer) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    app = create_app(model, gpt2_tokenizer, NAME)
    prompt = "Metrics count every token of this prompt, and the second time most of it comes from the cache."
    n = len(gpt2_tokenizer.encode(prompt))
    assert n > 16
    with BackgroundServer(app) as url, openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as c:
        for _ in range(2):
            c.completions.create(model=NAME, prompt=prompt, max_tokens=5, temperature=0, stop=["\x00never"])
        with pytest.raises(openai.BadRequestError):
            c.completions.create(model=NAME, prompt="a", temperature=-1)
        r = httpx.get(f"{url}/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(r.text) for s in family.samples}  # fmt: skip

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("gpt2_http_requests_total", route="/v1/completions", status="200") == 2
    assert value("gpt2_http_requests_total", route="/v1/completions", status="400") == 1
    assert value("gpt2_prompt_tokens_total") == 2 * n and value("gpt2_generation_tokens_total") == 10
    assert value("gpt2_time_to_first_token_seconds_count") == 2
    assert value("gpt2_time_per_output_token_seconds_count") == 8
    assert value("gpt2_rows_finished_total", reason="length") == 2
    assert value("gpt2_rows_active") == 0 and value("gpt2_rows_queued") == 0
    assert value("gpt2_prefix_cache_queried_tokens_total") == 2 * n
    assert value("gpt2_prefix_cache_hit_tokens_total") == min(n // 16 * 16, n - 1)  # the second request's


def test_an_api_key_is_required_when_set(model, gpt2_tokenizer) -> None:
    with BackgroundServer(create_app(model, gpt2_tokenizer, NAME, api_key="s3cret")) as url:
        with openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", timeout=30, max_retries=0) as bad:
            with pytest.raises(openai.AuthenticationError):
                bad.completions.create(model=NAME, prompt="a", max_tokens=2)
            with pytest.raises(openai.AuthenticationError):
                bad.models.list()
        r = httpx.post(f"{url}/v1/completions", json={"model": NAME, "prompt": "a"}, timeout=10)
        assert r.status_code == 401 and error_of(r)["code"] == "invalid_api_key"
        r = httpx.post(f"{url}/v1/completions", content=b"{not json", timeout=10)  # the key comes first
        assert r.status_code == 401
        with openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret", timeout=30, max_retries=0) as good:
            assert len(good.completions.create(model=NAME, prompt="a", max_tokens=2).choices) == 1
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200


# ---------------------------------------------------------------------------------------------- batching
def test_20_concurrent_streams_each_get_their_own_greedy_text(server, model, gpt2_tokenizer) -> None:
    prompts = [f"Story {i}:" + " and then" * (i % 6) for i in range(20)]
    lengths = [8 + (i * 7) % 40 for i in range(20)]
    start = threading.Barrier(20, timeout=30)

    def one(i: int) -> str:
        with openai.OpenAI(base_url=f"{server}/v1", api_key="x", timeout=60, max_retries=0) as c:
            start.wait()
            stream = c.completions.create(model=NAME, prompt=prompts[i], max_tokens=lengths[i], temperature=0,
                                          stream=True)  # fmt: skip
            return "".join(ch.text for chunk in stream for ch in chunk.choices)

    with ThreadPoolExecutor(20) as pool:
        got = list(pool.map(one, range(20), timeout=120))
    expected = [greedy(model, gpt2_tokenizer, p, n) for p, n in zip(prompts, lengths, strict=True)]
    assert got == expected


def test_a_bad_seed_is_a_400_and_the_streams_in_flight_go_on(server, model, gpt2_tokenizer) -> None:
    """Seeds beyond OpenAI's (64-bit) range once failed inside the decode loop, and took every stream with them."""
    prompts = [f"Stream {i} goes" for i in range(4)]
    started = threading.Barrier(len(prompts) + 1, timeout=30)

    def one(prompt: str) -> str:
        with openai.OpenAI(base_url=f"{server}/v1", api_key="x", timeout=60, max_retries=0) as c:
            stream = c.completions.create(model=NAME, prompt=prompt, max_tokens=60, temperature=0, stream=True)
            text = ""
            for i, chunk in enumerate(stream):
                text += "".join(ch.text for ch in chunk.choices)
                if i == 1:
                    started.wait()  # every stream is decoding when the bad requests come
            return text

    with ThreadPoolExecutor(len(prompts)) as pool:
        texts = pool.map(one, prompts, timeout=120)
        started.wait()
        for seed in (2**70, 2**64, -(2**63) - 1):
            for stream in (False, True):
                body = {"model": NAME, "prompt": "hi", "max_tokens": 5, "seed": seed, "stream": stream}
                r = post(server, body, timeout=20)
                assert r.status_code == 400 and error_of(r)["param"] == "seed", r.text
        texts = list(texts)
    assert texts == [greedy(model, gpt2_tokenizer, p, 60) for p in prompts]
    for seed in (2**63 - 1, -(2**63)):  # the range's ends are fine
        assert post(server, {"model": NAME, "prompt": "hi", "max_tokens": 2, "seed": seed}).status_code == 200


def test_rows_joining_and_leaving_at_any_step_decode_as_alone(gpt2_tokenizer, decode_through_engine) -> None:
    """The engine alone, in a 48-token context: rows join mid-flight with prompts longer than the clock (the cache
    shifts right), fill the context (it shifts left), and finish at different steps; each is its greedy text."""
    torch.manual_seed(1)
    model = GPT(GPTConfig(vocab_size=50257, n_positions=48, n_layer=2, n_head=2, n_embd=32)).eval()
    prompts = [f"Row {i} says" + " well" * (3 * i % 11) for i in range(12)]
    lengths = [48 - len(gpt2_tokenizer.encode(p)) if i % 3 == 0 else 5 + i for i, p in enumerate(prompts)]
    texts = decode_through_engine(model, gpt2_tokenizer, prompts, lengths, max_batch=4)  # 12 through 4 rows
    assert texts == [greedy(model, gpt2_tokenizer, p, n) for p, n in zip(prompts, lengths, strict=True)]


class Slow(GPT):
    """20 ms a forward pass, so that a whole completion takes seconds."""

    def hidden_states(self, idx, *args, **kw):
        time.sleep(0.02)
        return super().hidden_states(idx, *args, **kw)


def wait_until(condition, deadline: float = 30.0, every: float = 0.01) -> bool:
    """Poll until condition() holds or `deadline` seconds pass; whether it held."""
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(every)
    return True


def test_a_client_that_disconnects_frees_its_slot(gpt2_tokenizer) -> None:
    app = create_app(tiny("float32", Slow), gpt2_tokenizer, NAME)
    body = {"model": NAME, "prompt": "Long", "max_tokens": CTX - 4, "stream": True, "temperature": 0}
    with BackgroundServer(app) as url:
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as r:
            lines = r.iter_lines()  # kept: a dropped iterator closes the response, which is the disconnect
            first = [next(lines) for _ in range(3)]
            assert first[0].startswith("data: ")
            assert httpx.get(f"{url}/health", timeout=10).json()["active"] == 1
        gone = time.monotonic()
        while httpx.get(f"{url}/health", timeout=10).json()["active"] and time.monotonic() < gone + 10:
            time.sleep(0.01)
        assert httpx.get(f"{url}/health", timeout=10).json()["active"] == 0
        assert time.monotonic() - gone < 1.0 and app.state.engine.tokens_out < CTX // 2


def test_a_client_that_leaves_a_completion_unstreamed_frees_its_rows(gpt2_tokenizer) -> None:
    app = create_app(tiny("float32", Slow), gpt2_tokenizer, NAME)
    body = {"model": NAME, "prompt": "Long", "max_tokens": CTX - 4, "n": 2, "temperature": 0}
    with BackgroundServer(app) as url:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up after a second and closes the connection
            httpx.post(f"{url}/v1/completions", json=body, timeout=httpx.Timeout(30, read=1.0))
        gone = time.monotonic()
        assert wait_until(lambda: httpx.get(f"{url}/health", timeout=10).json()["active"] == 0)
        assert time.monotonic() - gone < 1.0 and app.state.engine.tokens_out < CTX


# ---------------------------------------------------------------------------------------------- the command
def test_serve_help(capsys) -> None:
    from gpt2.cli import main

    with pytest.raises(SystemExit) as e:
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    for option in ["--model", "--host", "--port", "--api-key", "--max-batch", "--device", "--dtype"]:
        assert option in out


def test_the_command_serves_a_model_folder(tmp_path, model, gpt2_tokenizer) -> None:
    from test_serve_shutdown import start_command

    model.save_pretrained(tmp_path / "m", tokenizer=gpt2_tokenizer)
    proc, url = start_command(tmp_path / "m", "--api-key", "k")
    try:
        with openai.OpenAI(base_url=f"{url}/v1", api_key="k", timeout=30, max_retries=0) as c:
            [card] = c.models.list().data
            assert card.id == "m"  # the folder's name, not the path given
            out = c.completions.create(model="m", prompt="Hi", max_tokens=5, temperature=0)
            assert out.choices[0].text == greedy(model, gpt2_tokenizer, "Hi", 5) and out.model == "m"
            assert c.completions.create(model=str(tmp_path / "m"), prompt="Hi", max_tokens=1).model == "m"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
