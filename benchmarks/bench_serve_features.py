"""`gpt2 serve`'s prefix cache and chunked prefill, each against the server without it.

prefix: lm-evaluation-harness's HellaSwag (its own task and `local-completions` model, which sends each of a
    context's four endings as its own token-id prompt with echo and logprobs) on the first --docs tasks of the
    shared validation set, scored through the server with the prefix cache and without it: the harness's wall time,
    and its acc / acc_norm, which must be identical.
prefill: --streams streams decoding (top-k 40, a seed each) when a --prompt-tokens prompt joins: the worst gap
    between two tokens of any stream, from the long prompt's arrival until its first token, with the prompt
    prefilled in chunks of --chunk tokens between decode steps and in one piece (a chunk as long as the context).

Random weights in GPT-2's shapes (they cost the compute of trained ones), float32. Each contender runs in a process
of its own (this script, with --run), one after the other, their order alternating between repeats; the figures are
medians over the repeats, and the ratios each repeat's ratio, then their median.

    python benchmarks/bench_serve_features.py prefix --shape gpt2 --docs 100 --repeats 3 [--shots 5]
    python benchmarks/bench_serve_features.py prefill --shape gpt2 --streams 8 --prompt-tokens 1000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TESTS = Path(__file__).resolve().parents[1] / "tests"  # the harness helpers live beside the tests that use them


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def server_app(shape: str, **options: float):  # noqa: ANN201
    """The app serving random weights of a shape, the model and its tokenizer."""
    from gpt2 import GPT, GPTConfig
    from gpt2.serve.app import create_app
    from gpt2.tokenizer import Tokenizer

    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name(shape)).eval()
    tokenizer = Tokenizer.from_pretrained(SHARED / "gpt2-vocab")
    return create_app(model, tokenizer, "m", **options), model, tokenizer


# ------------------------------------------------------------------------------------------------------ prefix
def run_prefix(args: argparse.Namespace, cache_mb: float) -> dict[str, float]:
    sys.path.insert(0, str(TESTS))
    from harness_docs import task
    from lm_eval import evaluator
    from lm_eval.models.openai_completions import LocalCompletionsAPI
    from test_evaluate_harness import llama_cpp_records

    from gpt2.serve.server import BackgroundServer

    app, model, tokenizer = server_app(args.shape, prefix_cache_mb=cache_mb)
    records = llama_cpp_records(SHARED, args.docs)
    with tempfile.TemporaryDirectory() as tmp, BackgroundServer(app) as url:
        folder = Path(tmp)
        model.save_pretrained(folder, tokenizer)  # the harness counts context tokens with its tokenizer (transformers)

        def harness(docs: list[dict], name: str) -> dict:
            (folder / name).mkdir()
            lm = LocalCompletionsAPI(base_url=f"{url}/v1/completions", model="m", tokenizer=str(folder),
                                     tokenizer_backend="huggingface", max_length=1024)  # fmt: skip
            # few-shot examples from the same tasks (never the one asked: the harness leaves it out)
            shots = {"num_fewshot": args.shots, "fewshot_split": "validation"} if args.shots else {}
            harness_task = task("hellaswag/hellaswag.yaml", docs, folder / name, "validation", **shots)
            harness_task.set_fewshot_seed(seed=1234)  # the same examples in every run (simple_evaluate's default)
            return evaluator.evaluate(lm, {"t": harness_task})["results"]["t"]

        # the kernels' build, allocation, the first requests
        harness(llama_cpp_records(SHARED, args.shots + 2), "warmup")
        start = time.perf_counter()
        metrics = harness(records, "run")
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "acc": metrics["acc,none"], "acc_norm": metrics["acc_norm,none"]}


# ------------------------------------------------------------------------------------------------------ prefill
def run_prefill(args: argparse.Namespace, chunk: int) -> dict[str, float]:
    import httpx

    from gpt2.serve.server import BackgroundServer

    app, _, tokenizer = server_app(args.shape, prefill_chunk=chunk, prefix_cache_mb=0)
    long_prompt = (tokenizer.encode(Path(__file__).read_text()) * 4)[: args.prompt_tokens]
    arrivals: list[list[float]] = [[] for _ in range(args.streams)]
    joined: dict[str, float] = {}

    def stream(i: int, url: str) -> None:
        body = {"model": "m", "prompt": f"Stream {i} begins here:", "max_tokens": args.stream_tokens, "seed": i,
                "stream": True, "top_k": 40}  # fmt: skip
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=600) as r:
            for line in r.iter_lines():
                if line.startswith("data: {") and json.loads(line[6:])["choices"]:
                    arrivals[i].append(time.perf_counter())

    def warm_up(url: str, i: int) -> None:  # the kernels' build, and the batch's cache grown to all its rows
        httpx.post(f"{url}/v1/completions", json={"model": "m", "prompt": f"Warm-up {i}", "max_tokens": 4}, timeout=600)

    with BackgroundServer(app) as url:
        httpx.post(f"{url}/v1/completions", json={"model": "m", "prompt": long_prompt, "max_tokens": 1}, timeout=600)
        threads = [threading.Thread(target=warm_up, args=(url, i)) for i in range(args.streams + 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        threads = [threading.Thread(target=stream, args=(i, url)) for i in range(args.streams)]
        for t in threads:
            t.start()
        while min(len(a) for a in arrivals) < 10:  # every stream decoding
            time.sleep(0.01)
        joined["sent"] = time.perf_counter()
        body = {"model": "m", "prompt": long_prompt, "max_tokens": 2, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=600) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    joined["first"] = time.perf_counter()
                    break
        for t in threads:
            t.join()
    start, end = joined["sent"], joined["first"]
    gaps = [b - a for times in arrivals for a, b in zip(times, times[1:], strict=False) if b > start and a < end]
    before = [b - a for times in arrivals for a, b in zip(times, times[1:], strict=False) if b < start]
    assert all(len(times) and times[-1] > end for times in arrivals), "a stream ended before the long prompt joined"
    return {"worst_gap": max(gaps), "usual_gap": statistics.median(before), "long_first_token": end - start}


# ------------------------------------------------------------------------------------------------------ driver
def contenders(args: argparse.Namespace) -> dict[str, float]:
    if args.what == "prefix":
        return {"cache": args.cache_mb, "no cache": 0}
    return {f"chunks of {args.chunk}": args.chunk, "one piece": 1 << 20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["prefix", "prefill"])
    parser.add_argument("--shape", default="gpt2", help="a model preset, random weights (gpt2: 124M)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--docs", type=int, default=100, help="prefix: HellaSwag tasks")
    parser.add_argument("--cache-mb", type=float, default=1024, help="prefix: the cache's size")
    parser.add_argument("--shots", type=int, default=0, help="prefix: few-shot examples before each context")
    parser.add_argument("--streams", type=int, default=8, help="prefill: streams in flight")
    parser.add_argument("--stream-tokens", type=int, default=400, help="prefill: tokens each stream asks for")
    parser.add_argument("--prompt-tokens", type=int, default=1000, help="prefill: the joining prompt's length")
    parser.add_argument("--chunk", type=int, default=256, help="prefill: tokens per chunk (the server's default)")
    parser.add_argument("--run", type=float, help=argparse.SUPPRESS)  # one contender, in this process
    args = parser.parse_args()
    if args.run is not None:
        result = run_prefix(args, args.run) if args.what == "prefix" else run_prefill(args, int(args.run))
        print(json.dumps(result))
        return

    print(f"CPU: {cpu_model()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"command: python {' '.join(sys.argv)}")
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in contenders(args)}
    for repeat in range(args.repeats):
        order = list(contenders(args).items())
        for name, value in order if repeat % 2 == 0 else reversed(order):
            argv = [sys.executable, __file__, *sys.argv[1:], "--run", str(value)]
            done = subprocess.run(argv, capture_output=True, text=True, check=False)
            if done.returncode:
                raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"  repeat {repeat + 1}, {name}: {runs[name][-1]}", flush=True)
    (a, ours), (b, theirs) = runs.items()
    if args.what == "prefix":
        scores = {(r["acc"], r["acc_norm"]) for r in ours + theirs}
        print(f"\nHellaSwag, {args.docs} tasks, {args.shots}-shot, through lm-evaluation-harness, {args.shape}: "
              f"acc / acc_norm {scores}"
              f" ({'identical' if len(scores) == 1 else 'DIFFERENT'} with and without the cache)")  # fmt: skip
        for name, rs in runs.items():
            print(f"{name:>9}: {statistics.median(r['seconds'] for r in rs):7.1f} s (median of {len(rs)})")
        speedup = statistics.median(t["seconds"] / o["seconds"] for o, t in zip(ours, theirs, strict=True))
        print(f"speed-up with the cache: {speedup:.2f}x")
    else:
        print(f"\n{args.streams} streams decoding while a {args.prompt_tokens}-token prompt joins, {args.shape}:")
        for name, rs in runs.items():
            m = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
            print(f"{name:>14}: worst gap {1000 * m['worst_gap']:7.0f} ms (usual {1000 * m['usual_gap']:4.0f} ms)"
                  f", the long prompt's first token after {m['long_first_token']:.2f} s")  # fmt: skip
        ratio = statistics.median(t["worst_gap"] / o["worst_gap"] for o, t in zip(ours, theirs, strict=True))
        print(f"worst gap {ratio:.1f}x shorter in chunks")


if __name__ == "__main__":
    main()
