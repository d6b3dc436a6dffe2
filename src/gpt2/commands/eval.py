"""`gpt2 eval`: run the evaluation suite on one or more checkpoints; print the Markdown table, write the JSON and
the table. With `--tasks all`, tasks whose data is missing are skipped with their reason (on stderr, in the JSON
and under the table); the command fails only if no task ran."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gpt2.commands import add_device_options, load_model
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
    p.add_argument(
        "--tasks",
        required=True,
        help="comma-separated task names, or 'all' (which skips, saying why, the tasks whose data is missing)",
    )
    p.add_argument("--data-dir", type=Path, help="folder laid out as ../shared/data (default: the download cache)")
    p.add_argument(
        "--offline",
        action="store_true",
        help="never download: a missing data file is an error (with --tasks all, its task is skipped)",
    )
    p.add_argument("--shots", type=int, help="few-shot examples per prompt (default: each task's own protocol)")
    p.add_argument("--limit", type=int, help="evaluate only the first N examples of each task, in file order")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass (default 16)")
    p.add_argument(
        "--stride",
        type=int,
        help="perplexity windows' stride in tokens (default: the context, i.e. disjoint windows). The paper gives "
        "the context (1024) but no stride; disjoint windows best match its figures, as overlap adds context and "
        "lowers perplexity. The often quoted 32 is from a later comment by an author about raw WikiText.",
    )
    p.add_argument("--seed", type=int, default=0, help="few-shot sampling and top-k sampling seed (default 0)")
    p.add_argument(
        "--samples",
        type=int,
        default=0,
        metavar="N",
        help="writingprompts: also write N stories sampled (top-k 40) from test prompts, into the JSON and, with "
        "--output, beside it as NAME.writingprompts.md",
    )
    p.add_argument("--cbt-split", choices=("valid", "test"), default="valid", help="CBT split (default valid)")
    add_device_options(p, "float32", "float32 (default), or bfloat16 for speed; auto: bfloat16 on a GPU that has it")
    p.add_argument(
        "--output",
        type=Path,
        help="write the results JSON here, and the Markdown table beside it (same name, .md); both atomically",
    )
    p.add_argument(
        "--quiet",
        "--no-progress",  # the older spelling
        dest="quiet",
        action="store_true",
        help="no progress bars and no per-task lines (errors and warnings still show)",
    )
    return p


def run(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    from gpt2.io import quiet

    quiet(args.quiet)
    from gpt2.evaluate import evaluate, parse_tasks
    from gpt2.evaluate.report import markdown_table
    from gpt2.io import atomic_write

    tasks = parse_tasks(args.tasks)  # fail on a typo before loading anything
    skip_missing = [t.strip() for t in args.tasks.split(",") if t.strip()] == ["all"]
    table_path = None
    if args.output is not None:
        if args.output.is_dir():
            raise GPT2Error(f"--output {args.output} is a folder; give a file name such as results.json")
        table_path = args.output.with_suffix(".md")
        if table_path == args.output:
            raise GPT2Error(f"--output {args.output} ends in .md, the table's name beside it; give e.g. results.json")
    runs: list[dict[str, Any]] = []
    for i, name in enumerate(args.model):
        model, tokenizer, device = load_model(name, args.tokenizer, args.device, args.dtype)
        dtype = str(model.lm_head.weight.dtype).removeprefix("torch.")
        print(f"{name}: {model.num_params():,} parameters on {device} ({dtype})", file=sys.stderr, flush=True)
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
                samples=args.samples,
                samples_path=None
                if args.output is None
                else args.output.with_suffix(
                    ".writingprompts.md" if len(args.model) == 1 else f".{i}.writingprompts.md"
                ),
                model_name=name,
                progress=sys.stderr.isatty(),
                skip_missing=skip_missing,
            )
        )
        del model
        if table_path is not None:  # after every model, so that a later failure loses nothing
            payload = runs[0] if len(args.model) == 1 else runs
            atomic_write(args.output, json.dumps(payload, indent=2) + "\n")
            atomic_write(table_path, markdown_table(runs))
            print(f"wrote {args.output} and {table_path}", file=sys.stderr)
    print(markdown_table(runs), end="")
