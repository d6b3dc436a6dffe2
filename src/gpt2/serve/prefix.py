"""Prefix caching: the keys and values of prompts already prefilled, reused by later prompts that begin alike.

A prompt's first tokens fix their keys and values (and their log-probabilities) whatever follows, so requests that
share a beginning (a few-shot preamble, lm-evaluation-harness scoring each ending of a HellaSwag context, a
conversation sent again with one more turn) need only prefill what differs. Prompts are cut into blocks of BLOCK
tokens; a block is found by its tokens and the block before it (an id, so a lookup hashes BLOCK tokens, not the
whole prefix), and a prompt reuses its longest run of cached blocks from the start, then as many first tokens of a
cached block that follows them as it shares (so a context is reused to its last token, not to its last whole
block). Blocks hold the keys and values of every layer and, where the prompt was scored (echo with logprobs), each
token's log-probability and the likeliest alternatives. The least recently used blocks go first when the cache is
over its size; a lookup touches a prompt's blocks from the last to the first, so a block never outlives the one
before it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

BLOCK = 16  # tokens per block
TOP = 20  # alternatives kept per scored token: OpenAI's largest `logprobs`


@dataclass
class Scores:
    """Log-probabilities of a run of prompt tokens (the first token of a prompt has none: NaN) and the TOP likeliest
    tokens at each of their places."""

    logprob: torch.Tensor  # (n,) float32
    top_ids: torch.Tensor  # (n, TOP) int64
    top_logprobs: torch.Tensor  # (n, TOP) float32

    def __getitem__(self, index: slice) -> Scores:
        return Scores(self.logprob[index], self.top_ids[index], self.top_logprobs[index])

    def clone(self) -> Scores:
        return Scores(self.logprob.clone(), self.top_ids.clone(), self.top_logprobs.clone())

    @staticmethod
    def cat(parts: Sequence[Scores]) -> Scores:
        return Scores(*(torch.cat([getattr(p, f) for p in parts]) for f in ("logprob", "top_ids", "top_logprobs")))


@dataclass
class Block:
    key: tuple[int, tuple[int, ...]]  # the id of the block before it (-1: none) and its tokens
    id: int
    k: torch.Tensor  # (n_layer, n_head, BLOCK, head_dim)
    v: torch.Tensor
    scores: Scores | None


class PrefixCache:
    """Blocks of cached keys and values, at most `max_bytes` of them (0: caching off)."""

    def __init__(self, max_bytes: int, bytes_per_token: int) -> None:
        self.max_blocks = max_bytes // (bytes_per_token * BLOCK)
        self.blocks: OrderedDict[tuple[int, tuple[int, ...]], Block] = OrderedDict()
        self.children: dict[int, dict[tuple[int, ...], Block]] = {}  # by the id of the block before (-1: first)
        self.next_id = 0

    @property
    def enabled(self) -> bool:
        return self.max_blocks > 0

    def match(self, prompt: Sequence[int], scored: bool = False) -> tuple[list[Block], int]:
        """The cached blocks that begin `prompt`, in order (only blocks with scores, if `scored`), and how many of
        the prompt's tokens they hold: whole blocks, then the first tokens of a block that follows them."""
        found: list[Block] = []
        parent, start = -1, 0
        while (block := self.blocks.get((parent, tuple(prompt[start : start + BLOCK])))) is not None:
            if scored and block.scores is None:
                break
            found.append(block)
            parent, start = block.id, start + BLOCK
        rest, best, shared = prompt[start : start + BLOCK], None, 0
        for block in self.children.get(parent, {}).values():
            n = _common(block.key[1], rest)
            if n > shared and not (scored and block.scores is None):
                best, shared = block, n
        if best is not None:
            found.append(best)
        self._touch(found)
        return found, start + shared

    def insert(
        self, prompt: Sequence[int], k: torch.Tensor, v: torch.Tensor, scores: Scores | None, length: int
    ) -> None:
        """Keep the whole blocks among the first `length` tokens of prompt, whose keys and values are k and v
        (n_layer, n_head, >= length, head_dim), with their scores when given (one per token from the first)."""
        if not self.enabled:
            return
        run: list[Block] = []
        parent = -1
        for start in range(0, length - BLOCK + 1, BLOCK):
            key = (parent, tuple(prompt[start : start + BLOCK]))
            span = slice(start, start + BLOCK)
            block = self.blocks.get(key)
            if block is None:
                block = Block(key, self.next_id, k[:, :, span].clone(), v[:, :, span].clone(), None)
                self.next_id += 1
                self.blocks[key] = block
                self.children.setdefault(parent, {})[key[1]] = block
            if block.scores is None and scores is not None:
                block.scores = scores[span].clone()
            run.append(block)
            parent = block.id
        self._touch(run)
        while len(self.blocks) > self.max_blocks:
            (parent, tokens), _ = self.blocks.popitem(last=False)
            siblings = self.children[parent]
            del siblings[tokens]
            if not siblings:
                del self.children[parent]

    def _touch(self, run: list[Block]) -> None:
        # the first block becomes the most recent, so that it is evicted after every block that follows it
        for block in reversed(run):
            self.blocks.move_to_end(block.key)


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    """How many first items a and b share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
