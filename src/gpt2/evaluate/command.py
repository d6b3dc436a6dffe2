"""`gpt2 eval`: run the evaluation suite on one or more checkpoints; print the Markdown table, write the JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from gpt2.errors import GPT2Error


def parser() -> argparse.ArgumentParser:
    from gpt2.evaluate.tasks import TASKS

    p = argparse.ArgumentParser(
        prog="gpt2 eval",
        description="Zero/few-shot evaluation with the paper's protocols; prints a table beside the paper's figures.",
        epilog=f"tasks: {', '.join(TASKS)} (or 'all')",
    )
    p.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="PATH_OR_NAME",
        help="model folder or official name (gpt2, gpt2-medium, gpt2-large, gpt2-xl); repeat for several rows",
    )
    p.add_argument("--tokenizer", metavar="PATH_OR_NAME", help="tokenizer folder or name (default: each model's own)")
    p.add_argument("--tasks", required=True, help="comma-separated task names, or 'all'")
    p.add_argument("--data-dir", type=Path, help="folder laid out as ../shared/data (default: the download cache)")
    p.add_argument("--offline", action="store_true", help="never download: a missing data file is an error")
    p.add_argument("--shots", type=int, help="few-shot examples per prompt (default: each task's own protocol)")
    p.add_argument("--limit", type=int, help="evaluate only the first N examples of each task, in file order")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass (default 16)")
    p.add_argument(
        "--stride", type=int, help="perplexity windows' stride (default: the context, disjoint; the paper: 32)"
    )
    p.add_argument("--seed", type=int, default=0, help="few-shot sampling and top-k sampling seed (default 0)")
    p.add_argument("--cbt-split", choices=("valid", "test"), default="valid", help="CBT split (default valid)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--output", type=Path, help="write the results JSON here (atomically)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str], stderr: TextIO = sys.stderr) -> None:
    import torch

    from gpt2.checkpoint import atomic_write
    from gpt2.evaluate import evaluate, parse_tasks
    from gpt2.evaluate.report import markdown_table
    from gpt2.model import GPT
    from gpt2.tokenizer import Tokenizer

    args = parser().parse_args(argv)
    tasks = parse_tasks(args.tasks)  # fail on a typo before loading anything
    if args.output is not None and args.output.is_dir():
        raise GPT2Error(f"--output {args.output} is a folder; give a file name such as results.json")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise GPT2Error("--device cuda: no CUDA device is available (use --device cpu or auto)")
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    runs: list[dict[str, Any]] = []
    for name in args.model:
        model = GPT.from_pretrained(name, device=device, dtype=dtype)
        tokenizer = Tokenizer.from_pretrained(args.tokenizer or name)
        print(f"{name}: {model.num_params():,} parameters on {device} ({args.dtype})", file=stderr, flush=True)
        runs.append(
            evaluate(
                model,
                tokenizer,
                tasks,
                data_dir=args.data_dir,
                offline=args.offline,
                shots=args.shots,
                limit=args.limit,
                batch_size=args.batch_size,
                stride=args.stride,
                seed=args.seed,
                cbt_split=args.cbt_split,
                model_name=name,
                progress=not args.no_progress and stderr.isatty(),
                log=stderr,
            )
        )
        del model
        if args.output is not None:  # after every model, so that a later failure loses nothing
            payload = runs[0] if len(args.model) == 1 else runs
            atomic_write(args.output, (json.dumps(payload, indent=2) + "\n").encode())
            print(f"wrote {args.output}", file=stderr)
    print(markdown_table(runs))
