"""What every task shares: the run context, the result type, few-shot sampling, and batched generation."""

from __future__ import annotations

import random
import re
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from gpt2.errors import GPT2Error
from gpt2.evaluate.data import DataDir
from gpt2.io import progress_bar

if TYPE_CHECKING:
    from gpt2.evaluate.scoring import Scorer
    from gpt2.model import GPT
    from gpt2.tokenizer import Tokenizer

T = TypeVar("T")


@dataclass
class Context:
    """Everything a task needs to run: the model and tokenizer, the scorer, the data folder, and the options."""

    model: GPT
    tokenizer: Tokenizer
    scorer: Scorer
    data: DataDir
    limit: int | None = None  # the first N examples, in file order
    shots: int | None = None  # None: each task's own default
    seed: int = 0
    stride: int | None = None  # perplexity windows' stride; None: the context length (disjoint windows)
    batch_size: int = 16
    progress: bool = False
    options: dict[str, Any] = field(default_factory=dict)  # task-specific settings (e.g. cbt_split)

    @property
    def n_ctx(self) -> int:
        return self.model.config.n_positions

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode_ordinary(text)


@dataclass
class Result:
    metrics: dict[str, float]  # percent for accuracies, F1, EM, ROUGE and BLEU
    n: int  # examples scored
    protocol: dict[str, Any]  # how: data file and digest, format, prompt, decoding, shots, truncations


class Task(ABC):
    """One evaluation. Subclasses document their protocol where they score it."""

    name: str
    metrics: tuple[str, ...]  # in the order the table prints them
    few_shot_default: int | None = None  # None: the task has no few-shot form

    @abstractmethod
    def run(self, ctx: Context) -> Result: ...

    def shots(self, ctx: Context) -> int:
        if self.few_shot_default is None:
            if ctx.shots:
                warnings.warn(f"{self.name} has no few-shot form in the paper or GPT-3; --shots ignored", stacklevel=2)
            return 0
        return self.few_shot_default if ctx.shots is None else ctx.shots


def take(items: Sequence[T], limit: int | None) -> list[T]:
    return list(items if limit is None else items[:limit])


def sample_shots(pool: Sequence[T], k: int, seed: int, key: str, exclude: int | None = None) -> list[T]:
    """k examples of pool, the same for the same (seed, key) on every run; never the example `exclude`."""
    if k <= 0:
        return []
    candidates = [i for i in range(len(pool)) if i != exclude] if exclude is not None else range(len(pool))
    rng = random.Random(f"{seed}:{key}")
    return [pool[i] for i in rng.sample(candidates, min(k, len(candidates)))]


def clip(ctx: Context, text: str, budget: int, keep: str) -> tuple[str, bool]:
    """text cut to at most `budget` tokens, keeping its "start" or its "end"; and whether it was cut."""
    if budget < 1:
        raise GPT2Error(f"the model's context ({ctx.n_ctx} tokens) is too short for this task's prompt and output")
    ids = ctx.encode(text)
    if len(ids) <= budget:
        return text, False
    kept = ids[:budget] if keep == "start" else ids[len(ids) - budget :]
    return ctx.tokenizer.decode(kept), True


def generate_all(
    ctx: Context,
    prompts: Sequence[str],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    stop: Sequence[str] = ("\n",),
    desc: str = "generating",
) -> list[str]:
    """One completion per prompt (gpt2.generate.complete), batch_size prompts of similar length at a time (sorted, so
    little left padding); batch b samples with seed + b."""
    from gpt2.generate import SamplingOptions, collect, complete

    lengths = [len(ctx.encode(p)) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    out = [""] * len(prompts)
    batches = [order[i : i + ctx.batch_size] for i in range(0, len(order), ctx.batch_size)]
    for b, batch in enumerate(progress_bar(batches, desc=desc, enabled=ctx.progress, unit="batch", leave=False)):
        options = SamplingOptions(temperature, top_k, seed=ctx.seed + b)
        pieces = complete(ctx.model, ctx.tokenizer, [prompts[i] for i in batch], max_new_tokens, options, stop=stop)
        texts = collect(pieces, len(batch))
        for i, text in zip(batch, texts, strict=True):
            out[i] = text
    return out


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def sentences(text: str) -> list[str]:
    """Sentences of generated text: split after . ! ? followed by space, and at line breaks."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def percent(hits: Sequence[bool | float]) -> float:
    return 100.0 * sum(hits) / len(hits) if hits else float("nan")
