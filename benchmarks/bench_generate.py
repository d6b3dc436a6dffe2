"""Sampling speed: tokens/s of our KV-cache decoding against transformers' `generate`, same weights, same run.

The issue's setting: batch 1, GPT-2 small's shape (124M; random weights cost the same compute as the official
ones, which cannot be downloaded here), a 32-token prompt, 128 new tokens, greedy, float32 and bfloat16.
Each repeat times ours and theirs back to back (interleaved, so load from other processes hits both alike);
the figures are medians over the repeats. Decoding one token reads every weight once, so memory bandwidth
bounds tokens/s: the script measures the bandwidth first and prints that ceiling, and the GB/s each reaches
(weight bytes x tokens/s). Weights larger than the last-level cache are the honest case (GPT-2 small in
float32 is 500 MB); a bfloat16 copy may partly fit in a large L3, so its ceiling is only a guide.

    python benchmarks/bench_generate.py                       # the issue's figures
    python benchmarks/bench_generate.py --repeats 9 --dtypes float32 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import shutil
import statistics
import tempfile
import time

import torch

from gpt2 import GPT, GPTConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def tokens_per_second(run, new_tokens: int) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = run()
    return new_tokens / (time.perf_counter() - start), out


def read_bandwidth_gbs(nbytes: int = 512 * 2**20, repeats: int = 5) -> float:
    """The read bandwidth torch's float32 matrix-vector product reaches over more memory than caches hold (the
    access pattern of batch-1 decoding), median of repeats. A kernel's ceiling, not the memory's: plain streaming
    reads (torch.sum) go faster on some machines (~70 GB/s against ~21 here)."""
    matrix = torch.randn(nbytes // 4 // 1024, 1024)
    vector = torch.randn(1024)
    seconds = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        torch.mv(matrix, vector)
        seconds.append(time.perf_counter() - start)
    return nbytes / statistics.median(seconds[1:]) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt2", help="preset shape to build with random weights (gpt2)")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-transformers", action="store_true", help="time ours only")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    ours32 = GPT(GPTConfig.from_name(args.model)).eval()
    prompt = torch.randint(0, ours32.config.vocab_size - 1, (1, args.prompt_tokens))
    folder = tempfile.mkdtemp()  # both load the same saved weights, as `gpt2 generate` and users do
    ours32.save_pretrained(folder)
    theirs32 = None
    if not args.no_transformers:
        from transformers import GPT2LMHeadModel

        theirs32 = GPT2LMHeadModel.from_pretrained(folder).eval()
        theirs32.generation_config.eos_token_id = None  # random weights: always run all new_tokens steps
        theirs32.generation_config.pad_token_id = ours32.config.vocab_size - 1

    n_new = args.new_tokens
    print(
        f"{args.model} ({ours32.num_params() / 1e6:.0f}M), batch 1, {args.prompt_tokens}-token prompt, {n_new} new "
        f"tokens, greedy; torch {torch.__version__}, {torch.get_num_threads()} threads, {args.repeats} repeats"
    )
    bandwidth = read_bandwidth_gbs()
    print(f"  GEMV read bandwidth {bandwidth:.1f} GB/s: the ceiling is that divided by the weight bytes per token")
    for name in args.dtypes:
        dtype = DTYPES[name]
        ours = GPT.from_pretrained(folder, dtype=dtype)
        weight_gb = sum(p.numel() * p.element_size() for p in ours.parameters()) / 1e9
        print(f"  {name:8s} ceiling      {bandwidth / weight_gb:6.1f} tok/s ({weight_gb * 1e3:.0f} MB of weights)")
        runs = {"ours": lambda ours=ours: ours.generate(prompt, n_new, temperature=0)}
        if theirs32 is not None:
            theirs = copy.deepcopy(theirs32).to(dtype)

            def hf(theirs=theirs) -> torch.Tensor:
                with torch.inference_mode():
                    return theirs.generate(prompt, do_sample=False, max_new_tokens=n_new, min_new_tokens=n_new)

            runs["transformers"] = hf
        for run in runs.values():  # warm-up: one-time allocations and kernel selection
            run()
        rates: dict[str, list[float]] = {k: [] for k in runs}
        outputs: dict[str, torch.Tensor] = {}
        for _ in range(args.repeats):
            for key, run in runs.items():
                rate, outputs[key] = tokens_per_second(run, n_new)
                rates[key].append(rate)
        medians = {k: statistics.median(v) for k, v in rates.items()}
        for key, rate in medians.items():
            spread = f"{min(rates[key]):.1f}-{max(rates[key]):.1f}"
            print(f"  {name:8s} {key:12s} {rate:6.1f} tok/s (range {spread}), {rate * weight_gb:5.1f} GB/s of weights")
        if "transformers" in medians:
            same = torch.equal(outputs["ours"], outputs["transformers"])
            print(
                f"  {name:8s} ratio ours/transformers: {medians['ours'] / medians['transformers']:.2f}x"
                f"  (greedy ids identical: {same})"
            )

    shutil.rmtree(folder)


if __name__ == "__main__":
    main()
