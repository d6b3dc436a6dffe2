"""gpt2: the complete GPT-2 system: byte-level BPE, the model, pretraining, evaluation and sampling.

The public names below are imported on first use (PEP 562), so that `import gpt2` and the `gpt2` command
start without loading torch.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
# public name -> the module that defines it
_EXPORTS = {
    "GPT": "gpt2.model",
    "GPTConfig": "gpt2.model",
    "GPT2Error": "gpt2.errors",
    "SamplingOptions": "gpt2.generate",
    "Tokenizer": "gpt2.tokenizer",
    "generate": "gpt2.generate",
    "generate_stream": "gpt2.generate",
}
__all__ = ["GPT", "GPT2Error", "GPTConfig", "SamplingOptions", "Tokenizer", "generate", "generate_stream"]

if TYPE_CHECKING:
    from gpt2.errors import GPT2Error
    from gpt2.generate import SamplingOptions, generate, generate_stream
    from gpt2.model import GPT, GPTConfig
    from gpt2.tokenizer import Tokenizer


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gpt2' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


class _Package(types.ModuleType):
    """Keeps `gpt2.generate` the function: importing the submodule gpt2.generate binds the module to that name
    on the package (Python's import system does so once the submodule has run), which would hide the function."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "generate" and isinstance(value, types.ModuleType):
            value = value.generate
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
