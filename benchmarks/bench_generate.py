"""Sampling speed: tokens/s of our KV-cache decoding against transformers' `generate` and CTranslate2, same
weights, same run.

The issue's setting: batch 1, GPT-2 small's shape (124M; random weights cost the same compute as the official
ones, which cannot be downloaded here), a 32-token prompt, 128 new tokens, greedy, float32, bfloat16 and int8
(gpt2.quantize: int8 weights, float32 activations). Each repeat times ours, ours without gpt2.kernels' GEMV
("torch mm"; for int8 only with --int8-fallback: torch's matmul of weights dequantised per call), transformers and
CTranslate2 back to back, every dtype in every repeat (interleaved, so load from other processes hits all alike);
figures are medians over the repeats, ratios the median of each repeat's ratio.

Each family of decoders (ours, transformers, CTranslate2) runs each dtype in a worker process of its own, which
loads the saved folder and waits for the parent to ask for one timed generation at a time. Sharing a process
distorts both sides: on a 2-core AMD EPYC (Zen 4) VM, once CTranslate2 had generated in our process our int8
decoding fell from ~175 to ~105 tok/s until its Generator was deleted (torch's profiler: our kernel's parallel
regions and torch's attention 1.8-3x slower; CTranslate2 ships its own libgomp, so two OpenMP runtimes share the
cores), and CTranslate2's float32 ran at ~48 tok/s beside torch, or beside CTranslate2's own int8 Generator,
against ~71 on its own.

CTranslate2 is a peer when it is installed (`pip install ctranslate2`, a benchmark-only dependency): the saved
folder is converted once with its TransformersConverter (what `ct2-transformers-converter` runs) and loaded per
dtype with the compute types this CPU supports (`ctranslate2.get_supported_compute_types("cpu")`): float32 for
float32, bfloat16 where it exists, and int8 for int8 (CTranslate2's int8 also quantises the activations). The
converter wants a tokenizer; the folder gets a placeholder vocabulary of the model's size, as token strings are
all CTranslate2 takes.

Decoding one token reads every weight once, so memory bandwidth bounds tokens/s:
each repeat also measures the bandwidth, which neighbours on a shared machine move by tens of percent, and the
script prints that ceiling and the GB/s each decoder reaches (weight bytes x tokens/s). Weights larger than the
last-level cache are the honest case (GPT-2 small in float32 is 500 MB); a bfloat16 copy may partly fit in a
large L3, so its ceiling is only a guide. With --lookahead, a forward pass can yield several tokens, so its
"GB/s of weights" (one read of the weights counted per token) may pass the ceiling: that is what drafting is
for.

    python benchmarks/bench_generate.py                       # the issue's figures
    python benchmarks/bench_generate.py --repeats 9 --dtypes bfloat16 int8 --threads 2   # issue 16's targets
    python benchmarks/bench_generate.py --dtypes float32 --lookahead 4   # prompt-lookup decoding, both sides
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

import torch
import torch.nn.functional as F

from gpt2 import GPT, GPTConfig, kernels

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": "int8"}
CT2_COMPUTE = {"float32": "float32", "bfloat16": "bfloat16", "int8": "int8"}  # ours -> CTranslate2's compute type


def read_gbs(run, matrix: torch.Tensor) -> float:
    """GB/s at which run() reads a matrix larger than the caches: torch.sum for how fast this process streams
    memory right now, F.linear for torch's own one-row matmul (what decoding does without gpt2.kernels).
    Neighbours on a shared machine move the first by tens of percent between minutes, so each repeat measures,
    the best of three reads after a pause: a single read right after a worker's generation measured 25 GB/s
    against 47 this way on a 2-core Zen 4 VM (the workers' OpenMP threads still spinning, presumably)."""
    time.sleep(0.1)
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return matrix.numel() * matrix.element_size() / min(seconds) / 1e9


def bytes_per_token(model: GPT) -> int:
    """The bytes decoding reads once per token: every parameter and buffer (int8 scales), except a float
    embedding that an int8 output layer has replaced (lookups read one row of it per token)."""
    tensors = [*model.parameters(), *model.buffers()]
    total = sum(t.numel() * t.element_size() for t in tensors)
    wte = model.transformer.wte.weight
    if model.lm_head.weight is not wte:
        total -= wte.numel() * wte.element_size()
    return total


def ctranslate2_peer(folder: str, vocab_size: int) -> str | None:
    """The folder converted for CTranslate2, or None with the reason printed when it is not installed."""
    try:
        import ctranslate2
        from ctranslate2.converters import TransformersConverter
    except ImportError:
        print("  CTranslate2: not installed (pip install ctranslate2), left out")
        return None
    # The converter reads the vocabulary from a tokenizer: placeholders, the last being GPT-2's end of text.
    vocab = {f"t{i}": i for i in range(vocab_size - 1)} | {"<|endoftext|>": vocab_size - 1}
    (Path(folder) / "vocab.json").write_text(json.dumps(vocab))
    (Path(folder) / "merges.txt").write_text("#version: 0.2\n")
    out = str(Path(folder) / "ctranslate2")
    TransformersConverter(folder).convert(out, force=True)
    types = ctranslate2.get_supported_compute_types("cpu")
    print(f"  CTranslate2 {ctranslate2.__version__}: converted; compute types on this CPU: {', '.join(sorted(types))}")
    return out


Runs = dict[tuple[str, str], Callable[[torch.Tensor], torch.Tensor]]  # (dtype, decoder) -> one generation


def our_runs(folder: str, name: str, args: argparse.Namespace) -> tuple[Runs, dict[str, float]]:
    """Our decoders of one dtype, and the weight GB that dtype reads per token."""
    ours = GPT.from_pretrained(folder, dtype=DTYPES[name])
    n_new = args.new_tokens

    def plain(prompt: torch.Tensor) -> torch.Tensor:
        with kernels.disabled():
            return ours.generate(prompt, n_new, temperature=0)

    runs: Runs = {(name, "ours"): lambda prompt: ours.generate(prompt, n_new, temperature=0)}
    if name != "int8" or args.int8_fallback:
        runs[name, "ours, torch mm"] = plain
    if args.lookahead:
        runs[name, f"ours, lookahead {args.lookahead}"] = lambda prompt: ours.generate(
            prompt, n_new, temperature=0, lookahead=args.lookahead
        )
    return runs, {name: bytes_per_token(ours) / 1e9}


def transformers_runs(folder: str, name: str, args: argparse.Namespace) -> Runs:
    if name == "int8":  # transformers has no int8 CPU path of its own
        return {}
    from transformers import GPT2LMHeadModel

    theirs = GPT2LMHeadModel.from_pretrained(folder, dtype=DTYPES[name]).eval()
    theirs.generation_config.eos_token_id = None  # random weights: always run all new_tokens steps
    theirs.generation_config.pad_token_id = theirs.config.vocab_size - 1
    n_new = args.new_tokens

    def hf(prompt: torch.Tensor, **extra: int) -> torch.Tensor:
        with torch.inference_mode():
            return theirs.generate(prompt, do_sample=False, max_new_tokens=n_new, min_new_tokens=n_new, **extra)

    runs: Runs = {(name, "transformers"): hf}
    if args.lookahead:
        runs[name, f"transformers, lookahead {args.lookahead}"] = lambda prompt: hf(
            prompt, prompt_lookup_num_tokens=args.lookahead
        )
    return runs


def ctranslate2_runs(converted: str, name: str, args: argparse.Namespace) -> Runs:
    import ctranslate2

    if CT2_COMPUTE[name] not in ctranslate2.get_supported_compute_types("cpu"):
        print(f"  {name:8s} CTranslate2 has no {CT2_COMPUTE[name]} compute type on this CPU, left out")
        return {}
    generator = ctranslate2.Generator(
        converted, device="cpu", compute_type=CT2_COMPUTE[name], intra_threads=torch.get_num_threads()
    )

    def run(prompt: torch.Tensor) -> torch.Tensor:
        result = generator.generate_batch(
            [[f"t{i}" for i in prompt[0].tolist()]],
            max_length=args.new_tokens,
            min_length=args.new_tokens,
            sampling_topk=1,
            include_prompt_in_result=False,
            end_token=[],
        )
        return torch.cat([prompt, torch.tensor([result[0].sequences_ids[0]])], dim=1)

    return {(name, "ctranslate2"): run}


def worker(family: str, name: str, source: str, args: argparse.Namespace, conn: Connection) -> None:
    """One family's decoders of one dtype in a process of their own: build them, then time one generation per
    request ((dtype, decoder), prompt) until None arrives."""
    if args.threads:
        torch.set_num_threads(args.threads)
    weight_gb: dict[str, float] = {}
    if family == "ours":
        runs, weight_gb = our_runs(source, name, args)
    elif family == "transformers":
        runs = transformers_runs(source, name, args)
    else:
        runs = ctranslate2_runs(source, name, args)
    conn.send((list(runs), weight_gb))
    if not runs:  # nothing of this family in this dtype
        return
    while (request := conn.recv()) is not None:
        key, prompt = request
        start = time.perf_counter()
        out = runs[key](prompt)
        conn.send((args.new_tokens / (time.perf_counter() - start), out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt2", help="preset shape to build with random weights (gpt2)")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-transformers", action="store_true", help="leave transformers out")
    parser.add_argument("--no-ctranslate2", action="store_true", help="leave CTranslate2 out")
    parser.add_argument(
        "--int8-fallback",
        action="store_true",
        help="also time int8 without the kernel (weights dequantised per call; slow, so off by default)",
    )
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
    folder = tempfile.mkdtemp()  # every decoder loads the same saved weights, as `gpt2 generate` and users do
    ours32.save_pretrained(folder)
    sources = {"ours": folder}
    if not args.no_transformers:
        sources["transformers"] = folder
    if not args.no_ctranslate2:
        converted = ctranslate2_peer(folder, ours32.config.vocab_size)
        if converted is not None:
            sources["ctranslate2"] = converted
    n_new = args.new_tokens
    print(
        f"{args.model} ({ours32.num_params() / 1e6:.0f}M), batch 1, {args.prompt_tokens}-token prompt, {n_new} new "
        f"tokens, greedy; torch {torch.__version__}, {torch.get_num_threads()} threads, {args.repeats} repeats"
    )
    del ours32
    big = torch.randn(2**27)  # 512 MB, larger than any last-level cache here
    big_matrix, big_vector = big.view(-1, 1024), torch.randn(1, 1024)
    print(f"  fast CPU kernel (gpt2.kernels): {'built' if kernels.gemv_kernel() else 'unavailable, torch matmul'}")
    print("  ceiling: memory read bandwidth (torch.sum over 512 MB) / weight bytes per token")
    context = multiprocessing.get_context("spawn")
    owner: dict[tuple[str, str], Connection] = {}  # (dtype, decoder) -> the pipe of the worker that runs it
    weight_gb: dict[str, float] = {}
    processes = []
    for family, source in sources.items():
        for name in args.dtypes:
            mine, theirs = context.Pipe()
            process = context.Process(target=worker, args=(family, name, source, args, theirs), daemon=True)
            process.start()
            processes.append(process)
            keys, gb = mine.recv()
            weight_gb |= gb
            owner |= {tuple(key): mine for key in keys}

    def timed(key: tuple[str, str]) -> tuple[float, torch.Tensor]:
        owner[key].send((key, prompt))
        return owner[key].recv()

    order = sorted(owner, key=lambda k: (args.dtypes.index(k[0]), k[1]))
    for key in order:  # warm-up: one-time allocations and kernel selection
        timed(key)
    # Every decoder of every dtype in each repeat, so that ratios across dtypes (our int8 against our bfloat16
    # and CTranslate2's int8) compare the same minutes of a shared machine too.
    rates: dict[tuple[str, str], list[float]] = {k: [] for k in order}
    bandwidth: dict[str, list[float]] = {"memory": [], "torch GEMV": []}
    outputs: dict[tuple[str, str], torch.Tensor] = {}
    for _ in range(args.repeats):
        bandwidth["memory"].append(read_gbs(big_matrix.sum, big_matrix))
        bandwidth["torch GEMV"].append(read_gbs(lambda: F.linear(big_vector, big_matrix), big_matrix))
        for key in order:
            rate, outputs[key] = timed(key)
            rates[key].append(rate)
    for conn in set(owner.values()):
        conn.send(None)
    for process in processes:
        process.join()
    memory, torch_gemv = (statistics.median(v) for v in bandwidth.values())
    print(f"  memory {memory:.1f} GB/s, torch's GEMV {torch_gemv:.1f} GB/s (medians)")

    def ratio(mine: tuple[str, str], other: tuple[str, str]) -> str:
        # Ratios per repeat, then their median: both sides of a ratio saw the same minute of the machine.
        value = statistics.median(o / t for o, t in zip(rates[mine], rates[other], strict=True))
        return f"{value:.2f}x  (greedy ids identical: {torch.equal(outputs[mine], outputs[other])})"

    width = max(len(k[1]) for k in rates)
    for name in args.dtypes:
        gb = weight_gb[name]
        print(f"  {name:8s} {'ceiling':{width}s} {memory / gb:6.1f} tok/s ({gb * 1e3:.0f} MB read per token)")
        for (dtype_name, key), values in rates.items():
            if dtype_name == name:
                rate = statistics.median(values)
                spread = f"{min(values):.1f}-{max(values):.1f}"
                gbs = rate * gb
                print(f"  {name:8s} {key:{width}s} {rate:6.1f} tok/s (range {spread}), {gbs:5.1f} GB/s of weights")
        pairs = [("ours", "ours, torch mm"), ("ours", "transformers"), ("ours", "ctranslate2")]
        if args.lookahead:
            pairs.append((f"ours, lookahead {args.lookahead}", f"transformers, lookahead {args.lookahead}"))
        for mine, other in pairs:
            if (name, mine) in rates and (name, other) in rates:
                print(f"  {name:8s} ratio {mine} / {other}: {ratio((name, mine), (name, other))}")
        if args.lookahead:
            same = torch.equal(outputs[name, "ours"], outputs[name, f"ours, lookahead {args.lookahead}"])
            print(f"  {name:8s} ours with lookahead gives the same ids as without: {same}")
    # issue 16's targets: our int8 >= 1.2x CTranslate2's int8 and >= 1.6x our bfloat16; our bfloat16 >= theirs
    for mine, other in [
        (("int8", "ours"), ("int8", "ctranslate2")),
        (("int8", "ours"), ("bfloat16", "ours")),
        (("int8", "ours"), ("float32", "ours")),
        (("bfloat16", "ours"), ("int8", "ctranslate2")),
        (("float32", "ours"), ("float32", "ctranslate2")),
    ]:
        if mine in rates and other in rates:
            print(f"  ratio {mine[1]} {mine[0]} / {other[1]} {other[0]}: {ratio(mine, other)}")
    shutil.rmtree(folder)


if __name__ == "__main__":
    main()
