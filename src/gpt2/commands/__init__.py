"""One module per `gpt2 COMMAND`: each parses its options (`parser()`), then calls the library (`run(argv)`).

The dispatcher (gpt2.cli) imports a command's module only when that command runs, and a command imports the
library only after its options are parsed, so `gpt2 --help` and `gpt2 COMMAND --help` never load torch. What
several commands share lives here: the device options and loading a model folder with its tokenizer.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from gpt2.errors import GPT2Error

if TYPE_CHECKING:
    from gpt2.model import GPT
    from gpt2.tokenizer import Tokenizer


def add_device_options(parser: argparse.ArgumentParser, dtype_default: str, dtype_help: str) -> None:
    """--device and --dtype, as gpt2.devices reads them, plus int8 (gpt2.quantize) for loading a model."""
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto: the GPU if there is one")
    choices = ("auto", "float32", "bfloat16", "float16", "int8")
    int8 = (
        "; int8: the decoder's matrices and output layer quantised to int8 as the model loads (activations in "
        "float32), the fastest on a CPU; a folder saved quantised loads as int8 by default"
    )
    parser.add_argument("--dtype", choices=choices, default=dtype_default, help=dtype_help + int8)


def load_model(name: str, tokenizer_name: str | None, device: str, dtype: str) -> tuple[GPT, Tokenizer, Any]:
    """A model folder or official name on the chosen device and dtype, with its tokenizer (or `tokenizer_name`'s),
    checked to fit it; and the torch device."""
    from gpt2.checkpoint import read_quantization, resolve
    from gpt2.devices import pick_device, pick_dtype
    from gpt2.model import GPT
    from gpt2.tokenizer import Tokenizer

    torch_device = pick_device(device)
    folder = resolve(name)
    if dtype == "auto" and read_quantization(folder) is not None:
        dtype = "int8"  # a folder saved quantised holds no float weights to pick a dtype for
    torch_dtype = "int8" if dtype == "int8" else pick_dtype(dtype, torch_device)
    model = GPT.from_pretrained(folder, device=torch_device, dtype=torch_dtype)
    tokenizer = Tokenizer.from_pretrained(tokenizer_name or folder)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise GPT2Error(
            f"{folder}: the tokenizer has {tokenizer.vocab_size} tokens but the model only {model.config.vocab_size}"
        )
    return model, tokenizer, torch_device
