"""Sampling speed: tokens/s of our KV-cache decoding against transformers' `generate`, same weights, same run.

The issue's setting: batch 1, GPT-2 small's shape (124M; random weights cost the same compute as the official
ones, which cannot be downloaded here), a 32-token prompt, 128 new tokens, greedy, float32 and bfloat16.
Each repeat times ours, ours without gpt2.kernels' GEMV ("torch mm") and transformers back to back
(interleaved, so load from other processes hits all alike); figures are medians over the repeats, ratios the
median of each repeat's ratio. Decoding one token reads every weight once, so memory bandwidth bounds tokens/s:
each repeat also measures the bandwidth, which neighbours on a shared machine move by tens of percent, and the
script prints that ceiling and the GB/s each decoder reaches (weight bytes x tokens/s). Weights larger than the
last-level cache are the honest case (GPT-2 small in float32 is 500 MB); a bfloat16 copy may partly fit in a
large L3, so its ceiling is only a guide. With --lookahead, a forward pass can yield several tokens, so its
"GB/s of weights" (one read of the weights counted per token) may pass the ceiling: that is what drafting is
for.

    python benchmarks/bench_generate.py                       # the issue's figures
    python benchmarks/bench_generate.py --repeats 9 --dtypes float32 --threads 2
    python benchmarks/bench_generate.py --dtypes float32 --lookahead 4   # prompt-lookup decoding, both sides
"""

from __future__ import annotations

import argparse
import copy
import shutil
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from gpt2 import GPT, GPTConfig, kernels

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def tokens_per_second(run, new_tokens: int) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = run()
    return new_tokens / (time.perf_counter() - start), out


def read_gbs(run, matrix: torch.Tensor) -> float:
    """GB/s at which run() reads a matrix larger than the caches: torch.sum for how fast this process streams
    memory right now, F.linear for torch's own one-row matmul (what decoding does without gpt2.kernels).
    Neighbours on a shared machine move the first by tens of percent between minutes, so each repeat measures."""
    start = time.perf_counter()
    run()
    return matrix.numel() * matrix.element_size() / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt2", help="preset shape to build with random weights (gpt2)")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-transformers", action="store_true", help="time ours only")
    parser.add_argument(
        "--lookahead",
        type=int,
        default=0,
        help="also time prompt-lookup decoding with K drafts, ours against transformers' prompt_lookup_num_tokens=K",
    )
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
    big = torch.randn(2**27)  # 512 MB, larger than any last-level cache here
    big_matrix, big_vector = big.view(-1, 1024), torch.randn(1, 1024)
    print(f"  fast CPU kernel (gpt2.kernels): {'built' if kernels.gemv_kernel() else 'unavailable, torch matmul'}")
    print("  ceiling: memory read bandwidth (torch.sum over 512 MB) / weight bytes per token")
    for name in args.dtypes:
        dtype = DTYPES[name]
        ours = GPT.from_pretrained(folder, dtype=dtype)
        weight_gb = sum(p.numel() * p.element_size() for p in ours.parameters()) / 1e9

        def plain(ours=ours) -> torch.Tensor:
            with kernels.disabled():
                return ours.generate(prompt, n_new, temperature=0)

        runs = {"ours": lambda ours=ours: ours.generate(prompt, n_new, temperature=0), "ours, torch mm": plain}
        if args.lookahead:
            runs[f"ours, lookahead {args.lookahead}"] = lambda ours=ours: ours.generate(
                prompt, n_new, temperature=0, lookahead=args.lookahead
            )
        if theirs32 is not None:
            theirs = copy.deepcopy(theirs32).to(dtype)

            def hf(theirs=theirs) -> torch.Tensor:
                with torch.inference_mode():
                    return theirs.generate(prompt, do_sample=False, max_new_tokens=n_new, min_new_tokens=n_new)

            runs["transformers"] = hf

            if args.lookahead:

                def hf_lookup(theirs=theirs) -> torch.Tensor:
                    with torch.inference_mode():
                        return theirs.generate(
                            prompt,
                            do_sample=False,
                            max_new_tokens=n_new,
                            min_new_tokens=n_new,
                            prompt_lookup_num_tokens=args.lookahead,
                        )

                runs[f"transformers, lookahead {args.lookahead}"] = hf_lookup
        for run in runs.values():  # warm-up: one-time allocations and kernel selection
            run()
        rates: dict[str, list[float]] = {k: [] for k in runs}
        bandwidth: dict[str, list[float]] = {"memory": [], "torch GEMV": []}
        outputs: dict[str, torch.Tensor] = {}
        for _ in range(args.repeats):
            bandwidth["memory"].append(read_gbs(big_matrix.sum, big_matrix))
            bandwidth["torch GEMV"].append(read_gbs(lambda: F.linear(big_vector, big_matrix), big_matrix))
            for key, run in runs.items():
                rate, outputs[key] = tokens_per_second(run, n_new)
                rates[key].append(rate)
        memory, torch_gemv = (statistics.median(v) for v in bandwidth.values())
        print(
            f"  {name:8s} ceiling        {memory / weight_gb:6.1f} tok/s ({weight_gb * 1e3:.0f} MB of weights; "
            f"memory {memory:.1f} GB/s, torch's GEMV {torch_gemv:.1f} GB/s)"
        )
        width = max(len(k) for k in rates)
        for key, values in rates.items():
            rate = statistics.median(values)
            spread = f"{min(values):.1f}-{max(values):.1f}"
            gbs = rate * weight_gb
            print(f"  {name:8s} {key:{width}s} {rate:6.1f} tok/s (range {spread}), {gbs:5.1f} GB/s of weights")
        # Ratios per repeat, then their median: both sides of a ratio saw the same minute of the machine.
        pairs = [("ours", "ours, torch mm"), ("ours", "transformers")]
        if args.lookahead:
            pairs.append((f"ours, lookahead {args.lookahead}", f"transformers, lookahead {args.lookahead}"))
        for mine, other in pairs:
            if other in rates:
                ratio = statistics.median(o / t for o, t in zip(rates[mine], rates[other], strict=True))
                same = torch.equal(outputs[mine], outputs[other])
                print(f"  {name:8s} ratio {mine} / {other}: {ratio:.2f}x  (greedy ids identical: {same})")
        if args.lookahead:
            same = torch.equal(outputs["ours"], outputs[f"ours, lookahead {args.lookahead}"])
            print(f"  {name:8s} ours with lookahead gives the same ids as without: {same}")

    shutil.rmtree(folder)


if __name__ == "__main__":
    main()
