"""`gpt2 plot RUN_DIR...`: train and val loss against tokens seen, one PNG (gpt2.plot.plot_runs)."""

from __future__ import annotations

import argparse
from pathlib import Path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpt2 plot", description="Plot train/val loss against tokens seen.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders made by `gpt2 train`")
    p.add_argument("--output", help="PNG path (default: RUN_DIR/loss.png of the first run)")
    p.add_argument("--log-x", action="store_true", help="logarithmic tokens axis")
    return p


def run(argv: list[str]) -> None:
    a = parser().parse_args(argv)
    from gpt2.plot import plot_runs

    print(plot_runs(a.runs, a.output or Path(a.runs[0]) / "loss.png", log_x=a.log_x))
