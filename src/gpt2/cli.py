"""The `gpt2` command: dispatches to one module per command in gpt2.commands, imported only when that command
runs, so `gpt2 --help` answers at once and each command loads only the libraries it uses."""

from __future__ import annotations

import errno
import importlib
import os
import sys
import warnings

# name -> (module in gpt2.commands with run(argv), one line of help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "train a small GPT-2 end to end on text that ships with Python, then sample from it"),
    "tokenizer": ("tokenizer", "train a byte-level BPE vocabulary (`gpt2 tokenizer train`), or encode text"),
    "prepare": ("prepare", "tokenize text files into token shards for training"),
    "train": ("train", "pretrain or fine-tune a model on prepared shards (one CPU, GPU, or many with torchrun)"),
    "plot": ("plot", "draw a run's train/val loss against tokens seen to a PNG"),
    "generate": ("generate", "sample text from a model (top-k 40 by default, as in the paper)"),
    "eval": ("eval", "zero/few-shot evaluation with the paper's protocols (LAMBADA, WikiText, ...)"),
    "webtext": ("webtext", "build a WebText-style corpus from Reddit submission dumps (fetch, extract, dedup, filter)"),
    "overlap": ("overlap", "8-gram overlap of test sets with a training corpus, by Bloom filter (paper, Section 4)"),
    "scale": ("scale", "train and evaluate a family of model sizes on one budget; fit loss against parameters"),
    "serve": ("serve", "serve a model over HTTP: OpenAI's completions API with continuous batching, a playground"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: gpt2 COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`gpt2 COMMAND --help` describes one command."]
    return "\n".join(lines)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001
    return f"warning: {message}\n"


def main(argv: list[str] | None = None) -> None:
    from gpt2.errors import GPT2Error
    from gpt2.io import disk_full

    warnings.formatwarning = _one_line_warning
    try:
        dispatch(sys.argv[1:] if argv is None else argv)
    except GPT2Error as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # `gpt2 ... | head`: the reader has gone, and with it the need to print
        # Python flushes stdout once more at exit and would report a second BrokenPipeError; point it at devnull.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        print(f"error: {disk_full(e.filename or 'a file')}", file=sys.stderr)
        sys.exit(1)


def dispatch(argv: list[str]) -> None:
    """Run the command named by argv[0] with the rest of argv."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    if argv[0] == "--version":
        from gpt2 import __version__

        print(f"gpt2 {__version__}")
        return
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; known: {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    from gpt2.io import quiet

    try:  # a command with --quiet turns reporting off for its own run only
        importlib.import_module(f"gpt2.commands.{COMMANDS[name][0]}").run(rest)
    finally:
        quiet(False)


if __name__ == "__main__":
    main()
