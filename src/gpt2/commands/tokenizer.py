"""`gpt2 tokenizer train|encode|decode`: learn a byte-level BPE vocabulary, or encode and decode with one."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gpt2.errors import GPT2Error


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpt2 tokenizer", description="Train a GPT-2 byte-level BPE vocabulary, or encode and decode with one."
    )
    sub = p.add_subparsers(dest="action", required=True)
    t = sub.add_parser(
        "train",
        help="learn a vocabulary from text files",
        description="Learn a byte-level BPE with GPT-2's rules (256 byte tokens, merges, then <|endoftext|>) and "
        "write it as encoder.json + vocab.bpe.",
    )
    t.add_argument("--input", nargs="+", required=True, help="text files (.gz/.bz2/.zst too), .jsonl, or folders")
    t.add_argument("--vocab-size", type=int, required=True, help="tokens in all: 256 bytes + merges + 1 special")
    t.add_argument("--output", required=True, help="folder to write encoder.json + vocab.bpe into")
    t.add_argument("--names", choices=("openai", "hf"), default="openai", help="file names (default: openai)")
    t.add_argument("--text-field", default="text", help="JSON Lines field holding the text (default: text)")
    t.add_argument("--workers", type=int, default=None, help="processes counting words (default: all cores)")
    t.add_argument(
        "--quiet", action="store_true", help="no progress bars or progress lines (errors and warnings still show)"
    )
    for name, help_ in (("encode", "print the token ids of text"), ("decode", "print the text of token ids")):
        s = sub.add_parser(name, help=help_, description=help_[0].upper() + help_[1:] + ".")
        s.add_argument("--tokenizer", default="gpt2", help="tokenizer folder, model folder, or 'gpt2' (default)")
    enc, dec = sub.choices["encode"], sub.choices["decode"]
    enc.add_argument("--text", help="the text (default: read standard input)")
    enc.add_argument("--allow-special", action="store_true", help="read <|endoftext|> as the special token")
    dec.add_argument("ids", nargs="*", help="token ids (default: read them from standard input)")
    return p


def _read_ids(words: list[str]) -> list[int]:
    try:
        return [int(w) for w in words]
    except ValueError:
        bad = next(w for w in words if not w.lstrip("-").isdigit())
        raise GPT2Error(f"expected token ids (integers), got {bad!r}") from None


def run(argv: list[str]) -> None:
    a = parser().parse_args(argv)
    from gpt2.io import quiet

    quiet(getattr(a, "quiet", False))
    from gpt2.tokenizer import HF_FILES, OPENAI_FILES, Tokenizer

    if a.action == "train":
        from gpt2.bpe_train import train_bpe

        out = Path(a.output)
        if out.exists() and not out.is_dir():
            raise GPT2Error(f"--output {out}: exists and is not a folder")
        inputs = [Path(i) for i in a.input]
        tok = train_bpe(inputs, a.vocab_size, workers=a.workers, progress=not a.quiet, text_field=a.text_field)
        tok.save_pretrained(out, names=a.names)
        files = " + ".join(OPENAI_FILES if a.names == "openai" else HF_FILES)
        print(f"{out}: {files}, {tok.vocab_size:,} tokens ({len(tok.merges):,} merges)")
        return
    tok = Tokenizer.from_pretrained(a.tokenizer)
    if a.action == "encode":
        text = sys.stdin.read() if a.text is None else a.text
        ids = tok.encode(text, allowed_special="all" if a.allow_special else frozenset())
        print(" ".join(map(str, ids)))
    else:
        ids = _read_ids(a.ids if a.ids else sys.stdin.read().replace(",", " ").split())
        sys.stdout.buffer.write(tok.decode_bytes(ids))  # the exact bytes, so `encode | decode` round-trips
        sys.stdout.flush()
