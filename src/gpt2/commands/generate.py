"""`gpt2 generate`: sample text from a model (top-k 40 by default, as in the paper's samples)."""

from __future__ import annotations

import argparse
import sys

from gpt2.commands import add_device_options, load_model
from gpt2.errors import GPT2Error


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpt2 generate",
        description="Sample text from a GPT-2 model: prints the prompt followed by each completion.",
    )
    p.add_argument(
        "--model", required=True, help="a model folder (config.json + model.safetensors + tokenizer), or gpt2, ..."
    )
    p.add_argument("--prompt", help="the text to continue; read from stdin when omitted or '-'")
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens to sample per completion (128)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature; 0 is greedy (1.0)")
    p.add_argument("--top-k", type=int, default=40, help="sample from the k likeliest tokens; 0 for all (40)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling: smallest set with this mass")
    p.add_argument("--seed", type=int, default=None, help="random seed; the same seed gives the same text")
    p.add_argument("--num-samples", type=int, default=1, help="completions of the prompt (1)")
    p.add_argument("--stop", action="append", default=[], help="end a completion before this text (repeatable)")
    p.add_argument("--stream", action="store_true", help="print text as it is sampled (samples one by one)")
    p.add_argument(
        "--lookahead",
        type=int,
        default=0,
        help="check up to K tokens copied from earlier in the text per forward pass: same output (greedy) or same "
        "distribution (sampling), faster on repetitive text; one sample at a time (0: off)",
    )
    add_device_options(p, "auto", "auto: bfloat16 on a GPU that has it, else float32")
    return p


def read_prompt(arg: str | None) -> str:
    """The prompt from --prompt, or from stdin when it is omitted or '-' (one trailing newline dropped)."""
    if arg is not None and arg != "-":
        return arg
    if sys.stdin is None:
        raise GPT2Error("no --prompt given and no stdin to read it from")
    if sys.stdin.isatty():
        print("reading the prompt from stdin; end it with Ctrl-D", file=sys.stderr)
    text = sys.stdin.read()
    return text.removesuffix("\n").removesuffix("\r")


def header(i: int, n: int) -> None:
    """A line between samples, as OpenAI's sampling script prints it; nothing when there is one sample."""
    if n > 1:
        print(f"{'=' * 30} SAMPLE {i + 1} of {n} {'=' * 30}", flush=True)


def run(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    if args.max_new_tokens < 0:
        raise GPT2Error(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    if args.top_k < 0:
        raise GPT2Error(f"--top-k must be >= 0 (0 means no limit), got {args.top_k}")
    if args.num_samples < 1:
        raise GPT2Error(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.lookahead < 0:
        raise GPT2Error(f"--lookahead must be >= 0, got {args.lookahead}")
    from dataclasses import replace

    from gpt2.generate import SamplingOptions, collect, complete

    options = SamplingOptions(args.temperature, args.top_k or None, args.top_p, args.seed, args.lookahead)
    model, tokenizer, _ = load_model(args.model, None, args.device, args.dtype)
    prompt = read_prompt(args.prompt)  # after loading, so that a bad --model fails before anyone types a prompt
    n = args.num_samples
    if args.stream or args.lookahead:  # samples one by one (lookahead decodes a single row)
        for i in range(n):
            header(i, n)
            print(prompt, end="", flush=True)
            seed = None if args.seed is None else args.seed + i
            pieces = complete(
                model, tokenizer, [prompt], args.max_new_tokens, replace(options, seed=seed), stop=args.stop
            )
            if args.stream:
                for _, piece in pieces:
                    print(piece, end="", flush=True)
                print(flush=True)
            else:
                print("".join(piece for _, piece in pieces), flush=True)
        return
    texts = collect(complete(model, tokenizer, [prompt] * n, args.max_new_tokens, options, stop=args.stop), n)
    for i, text in enumerate(texts):
        header(i, n)
        print(prompt + text, flush=True)
