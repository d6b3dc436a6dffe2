"""`gpt2 prepare`: tokenize text files into token shards for training (gpt2.data.prepare)."""

from __future__ import annotations

import argparse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpt2 prepare", description="Tokenize text into token shards for training.")
    p.add_argument("--input", nargs="+", required=True, help=".txt / .jsonl(.gz/.zst/.bz2/.xz) files or folders")
    p.add_argument("--tokenizer", required=True, help="tokenizer folder, model folder, or 'gpt2'")
    p.add_argument("--output", required=True, help="folder for the shards and manifest.json")
    p.add_argument("--val-fraction", type=float, default=0.005, help="share of documents held out (default 0.005)")
    p.add_argument("--shard-tokens", type=int, default=100_000_000, help="tokens per shard (default 100M)")
    p.add_argument("--text-field", default="text", help="JSON Lines field holding the text (default: text)")
    p.add_argument(
        "--save-every",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="record progress (finished shards, documents done) at least this often, for resuming (default 5)",
    )
    p.add_argument(
        "--quiet", action="store_true", help="no progress bars or progress lines (errors and warnings still show)"
    )
    return p


def run(argv: list[str]) -> None:
    a = parser().parse_args(argv)
    from gpt2.io import quiet

    quiet(getattr(a, "quiet", False))
    from gpt2.data import PrepareConfig, prepare

    cfg = PrepareConfig(
        a.input, a.tokenizer, a.output, a.val_fraction, a.shard_tokens, text_field=a.text_field, save_every=a.save_every
    )
    m = prepare(cfg, progress=not a.quiet)
    train, val = m["splits"]["train"], m["splits"]["val"]
    print(
        f"{a.output}: {train['tokens']:,} train tokens in {len(train['shards'])} shards, "
        f"{val['tokens']:,} val tokens in {len(val['shards'])} shards, {m['documents_done']:,} documents"
    )
