"""BPE training: ours (`gpt2 tokenizer train`'s code) against Hugging Face `tokenizers`' ByteLevel BPE trainer.

    python benchmarks/bench_bpe_train.py [--vocab-sizes 8192 32768] [--repeats 1] [--data ../shared/data]

Both train on the same text file (every data file of the shared folder, hellaswag decompressed, less the last 5%
of each file, which is held back), with GPT-2's byte alphabet as initial tokens and <|endoftext|> as the special
token, to the same total vocabulary size. Each training runs in its own fresh process; reported per trainer:
  time      seconds inside the training call (reading, counting, merging, saving), median over the repeats;
  process   the whole process's wall time, including Python and library imports (ours imports torch via gpt2);
  cpu       user + system seconds of the process and its workers: on a busy shared machine a steadier figure;
  peak MB   the most memory the process and its worker processes held at once: their proportional set size
            (shared pages counted once), sampled from /proc every 20 ms;
  bytes/token on the held-back text, with each trainer's vocabulary (higher is better compression).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_tokenizer import DATA, shared_corpus  # noqa: E402

OURS_IMPORTS = """
import sys, time
from pathlib import Path
from gpt2.bpe_train import train_bpe
"""
OURS = """
corpus, vocab_size, out = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
t = time.perf_counter()
train_bpe([corpus], vocab_size).save_pretrained(out, names="openai")
print(time.perf_counter() - t)
"""

TOKENIZERS_IMPORTS = """
import sys, time
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
"""
TOKENIZERS = """
corpus, vocab_size, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
t = time.perf_counter()
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(
    vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    special_tokens=["<|endoftext|>"], show_progress=False,
)
tok.train([corpus], trainer)
tok.save(out + "/tokenizer.json")
print(time.perf_counter() - t)
"""
TRAINERS = {"ours": (OURS_IMPORTS, OURS), "tokenizers": (TOKENIZERS_IMPORTS, TOKENIZERS)}


def tree_pss(root: int) -> int:
    """Proportional set size in bytes of process `root` and all its descendants now (Linux /proc): pages that
    forked workers share with their parent count once in all, not once per process as RSS would count them."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    children.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(entry))
            except OSError:
                continue
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:")) * 1024
        except (OSError, StopIteration):
            continue
    return total


def run(script: str, *args: str) -> dict[str, float]:
    """Run `script` in a fresh Python process (Linux: /proc, wait4); its time, wall time and peak memory."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_pss(proc.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)  # usage: the child's and its (reaped) workers' together
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()  # type: ignore[union-attr]
    if status != 0:
        raise SystemExit(f"trainer failed:\n{err}")
    cpu = usage.ru_utime + usage.ru_stime
    return {"time": float(out.split()[-1]), "wall": wall, "cpu": cpu, "peak": peak / 2**20}


def split_corpus(data: Path, folder: Path) -> tuple[Path, str]:
    """The training file (each shared file but its last 5%) and the held-back text (those last 5%)."""
    train, held = [], []
    for text in shared_corpus(data).values():
        cut = text.find("\n", int(len(text) * 0.95)) + 1 or len(text)
        train.append(text[:cut])
        held.append(text[cut:])
    path = folder / "train.txt"
    path.write_text("".join(train), encoding="utf-8")
    return path, "".join(held)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab-sizes", type=int, nargs="+", default=[8192, 32768])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    a = p.parse_args()

    import tokenizers

    from gpt2.tokenizer import Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        corpus, held = split_corpus(a.data, Path(tmp))
        held_bytes = len(held.encode("utf-8"))
        print(f"training text {corpus.stat().st_size / 1e6:.1f} MB; held back {held_bytes / 1e6:.2f} MB; "
              f"{os.cpu_count()} cores; {a.repeats} repeat(s), medians")  # fmt: skip
        header = ("vocab", "trainer", "time s", "process s", "cpu s", "peak MB", "imports MB", "bytes/token")
        row = "{:>6} {:<11} {:>7} {:>9} {:>7} {:>8} {:>10} {:>11}".format
        print(row(*header))
        for vocab_size in a.vocab_sizes:
            results = {}
            for name, (imports, script) in TRAINERS.items():
                out = Path(tmp) / f"{name}-{vocab_size}"
                out.mkdir()
                runs = [run(imports + script, str(corpus), str(vocab_size), str(out)) for _ in range(a.repeats)]
                r = {k: statistics.median(x[k] for x in runs) for k in runs[0]}
                r["imports"] = run(imports + "print(0)")["peak"]
                if name == "ours":
                    tok = Tokenizer.from_pretrained(out)
                    size, ids = tok.vocab_size, tok.encode(held, disallowed_special=())
                else:
                    hf = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
                    size, ids = hf.get_vocab_size(), hf.encode(held).ids
                assert size == vocab_size, f"{name} made {size} tokens, asked for {vocab_size}"
                r["bpt"] = held_bytes / len(ids)
                results[name] = r
                cells = [f"{r[k]:.2f}" for k in ("time", "wall", "cpu")] + [f"{r[k]:.0f}" for k in ("peak", "imports")]
                print(row(vocab_size, name, *cells, f"{r['bpt']:.3f}"))
            ours, peer = results["ours"], results["tokenizers"]
            ratio = {k: f"{ours[k] / peer[k]:.2f}x" for k in ("time", "wall", "cpu", "peak")}
            print(row(vocab_size, "ratio", ratio["time"], ratio["wall"], ratio["cpu"], ratio["peak"], "",
                      f"{ours['bpt'] / peer['bpt'] - 1:+.2%}"),
                  " (ours / tokenizers; targets: time <= 2x, compression within 1%)")  # fmt: skip


if __name__ == "__main__":
    main()
