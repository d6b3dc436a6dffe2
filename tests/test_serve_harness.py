"""lm-evaluation-harness's `local-completions` model, which scores through any OpenAI-compatible server (token-id
prompts, echo, logprobs), run against `gpt2 serve`: its LAMBADA equals `gpt2 eval` on the same model, and its
HellaSwag scores the same with the prefix cache as without it (and as `gpt2 eval`)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import torch
from harness_docs import task
from test_evaluate_harness import llama_cpp_records
from test_serve_shutdown import start_command

from gpt2 import GPT, GPTConfig
from gpt2.evaluate import evaluate
from gpt2.evaluate.tasks import lambada
from gpt2.serve.app import create_app
from gpt2.serve.server import BackgroundServer
from gpt2.tokenizer import Tokenizer

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is a test-only oracle (the test extra)")
pytest.importorskip("transformers")  # the harness reads the model's tokenizer through it


@pytest.fixture(scope="module")
def folder(tmp_path_factory, gpt2_tokenizer) -> Path:
    """A small random GPT-2 with a 1,024-token window and GPT-2's vocabulary, as `gpt2 serve` and the harness
    (its tokenizer, through transformers) read it."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50257, n_positions=1024, n_layer=2, n_head=2, n_embd=64)).eval()
    path = tmp_path_factory.mktemp("harness-serve") / "m"
    model.save_pretrained(path, tokenizer=gpt2_tokenizer)
    return path


def harness_through(url: str, folder: Path, harness_task) -> tuple[dict, list[dict]]:  # noqa: ANN001
    """The harness's metrics and samples for one task, scored by the server at url, as `lm_eval --model
    local-completions --model_args base_url=URL/v1/completions,tokenizer=FOLDER`."""
    from lm_eval import evaluator
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    lm = LocalCompletionsAPI(base_url=f"{url}/v1/completions", model="m", tokenizer=str(folder),
                             tokenizer_backend="huggingface", max_length=1024, max_retries=1)  # fmt: skip
    out = evaluator.evaluate(lm, {"t": harness_task}, log_samples=True)
    return out["results"]["t"], sorted(out["samples"]["t"], key=lambda s: s["doc_id"])


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_lambada_through_the_server_is_gpt2_eval(shared_data, folder, tmp_path, dtype) -> None:
    passages = lambada.read_lambada(shared_data / "lambada/lambada_test.jsonl")[:60]
    model = GPT.from_pretrained(folder, dtype="int8" if dtype == "int8" else None)
    ours = evaluate(model, Tokenizer.from_pretrained(folder), "lambada", data_dir=shared_data, offline=True,
                    limit=60)["tasks"]["lambada"]  # fmt: skip
    proc, url = start_command(folder, "--dtype", dtype)
    try:
        harness = task("lambada/lambada_openai.yaml", [{"text": p} for p in passages], tmp_path, "test")
        metrics, samples = harness_through(url, folder, harness)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert ours["n"] == len(samples) == 60
    assert ours["acc"] == pytest.approx(100 * metrics["acc,none"])
    assert ours["ppl"] == pytest.approx(metrics["perplexity,none"], rel=1e-4)


def test_hellaswag_through_the_server_scores_the_same_with_the_prefix_cache(shared_data, folder, tmp_path) -> None:
    records = llama_cpp_records(shared_data, 30)
    (tmp_path / "hellaswag").mkdir()
    (tmp_path / "hellaswag" / "hellaswag_val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    model, tokenizer = GPT.from_pretrained(folder), Tokenizer.from_pretrained(folder)
    ours = evaluate(model, tokenizer, "hellaswag", data_dir=tmp_path, offline=True)["tasks"]["hellaswag"]
    runs = {}
    for size in (0, 256):
        with BackgroundServer(create_app(model, tokenizer, "m", prefix_cache_mb=size)) as url:
            (tmp_path / f"cache{size}").mkdir()
            harness = task("hellaswag/hellaswag.yaml", records, tmp_path / f"cache{size}", "validation")
            runs[size] = harness_through(url, folder, harness)
            hits = [line for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines()
                    if line.startswith("gpt2_prefix_cache_hit_tokens_total")]  # fmt: skip
        assert (float(hits[0].split()[1]) > 0) == (size > 0)
    (plain, plain_samples), (cached, cached_samples) = runs[0], runs[256]
    assert cached["acc,none"] == plain["acc,none"] and cached["acc_norm,none"] == plain["acc_norm,none"]
    for a, b in zip(plain_samples, cached_samples, strict=True):
        assert [ll for ll, _ in b["filtered_resps"]] == pytest.approx([ll for ll, _ in a["filtered_resps"]], abs=1e-4)
    assert ours["n"] == len(cached_samples) == 30
    assert ours["acc"] == pytest.approx(100 * cached["acc,none"])
    assert ours["acc_norm"] == pytest.approx(100 * cached["acc_norm,none"])
