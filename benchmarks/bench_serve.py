"""`gpt2 serve` under load: 1, 4 and 16 concurrent streaming clients against `gpt2 generate`'s speed, same run.

Random weights in GPT-2's shapes (gpt2-mini and the 124M `gpt2`; they cost the compute of trained ones), a
32-token prompt and 128 new tokens per client, top-k 40 sampling with a seed per client (the paper's setting).
Each client streams over HTTP on loopback (httpx, Server-Sent Events, as the openai client does) and records
when each chunk of text arrives (one per token, except that bytes of a character split across tokens wait for
the rest): time to first token, the gaps between tokens (median, p95), and the total tokens/s of all clients
together (tokens from the usage counts). The baseline is what `gpt2 generate` runs for one prompt
(gpt2.generate.complete, no server) on the same model; it is timed just before each round, so load from other
processes on a shared machine hits both alike. Figures are medians over the repeats; ratios are each repeat's
ratio (against the baseline timed beside it, or the one-client round of the same repeat), then their median.

    python benchmarks/bench_serve.py                              # both shapes, 1/4/16 clients
    python benchmarks/bench_serve.py --shapes gpt2 --clients 1 16 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

import httpx
import torch

from gpt2 import GPT, GPTConfig
from gpt2.generate import SamplingOptions, complete
from gpt2.serve.app import create_app
from gpt2.serve.server import BackgroundServer
from gpt2.tokenizer import Tokenizer

VOCAB = Path(__file__).resolve().parents[2] / "shared" / "data" / "gpt2-vocab"
TEXT = (
    "The history of the city begins with a small settlement on the river, where traders from the north met "
    "farmers from the valley to exchange grain, wool and salt."
)


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))] if s else float("nan")


def baseline(model: GPT, tokenizer: Tokenizer, prompt: str, new: int, seed: int) -> float:
    """Tokens/s of `gpt2 generate --prompt P --max-new-tokens N --seed S` (its decoding, in process)."""
    options = SamplingOptions(1.0, 40, None, seed)
    start = time.perf_counter()
    for _ in complete(model, tokenizer, [prompt], new, options, stop_at_eot=False):  # no stop: all `new` tokens
        pass
    return new / (time.perf_counter() - start)


def one_client(url: str, body: dict, out: list, i: int, start: threading.Barrier) -> None:
    with httpx.Client(timeout=600) as client:
        start.wait()
        sent = time.perf_counter()
        arrivals: list[float] = []
        usage = None
        with client.stream("POST", f"{url}/v1/completions", json=body) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk["choices"] and chunk["choices"][0]["text"]:  # a chunk per token, but for held-back bytes
                    arrivals.append(time.perf_counter())
                usage = chunk.get("usage") or usage
        out[i] = (sent, arrivals, usage["completion_tokens"] if usage else len(arrivals))


def round_of(url: str, clients: int, prompt: list[int], new: int, name: str) -> dict[str, float]:
    results: list = [None] * clients
    start = threading.Barrier(clients)
    threads = []
    for i in range(clients):
        body = {"model": name, "prompt": prompt, "max_tokens": new, "stream": True, "seed": i, "top_k": 40}
        threads.append(threading.Thread(target=one_client, args=(url, body, results, i, start)))
    for t in threads:
        t.start()
    for t in threads:
        t.join(900)
    assert all(results), "a client did not finish"
    first_sent = min(r[0] for r in results)
    last = max(r[1][-1] for r in results)
    tokens = sum(r[2] for r in results)
    ttft = [r[1][0] - r[0] for r in results]
    gaps = [b - a for r in results for a, b in zip(r[1], r[1][1:], strict=False)]
    return {
        "tok_s": tokens / (last - first_sent),
        "ttft_med": statistics.median(ttft),
        "ttft_p95": percentile(ttft, 0.95),
        "gap_med": statistics.median(gaps),
        "gap_p95": percentile(gaps, 0.95),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["gpt2-mini", "gpt2"], help="model presets, random weights")
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--tokenizer", default=str(VOCAB), help="GPT-2's vocabulary folder")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    tokenizer = Tokenizer.from_pretrained(args.tokenizer)
    ids = (tokenizer.encode(TEXT) * 8)[: args.prompt_tokens]
    prompt = tokenizer.decode(ids)
    dtype = getattr(torch, args.dtype)
    print(f"torch threads {torch.get_num_threads()}, {args.dtype}, prompt {len(ids)} tokens, {args.new_tokens} new")
    for shape in args.shapes:
        torch.manual_seed(0)
        model = GPT(GPTConfig.from_name(shape)).to(dtype).eval()
        with BackgroundServer(create_app(model, tokenizer, shape, max_batch=max(args.clients))) as url:
            round_of(url, 1, ids, 8, shape)  # warm-up: the kernel build, allocation, first requests
            baseline(model, tokenizer, prompt, 8, 0)
            rows: dict[int, list[dict[str, float]]] = {c: [] for c in args.clients}
            for _ in range(args.repeats):
                for clients in args.clients:
                    base = baseline(model, tokenizer, prompt, args.new_tokens, 0)
                    rows[clients].append({**round_of(url, clients, ids, args.new_tokens, shape), "generate": base})
        first = args.clients[0]
        generate_tok_s = statistics.median(r["generate"] for runs in rows.values() for r in runs)
        print(f"\n{shape} ({model.num_params() / 1e6:.0f}M): gpt2 generate, one prompt: {generate_tok_s:.1f} tok/s")
        print(f"clients | total tok/s | vs {first} client(s) | vs generate | first token med / p95 | per token med/p95")
        for clients, runs in rows.items():
            m = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            # ratios within each repeat (the same minute of a shared machine's load), then their median
            ratio = statistics.median(r["tok_s"] / o["tok_s"] for r, o in zip(runs, rows[first], strict=True))
            vs_generate = statistics.median(r["tok_s"] / r["generate"] for r in runs)
            print(f"{clients:7d} | {m['tok_s']:11.1f} | {ratio:15.2f}x | {vs_generate:10.2f}x"
                  f" | {1000 * m['ttft_med']:7.0f} / {1000 * m['ttft_p95']:5.0f} ms"
                  f" | {1000 * m['gap_med']:6.1f} / {1000 * m['gap_p95']:5.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
