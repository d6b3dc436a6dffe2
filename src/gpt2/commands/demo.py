"""`gpt2 demo`: the whole pipeline on a fresh machine, with nothing downloaded, in minutes on a laptop CPU.

corpus -> byte-level BPE -> token shards -> a small GPT-2 trained from scratch -> samples. The default corpus is
the documentation that ships with Python (gpt2.python_docs); `--input` runs the same pipeline on your files.
"""

from __future__ import annotations

import argparse
import math
import shutil
import time
from pathlib import Path

from gpt2.errors import GPT2Error

PROMPTS = ["The", "A list is", "To open a file,"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpt2 demo",
        description="Train a small GPT-2 end to end (tokenizer, shards, training, samples) with nothing downloaded.",
    )
    p.add_argument("--input", nargs="+", help="your own .txt/.jsonl files or folders instead of Python's docs")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--vocab-size", type=int, default=4096, help="tokens in the learned BPE vocabulary (default 4096)")
    p.add_argument("--max-steps", type=int, default=1200, help="training steps (default 1200)")
    p.add_argument("--model", default="gpt2-tiny", help="model preset (default gpt2-tiny)")
    p.add_argument("--overwrite", action="store_true", help="train again over an earlier demo's model in --out")
    return p


def run(argv: list[str]) -> None:
    a = parser().parse_args(argv)
    run_demo(Path(a.out), a.input, a.vocab_size, a.max_steps, a.model, overwrite=a.overwrite)


def run_demo(
    out: Path,
    inputs: list[str] | None = None,
    vocab_size: int = 4096,
    max_steps: int = 1200,
    model: str = "gpt2-tiny",
    seq_len: int = 128,
    batch_size: int = 16,
    overwrite: bool = False,
) -> None:
    """Each stage of the pipeline in turn, printing what it made. The corpus, tokenizer and shards of an earlier
    demo in `out` are reused; its trained model is replaced only with `overwrite`."""
    from gpt2.bpe_train import train_bpe
    from gpt2.data import PrepareConfig, prepare
    from gpt2.generate import generate
    from gpt2.io import input_files
    from gpt2.model import GPT
    from gpt2.python_docs import write_corpus
    from gpt2.tokenizer import Tokenizer
    from gpt2.train import TrainConfig, train

    run_dir = out / "run"
    if run_dir.exists() and not overwrite:
        raise GPT2Error(
            f"{run_dir} holds the model of an earlier demo; pass --overwrite to train it again (the old one is "
            f"deleted), or --out another folder"
        )
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    if inputs:
        sources = [str(p) for p in input_files(inputs)]
        print(f"[1/5] corpus: {len(sources)} files of yours")
    else:
        sources = [str(write_corpus(out / "corpus"))]
        print(f"[1/5] corpus: the documentation that ships with Python -> {sources[0]}")

    tok_dir = out / "tokenizer"
    if not (tok_dir / "vocab.bpe").exists():
        print(f"[2/5] tokenizer: learning a byte-level BPE of {vocab_size} tokens")
        tok = train_bpe([Path(s) for s in sources], vocab_size, progress=True, name="demo")
        tok.save_pretrained(tok_dir, names="openai")
    tok = Tokenizer.from_pretrained(tok_dir)
    print(f"      {tok.vocab_size} tokens; e.g. {[tok.decode([i]) for i in tok.encode('The list.append() method')]}")

    print("[3/5] prepare: tokenizing into shards")
    data = out / "data"
    manifest = prepare(PrepareConfig(sources, str(tok_dir), str(data), val_fraction=0.05, piece_tokens=1024), False)
    train_tokens, val_tokens = manifest["splits"]["train"]["tokens"], manifest["splits"]["val"]["tokens"]
    print(f"      {train_tokens:,} train tokens, {val_tokens:,} val tokens")

    print(f"[4/5] train: {model} from scratch for {max_steps} steps")
    shutil.rmtree(run_dir, ignore_errors=True)  # an earlier demo's model, which --overwrite allowed
    cfg = TrainConfig(
        data=str(data),
        out=str(run_dir),
        model=model,
        seq_len=seq_len,
        batch_size=batch_size,
        max_steps=max_steps,
        lr=2e-3,
        warmup_steps=max(1, max_steps // 20),
        eval_interval=max(1, max_steps // 4),
        log_interval=max(1, max_steps // 20),
        eval_batches=10,
        sample_tokens=48,
        sample_prompt=PROMPTS[0],
        dropout=0.0,
    )
    last = train(cfg)

    print("[5/5] samples (top-k 40):")
    trained = GPT.from_pretrained(run_dir / "model")
    for prompt in PROMPTS:
        text = generate(trained, tok, prompt, 48, top_k=40, seed=0)[0]
        print(f"  {prompt!r} -> {prompt + text!r}")
    minutes = (time.perf_counter() - t0) / 60
    print(
        f"done in {minutes:.1f} min: val loss {last.get('val_loss', float('nan')):.3f} "
        f"(a uniform guess scores {math.log(tok.vocab_size):.3f}). The model is in {run_dir / 'model'}:\n"
        f"  gpt2 generate --model {run_dir / 'model'} --prompt 'A dictionary'\n"
        f"  gpt2 plot {run_dir}"
    )
