"""How fast the `gpt2` command starts: `gpt2 --help`, `gpt2 COMMAND --help` and `gpt2 tokenizer encode`, each as a
whole process, against the two floors measured in the same run: the bare interpreter (`python -c pass`) and
`python -c "import torch"`, which every command paid before commands imported torch only where they use it.

    python benchmarks/bench_startup.py [--repeats 9]

Runs are interleaved (every command once per round) and medians are printed with the ratio to `import torch`.
The target is under 0.3 s for every row on this project's 2-core machine. The tokenizer rows read GPT-2's
vocabulary from ../shared/data/gpt2-vocab (skipped when absent).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=9, help="rounds; each runs every command once (default 9)")
    args = p.parse_args()
    from gpt2.cli import COMMANDS

    gpt2 = [sys.executable, "-c", "from gpt2.cli import main; main()"]  # what the `gpt2` script runs
    rows: dict[str, list[str]] = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "python -c 'import torch'": [sys.executable, "-c", "import torch"],
        "gpt2 --help": [*gpt2, "--help"],
    }
    rows |= {f"gpt2 {name} --help": [*gpt2, name, "--help"] for name in COMMANDS}
    vocab = SHARED / "gpt2-vocab"
    if vocab.is_dir():
        rows["gpt2 tokenizer encode (GPT-2's vocabulary)"] = [
            *gpt2, "tokenizer", "encode", "--tokenizer", str(vocab), "--text", "Hello world"
        ]  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in rows}
    for cmd in rows.values():  # warm the file cache
        timed(cmd)
    for _ in range(args.repeats):
        for name, cmd in rows.items():
            times[name].append(timed(cmd))
    torch_median = statistics.median(times["python -c 'import torch'"])
    width = max(map(len, rows))
    print(f"{'command':<{width}}  median s  min s   / import torch")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<{width}}  {median:8.3f}  {min(values):6.3f}  {median / torch_median:6.2f}x")


if __name__ == "__main__":
    main()
