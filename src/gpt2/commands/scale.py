"""`gpt2 scale`: train a family of model sizes on the same data and token budget, evaluate each, and fit a power
law to validation loss against non-embedding parameters (gpt2.analysis.scaling)."""

from __future__ import annotations

import argparse
from pathlib import Path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpt2 scale",
        description="Train several model sizes on the same prepared data and token budget (each in its own run "
        "folder, resumable; a finished size is not trained again), evaluate them, and write a table (Markdown and "
        "JSON) and plots of loss and task metrics against parameters, with a fitted power law L = a * N^-alpha.",
    )
    p.add_argument(
        "--sizes",
        required=True,
        help="comma-separated presets (gpt2-tiny, gpt2-mini, ...) or LAYERSxWIDTH shapes, e.g. 2x64,2x128,4x256",
    )
    p.add_argument("--data", required=True, help="a folder made by `gpt2 prepare`, the same for every size")
    p.add_argument("--tokens", type=float, required=True, help="training tokens per size, e.g. 2e6")
    p.add_argument("--out", required=True, help="folder for one run folder per size, scaling.md/.json and the plots")
    p.add_argument("--tasks", default="", help="evaluation tasks after training, e.g. lambada,wikitext2 (default none)")
    p.add_argument("--data-dir", help="the evaluation data folder, laid out as ../shared/data (default: the cache)")
    p.add_argument("--limit", type=int, help="evaluate each task on at most this many examples")
    p.add_argument("--seq-len", type=int, default=128, help="tokens of context per training sequence (default 128)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per optimizer step (default 16)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate, the same for every size (default 2e-3)")
    p.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up steps (default: a tenth of the steps)")
    p.add_argument("--evals", type=int, default=4, help="validation losses and checkpoints per size (default 4)")
    p.add_argument("--eval-batches", type=int, default=20, help="batches per validation loss (default 20)")
    p.add_argument("--fit-constant", action="store_true", help="fit L = a * N^-alpha + c (needs four sizes or more)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto: the GPU if there is one")
    p.add_argument("--seed", type=int, default=1337, help="seed of the weights and the data order (default 1337)")
    p.add_argument(
        "--quiet", action="store_true", help="no progress bars or progress lines (errors and warnings still show)"
    )
    return p


def run(argv: list[str]) -> None:
    a = parser().parse_args(argv)
    from gpt2.io import quiet

    quiet(getattr(a, "quiet", False))
    from gpt2.analysis.scaling import ScaleConfig, parse_sizes, run_family
    from gpt2.errors import GPT2Error

    if a.tokens != int(a.tokens) or a.tokens < 1:
        raise GPT2Error(f"--tokens must be a whole number >= 1, got {a.tokens:g}")
    tasks: list[str] = []
    if a.tasks:
        from gpt2.evaluate import parse_tasks

        tasks = parse_tasks(a.tasks)
    if a.evals < 1 or a.eval_batches < 1:
        raise GPT2Error("--evals and --eval-batches must be >= 1")
    cfg = ScaleConfig(
        sizes=parse_sizes(a.sizes),
        data=a.data,
        tokens=int(a.tokens),
        out=a.out,
        tasks=tasks,
        data_dir=a.data_dir,
        limit=a.limit,
        seq_len=a.seq_len,
        batch_size=a.batch_size,
        lr=a.lr,
        warmup_steps=a.warmup_steps,
        evals=a.evals,
        eval_batches=a.eval_batches,
        device=a.device,
        seed=a.seed,
        fit_constant=a.fit_constant,
        offline=False,
    )
    summary = run_family(cfg, progress=not a.quiet)
    print((Path(a.out) / "scaling.md").read_text(encoding="utf-8"), end="")
    for path in summary["plots"]:
        print(f"wrote {path}")
