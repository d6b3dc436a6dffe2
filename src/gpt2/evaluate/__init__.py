"""Zero-shot task transfer: the paper's evaluation suite, with its protocols, on any GPT-2 checkpoint.

    results = evaluate(model, tokenizer, ["lambada", "wikitext2"], data_dir="../shared/data", limit=100)
    gpt2 eval --model gpt2 --tasks lambada,wikitext2 --data-dir ../shared/data --output results.json

Modules: scoring (batched log-likelihoods), tasks/ (one module per task, each documenting its protocol), data
(official files, downloads and checksums), detokenize, metrics, paper (the published figures), report (the
Markdown table). The command is gpt2.commands.eval. Importing this package does not load torch (the task list
serves `gpt2 eval --help`); scoring does, when `evaluate` runs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpt2.errors import GPT2Error
from gpt2.evaluate.data import DataDir, MissingData
from gpt2.evaluate.tasks import TASKS, Context
from gpt2.io import report as tell  # not `report`: the name of this package's report module

if TYPE_CHECKING:
    from gpt2.model import GPT
    from gpt2.tokenizer import Tokenizer


def parse_tasks(spec: str | Sequence[str]) -> list[str]:
    """Task names from "a,b,c" (or "all"), checked against the known ones."""
    names = [t.strip() for t in (spec.split(",") if isinstance(spec, str) else spec) if t.strip()]
    if names == ["all"]:
        return list(TASKS)
    unknown = [t for t in names if t not in TASKS]
    if unknown or not names:
        raise GPT2Error(f"unknown task {', '.join(map(repr, unknown)) or '(none given)'}; known: {', '.join(TASKS)}")
    return list(dict.fromkeys(names))


def evaluate(
    model: GPT,
    tokenizer: Tokenizer,
    tasks: str | Sequence[str],
    *,
    data_dir: str | Path | None = None,
    offline: bool = False,
    shots: int | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    stride: int | None = None,
    seed: int = 0,
    cbt_split: str = "valid",
    samples: int = 0,
    samples_path: str | Path | None = None,
    model_name: str | None = None,
    progress: bool = False,
    skip_missing: bool = False,
) -> dict[str, Any]:
    """Run tasks on one model; returns {"model", "tasks": {task: {metric: value, "n": examples}}, "protocol",
    "skipped": {task: reason}}.

    data_dir: a folder laid out as ../shared/data (default: the download cache). Each finished task (metrics, time,
    examples/s) or skipped one is reported in a line (gpt2.io.report). skip_missing: a task whose data is missing
    (and cannot be downloaded) is skipped, its one-line reason (which says how to get the data) kept in "skipped",
    rather than ending the run; a GPT2Error still ends it if no task ran. samples: writingprompts also writes this
    many stories from test prompts (top-k 40) into its protocol, and as Markdown to samples_path when given.
    """
    names = parse_tasks(tasks)
    if limit is not None and limit < 1:
        raise GPT2Error(f"--limit must be >= 1, got {limit}")
    if shots is not None and shots < 0:
        raise GPT2Error(f"--shots must be >= 0, got {shots}")
    n_ctx = model.config.n_positions
    if stride is not None and not 1 <= stride <= n_ctx:
        raise GPT2Error(f"--stride must be in 1..{n_ctx} (the model's context), got {stride}")
    if samples < 0:
        raise GPT2Error(f"--samples must be >= 0, got {samples}")
    if cbt_split not in ("valid", "test"):
        raise GPT2Error(f"--cbt-split must be 'valid' or 'test', got {cbt_split!r}")
    if tokenizer.vocab_size > model.config.vocab_size:
        raise GPT2Error(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {model.config.vocab_size}")
    from gpt2.evaluate.scoring import Scorer

    model.eval()
    data = DataDir(data_dir, offline=offline)
    ctx = Context(
        model=model,
        tokenizer=tokenizer,
        scorer=Scorer(model, batch_size=batch_size, progress=progress),
        data=data,
        limit=limit,
        shots=shots,
        seed=seed,
        stride=stride,
        batch_size=batch_size,
        progress=progress,
        options={"cbt_split": cbt_split, "samples": samples, "samples_path": samples_path},
    )
    p = model.lm_head.weight
    results: dict[str, Any] = {
        "model": model_name,
        "tasks": {},
        "protocol": {
            "data_dir": str(data.root),
            "limit": limit,
            "shots": shots,
            "seed": seed,
            "batch_size": batch_size,
            "stride": stride or n_ctx,
            "n_positions": n_ctx,
            "parameters": model.num_params(),
            "device": str(p.device),
            "dtype": str(p.dtype).removeprefix("torch."),
            "tokenizer": tokenizer.fingerprint[:16],
            "units": "accuracy, F1, EM, ROUGE and BLEU in percent; bits per byte/character; perplexities",
            "tasks": {},
        },
        "skipped": {},
    }
    for name in names:
        start = time.perf_counter()
        try:
            r = TASKS[name].run(ctx)
        except MissingData as e:
            if not skip_missing:
                raise
            results["skipped"][name] = str(e)
            tell(f"{name}: skipped: {e}")
            continue
        seconds = time.perf_counter() - start
        results["tasks"][name] = {**r.metrics, "n": r.n}
        results["protocol"]["tasks"][name] = {
            **r.protocol,
            "seconds": round(seconds, 3),
            "examples_per_s": round(r.n / seconds, 3) if seconds > 0 else None,
        }
        shown = ", ".join(f"{m} {v:.4g}" for m, v in r.metrics.items())
        tell(f"{name}: {shown} (n={r.n}, {seconds:.1f} s, {r.n / seconds:.2f} examples/s)")
    if not results["tasks"]:
        skipped = results["skipped"]
        if len(skipped) == 1:
            raise MissingData(next(iter(skipped.values())))
        raise MissingData(
            f"no task ran: the data of all {len(skipped)} tasks is missing ({', '.join(skipped)}); the first: "
            + next(iter(skipped.values()))
        )
    return results


__all__ = ["TASKS", "evaluate", "parse_tasks"]
