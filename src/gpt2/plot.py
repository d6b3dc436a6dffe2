"""Loss curves: train and val loss against tokens seen, one PNG, several runs on the same axes (`gpt2 plot`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpt2.errors import GPT2Error
from gpt2.io import atomic_open

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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
    fig = new_figure(figsize=(8, 5), dpi=120)
    ax = fig.add_subplot()
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
    return save_png(fig, output)


def new_figure(**kwargs: Any) -> Figure:
    """A matplotlib Figure drawn by the Agg backend, made without pyplot: no GUI backend is chosen or loaded and
    no global figure list holds it, so library code never needs to close it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: str | os.PathLike) -> Path:
    """Write fig as a PNG at path, atomically."""
    path = Path(path)
    with atomic_open(path) as f:
        fig.savefig(f, format="png")
    return path
