"""gpt2: the complete GPT-2 system: byte-level BPE, the model, pretraining, evaluation and sampling."""

from gpt2.errors import GPT2Error
from gpt2.generate import generate, generate_stream
from gpt2.model import GPT, GPTConfig
from gpt2.tokenizer import Tokenizer

__all__ = ["GPT", "GPT2Error", "GPTConfig", "Tokenizer", "generate", "generate_stream"]
__version__ = "0.1.0"
