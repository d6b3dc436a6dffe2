"""BPE training, whole processes: `gpt2 tokenizer train` against Hugging Face `tokenizers`' ByteLevel BPE trainer.

    python benchmarks/bench_bpe_train.py [--vocab-sizes 16384] [--repeats 1] [--data ../shared/data]
    python benchmarks/bench_bpe_train.py --sizes 2 20 200 [--repeats 3] [--cache ~/.cache/gpt2-bench/bpe-train]

Both train on the same text file with GPT-2's byte alphabet as initial tokens and <|endoftext|> as the special
token, to the same total vocabulary size, without progress bars. Ours is the `gpt2 tokenizer train` command run as
a user runs it (the console script next to this Python, all cores); the peer is a fresh Python process that imports
`tokenizers`, trains and saves (its Rust trainer uses a thread per core). The two alternate, in swapped order each
repeat, so a change in the machine's load falls on both.

The text:
  default   every data file of the shared folder (hellaswag decompressed), less the last 5% of each file, which
            is held back (about 27 MB to train on);
  --sizes   corpora of the given sizes in MB, cut from one pool of real, distinct text that is on any machine
            with this project installed: the shared data files (cut into ~100 kB documents at line ends) and every
            .py, .md, .rst and .txt file under this Python's site-packages, /usr/share and /usr/lib/python3*
            (code and documentation), each distinct file once (duplicates by content are dropped, files holding a
            NUL byte skipped), shuffled with a fixed seed and joined by blank lines. Each size is a prefix of the
            pool, so the mix of prose and code is the same at every size; the last 2 MB of the pool are held
            back. The pool (310 MB here; it depends on what is installed) is built once into --cache.

Reported per trainer, medians over the repeats:
  wall      the whole process's wall time: interpreter start, imports, reading, counting, merging, saving;
  cpu       user + system seconds of the process and its workers (processes or threads): on a busy shared
            machine a steadier figure than wall;
  peak MB   the most memory the process and its worker processes held at once: their proportional set size
            (pages forked workers share with their parent counted once), sampled from /proc every 20 ms;
  bytes/token on the held-back text, with each trainer's vocabulary (higher is better compression);
and the load average (1 minute) before and after each corpus.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_tokenizer import DATA, shared_corpus  # noqa: E402

TOKENIZERS = """
import sys
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
corpus, vocab_size, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(
    vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    special_tokens=["<|endoftext|>"], show_progress=False,
)
tok.train([corpus], trainer)
tok.save(out + "/tokenizer.json")
"""
POOL_SUFFIXES = (".py", ".md", ".rst", ".txt")
POOL_VERSION = 1  # bump when the pool's recipe changes, so a cached pool is rebuilt
HELD_BYTES = 2_000_000


def ours_command() -> list[str]:
    """`gpt2` as a user runs it: the console script installed next to this Python (or `python -m gpt2`)."""
    script = Path(sys.executable).parent / "gpt2"
    return [str(script)] if script.exists() else [sys.executable, "-m", "gpt2"]


def trainer_command(name: str, corpus: Path, vocab_size: int, out: Path) -> list[str]:
    if name == "ours":
        return [*ours_command(), "tokenizer", "train", "--input", str(corpus), "--vocab-size", str(vocab_size),
                "--output", str(out), "--quiet"]  # fmt: skip
    return [sys.executable, "-c", TOKENIZERS, str(corpus), str(vocab_size), str(out)]


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


def run(command: list[str]) -> dict[str, float]:
    """Run `command` as a fresh process (Linux: /proc, wait4); its wall time, CPU time and peak memory."""
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: a pipe left unread could fill and block the child
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
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
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            log.seek(0)
            raise SystemExit(f"{' '.join(command[:3])} failed:\n{log.read().decode(errors='replace')}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "peak": peak / 2**20}


# ------------------------------------------------------------------------------------------------ corpora
def split_shared(data: Path, folder: Path) -> tuple[Path, str]:
    """The training file (each shared file but its last 5%) and the held-back text (those last 5%)."""
    train, held = [], []
    for text in shared_corpus(data).values():
        cut = text.find("\n", int(len(text) * 0.95)) + 1 or len(text)
        train.append(text[:cut])
        held.append(text[cut:])
    path = folder / "train.txt"
    path.write_text("".join(train), encoding="utf-8")
    return path, "".join(held)


def _line_documents(text: str, size: int = 100_000) -> list[str]:
    """`text` cut at line ends into documents of about `size` characters."""
    docs, start = [], 0
    while start < len(text):
        end = text.find("\n", start + size) + 1 or len(text)
        docs.append(text[start:end])
        start = end
    return docs


def pool_roots() -> list[Path]:
    paths = sysconfig.get_paths()
    roots = {Path(paths["purelib"]), Path(paths["platlib"]), Path("/usr/share"), *Path("/usr/lib").glob("python3*")}
    return sorted(r for r in roots if r.is_dir())


def build_pool(data: Path, path: Path) -> None:
    """Write the pool of distinct real text that the sized corpora are cut from (see the module's docstring)."""
    docs = [d for text in shared_corpus(data).values() for d in _line_documents(text)]
    seen = {hashlib.sha1(d.encode()).digest() for d in docs}
    for root in pool_roots():
        for folder, dirs, names in os.walk(root):  # symlinked folders are not followed: no file twice that way
            dirs.sort()
            for name in sorted(names):
                file = Path(folder, name)
                if not name.endswith(POOL_SUFFIXES) or file.is_symlink():
                    continue
                try:
                    raw = file.read_bytes()
                except OSError:
                    continue
                digest = hashlib.sha1(raw).digest()
                if not raw.strip() or b"\0" in raw or digest in seen:
                    continue
                seen.add(digest)
                docs.append(raw.decode("utf-8", errors="replace"))
    random.Random(0).shuffle(docs)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n\n".join(docs), encoding="utf-8")
    tmp.rename(path)


def sized_corpora(sizes: list[float], cache: Path, data: Path) -> tuple[list[tuple[str, Path]], str]:
    """A training file per size in MB (prefixes of the pool, cut at a line end) and the held-back text."""
    cache.mkdir(parents=True, exist_ok=True)
    pool = cache / f"pool-v{POOL_VERSION}.txt"
    if not pool.exists():
        print(f"building the text pool in {pool} (once) ...", flush=True)
        build_pool(data, pool)
    raw = pool.read_bytes()
    held_start = raw.index(b"\n", len(raw) - HELD_BYTES) + 1
    corpora = []
    for mb in sizes:
        want = int(mb * 1e6)
        if want > held_start:
            raise SystemExit(f"the pool holds {held_start / 1e6:.0f} MB to train on; {mb:g} MB asked for")
        file = cache / f"train-v{POOL_VERSION}-{mb:g}MB.txt"
        if not file.exists():
            end = raw.rfind(b"\n", 0, want) + 1 or want  # UTF-8 stays whole: a cut just after a newline
            file.write_bytes(raw[:end])
        corpora.append((f"{mb:g} MB", file))
    print(f"pool {pool}: {len(raw) / 1e6:.0f} MB, the last {(len(raw) - held_start) / 1e6:.1f} MB held back")
    return corpora, raw[held_start:].decode("utf-8")


# ------------------------------------------------------------------------------------------------ measuring
def bytes_per_token(name: str, out: Path, vocab_size: int, held: str) -> float:
    import tokenizers

    from gpt2.tokenizer import Tokenizer

    if name == "ours":
        tok = Tokenizer.from_pretrained(out)
        size, ids = tok.vocab_size, tok.encode(held, disallowed_special=())
    else:
        hf = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
        size, ids = hf.get_vocab_size(), hf.encode(held).ids
    assert size == vocab_size, f"{name} made {size} tokens, asked for {vocab_size}"
    return len(held.encode("utf-8")) / len(ids)


def compare(label: str, corpus: Path, held: str, vocab_size: int, repeats: int, tmp: Path) -> None:
    row = "{:>8} {:>6} {:<11} {:>7} {:>7} {:>8} {:>11}".format
    names = ["ours", "tokenizers"]
    runs: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    load = os.getloadavg()[0]
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            out = tmp / f"{name}-{vocab_size}-{r}"
            out.mkdir()
            runs[name].append(run(trainer_command(name, corpus, vocab_size, out)))
            if r == 0:
                runs[name][-1]["bpt"] = bytes_per_token(name, out, vocab_size, held)
            shutil.rmtree(out)
    results = {}
    for name in names:
        r = results[name] = {k: statistics.median(x[k] for x in runs[name]) for k in ("wall", "cpu", "peak")}
        r["bpt"] = runs[name][0]["bpt"]
        cells = f"{r['wall']:.2f}", f"{r['cpu']:.2f}", f"{r['peak']:.0f}", f"{r['bpt']:.3f}"
        print(row(label, vocab_size, name, *cells))
    ours, peer = results["ours"], results["tokenizers"]
    ratio = {k: f"{ours[k] / peer[k]:.2f}x" for k in ("wall", "cpu", "peak")}
    compression = f"{ours['bpt'] / peer['bpt'] - 1:+.2%}"
    print(row(label, vocab_size, "ratio", *ratio.values(), compression), "(ours / tokenizers)")
    pairs = [a["wall"] / b["wall"] for a, b in zip(runs["ours"], runs["tokenizers"], strict=True)]
    print(f"{'':>8} {'':>6} wall ratio of each pair: {' '.join(f'{p:.2f}x' for p in pairs)}; "
          f"load average {load:.2f} before, {os.getloadavg()[0]:.2f} after")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=float, nargs="+", help="train on pool corpora of these sizes in MB")
    p.add_argument("--vocab-sizes", type=int, nargs="+", default=[16384])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    default_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpt2-bench" / "bpe-train"
    p.add_argument("--cache", type=Path, default=default_cache, help="where the pool and sized corpora are kept")
    a = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        if a.sizes:
            corpora, held = sized_corpora(a.sizes, a.cache, a.data)
        else:
            corpus, held = split_shared(a.data, Path(tmp))
            corpora = [(f"{corpus.stat().st_size / 1e6:.1f} MB", corpus)]
        print(f"ours: {' '.join(ours_command())} tokenizer train; held back {len(held.encode()) / 1e6:.2f} MB; "
              f"{os.cpu_count()} cores; {a.repeats} repeat(s) each, alternating, medians")  # fmt: skip
        print("{:>8} {:>6} {:<11} {:>7} {:>7} {:>8} {:>11}".format(
            "text", "vocab", "trainer", "wall s", "cpu s", "peak MB", "bytes/token"))  # fmt: skip
        for label, corpus in corpora:
            for vocab_size in a.vocab_sizes:
                compare(label, corpus, held, vocab_size, a.repeats, Path(tmp))


if __name__ == "__main__":
    main()
