"""`gpt2 plot RUN_DIR...`: train and val loss against tokens seen, one PNG, several runs on the same axes."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from gpt2.errors import GPT2Error


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise GPT2Error(f"{run_dir}: no metrics.jsonl (is this a `gpt2 train` run folder?)")
    rows = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            if n == len(lines):  # a last line cut short by a killed run
                break
            raise GPT2Error(f"{path}:{n}: not valid JSON") from None
    if not rows:
        raise GPT2Error(f"{path}: no logged steps yet")
    return rows


def plot_runs(run_dirs: list[str], output: str | os.PathLike, log_x: bool = False) -> Path:
    """Draw each run's train loss (thin) and val loss (markers) against tokens seen; write a PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for i, run in enumerate(run_dirs):
        rows = read_metrics(run)
        color = f"C{i}"
        name = Path(run).name or str(run)
        ax.plot(
            [r["tokens"] for r in rows], [r["loss"] for r in rows], color=color, alpha=0.6, lw=1, label=f"{name} train"
        )
        val = [r for r in rows if "val_loss" in r]
        if val:
            ax.plot(
                [r["tokens"] for r in val], [r["val_loss"] for r in val], "o-", color=color, ms=3, label=f"{name} val"
            )
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss (nats per token)")
    if log_x:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=output.parent, suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp)
        os.replace(tmp, output)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return output


def cli(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="gpt2 plot", description="Plot train/val loss against tokens seen.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders made by `gpt2 train`")
    p.add_argument("--output", help="PNG path (default: RUN_DIR/loss.png of the first run)")
    p.add_argument("--log-x", action="store_true", help="logarithmic tokens axis")
    a = p.parse_args(argv)
    out = plot_runs(a.runs, a.output or Path(a.runs[0]) / "loss.png", log_x=a.log_x)
    print(out)
