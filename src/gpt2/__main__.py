"""`python -m gpt2 ...` (and `torchrun ... -m gpt2 train ...`) runs the `gpt2` command."""

from gpt2.cli import main

main()
