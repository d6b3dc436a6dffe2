"""Log-probabilities of target tokens given their contexts: the engine under every likelihood task.

* Batched and padding-aware: sequences are sorted by length and right-padded (the model is causal, so padding
  after a sequence never affects it and needs no mask); one forward pass per batch.
* Only the scored positions go through the vocabulary projection, and their log-softmax is taken in float32.
* Windowed: a sequence longer than the model's context is scored in windows (`stride` new tokens each, the rest
  of the window as context), so nothing is ever cut off silently.
* Shared prefixes (a cloze context with several candidate endings) run once; the candidates then continue from
  copies of the prefix's KV cache.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from gpt2.errors import GPT2Error
from gpt2.io import progress_bar
from gpt2.model import GPT

_PROJECT_ROWS = 2048  # positions per vocabulary projection: bounds the float32 logits to ~400 MB


@dataclass(frozen=True)
class Score:
    """The model's judgement of one target sequence."""

    logprob: float  # sum of the target tokens' log-probabilities (nats)
    n_tokens: int
    greedy: bool  # every target token is the argmax given the true prefix
    last_greedy: bool  # the final target token is the argmax
    greedy_filtered: bool  # as greedy, but the first token's argmax excludes the `exclude_first` tokens
    truncated: bool  # the context did not fit the window in full: its oldest tokens were not seen


@dataclass
class _Window:
    request: int
    ids: torch.Tensor  # model input (a view of the request's tokens)
    first: int  # input position whose logits predict the first scored token
    targets: torch.Tensor
    opens: bool  # scores the request's first target token
    closes: bool  # scores its last


class _Tally:
    def __init__(self) -> None:
        self.logprob = 0.0
        self.n = 0
        self.first_hit = False  # the first target token is the argmax
        self.filtered_hit: bool | None = None  # ... the argmax of the allowed tokens
        self.rest_hit = True  # every later target token is the argmax
        self.last_hit = False
        self.truncated = False

    def score(self) -> Score:
        filtered = self.first_hit if self.filtered_hit is None else self.filtered_hit
        greedy = self.first_hit and self.rest_hit
        return Score(self.logprob, self.n, greedy, self.last_hit, filtered and self.rest_hit, self.truncated)


def windows(context: Sequence[int], target: Sequence[int], n_ctx: int, stride: int) -> Iterator[tuple[int, int, int]]:
    """(start, p, q): the model reads seq[start : q - 1] and scores seq[p:q], where seq = context + target.

    The first window scores as much as fits with all the context it can hold; each later one scores the next
    `stride` tokens, seeing the n_ctx - stride tokens before them. stride == n_ctx gives disjoint windows.
    """
    c, n = len(context), len(context) + len(target)
    p, q = c, min(n, max(n_ctx + 1, c + stride))
    while p < n:
        yield max(0, q - 1 - n_ctx), p, q
        p, q = q, min(n, q + stride)


class Scorer:
    """Scores (context, target) token sequences with one model. batch_size bounds the rows of a forward pass,
    max_batch_tokens its rows x length (which bounds activation memory for long windows)."""

    def __init__(self, model: GPT, batch_size: int = 16, max_batch_tokens: int = 16384, progress: bool = False) -> None:
        if batch_size < 1:
            raise GPT2Error(f"batch size must be >= 1, got {batch_size}")
        self.model = model
        self.batch_size = batch_size
        self.max_batch_tokens = max(max_batch_tokens, model.config.n_positions)
        self.progress = progress
        self.device = model.lm_head.weight.device

    @property
    def n_ctx(self) -> int:
        return self.model.config.n_positions

    # ------------------------------------------------------------------ independent requests
    @torch.inference_mode()
    def score(
        self,
        requests: Sequence[tuple[Sequence[int], Sequence[int]]],
        *,
        stride: int | None = None,
        exclude_first: torch.Tensor | None = None,
        desc: str = "scoring",
    ) -> list[Score]:
        """One Score per (context, target); the context needs at least one token (use <|endoftext|> to score
        a text from its start). exclude_first: a bool mask over the vocabulary (see Score.greedy_filtered)."""
        stride = stride or self.n_ctx
        if not 1 <= stride <= self.n_ctx:
            raise GPT2Error(f"stride must be in 1..{self.n_ctx} (the context length), got {stride}")
        tallies = [_Tally() for _ in requests]
        work: list[_Window] = []
        for i, (context, target) in enumerate(requests):
            if not context or not target:
                raise GPT2Error("every scored request needs a non-empty context and target")
            seq = torch.tensor([*context, *target], dtype=torch.long)  # windows are views of it
            for start, p, q in windows(context, target, self.n_ctx, stride):
                opens, closes = p == len(context), q == len(seq)
                if opens and start > 0:
                    tallies[i].truncated = True
                work.append(_Window(i, seq[start : q - 1], p - 1 - start, seq[p:q], opens, closes))
        order = sorted(range(len(work)), key=lambda w: -len(work[w].ids))
        with progress_bar(total=len(work), desc=desc, enabled=self.progress, unit="window", leave=False) as bar:
            for batch in self._batches(order, lambda w: len(work[w].ids)):
                ws = [work[w] for w in batch]
                x = torch.zeros(len(ws), len(ws[0].ids), dtype=torch.long)
                for row, w in enumerate(ws):
                    x[row, : len(w.ids)] = w.ids
                h = self.model.hidden_states(x.to(self.device))
                rows = torch.cat([torch.full((len(w.targets),), r) for r, w in enumerate(ws)])
                cols = torch.cat([torch.arange(w.first, w.first + len(w.targets)) for w in ws])
                self._tally(h[rows.to(self.device), cols.to(self.device)], ws, tallies, exclude_first)
                bar.update(len(ws))
        return [t.score() for t in tallies]

    # ------------------------------------------------------------------ shared prefixes
    @torch.inference_mode()
    def score_shared(
        self, groups: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]], *, desc: str = "scoring"
    ) -> list[list[Score]]:
        """Scores of each continuation given its group's prefix, running each prefix once.

        A prefix too long for the window with its longest continuation loses its oldest tokens (Score.truncated).
        """
        prepared: list[tuple[list[int], list[list[int]], bool]] = []
        for prefix, conts in groups:
            if not prefix or not conts or not all(conts):
                raise GPT2Error("every scored group needs a non-empty prefix and non-empty continuations")
            longest = max(len(c) for c in conts)
            if longest > self.n_ctx:
                raise GPT2Error(f"a continuation of {longest} tokens is longer than the context ({self.n_ctx})")
            keep = self.n_ctx + 1 - longest
            prepared.append((list(prefix[-keep:]), [list(c) for c in conts], len(prefix) > keep))
        results: list[list[Score]] = [[] for _ in groups]
        order = sorted(range(len(groups)), key=lambda g: -len(prepared[g][0]))

        def cost(g: int) -> int:  # rows x length of the continuation pass, the memory that matters
            prefix, conts, _ = prepared[g]
            return len(conts) * (len(prefix) + max(len(c) for c in conts))

        with progress_bar(total=len(groups), desc=desc, enabled=self.progress, unit="ex", leave=False) as bar:
            for batch in self._batches(order, cost, rows=lambda g: len(prepared[g][1])):
                for g, scores in zip(batch, self._score_group_batch([prepared[g] for g in batch]), strict=True):
                    results[g] = scores
                bar.update(len(batch))
        return results

    def _score_group_batch(self, groups: list[tuple[list[int], list[list[int]], bool]]) -> list[list[Score]]:
        dev = self.device
        lengths = [len(p) for p, _, _ in groups]
        lmax = max(lengths)
        tc = max(len(c) for _, conts, _ in groups for c in conts) - 1  # the last token of a continuation is not fed
        x = torch.zeros(len(groups), lmax, dtype=torch.long)
        for g, (prefix, _, _) in enumerate(groups):
            x[g, : len(prefix)] = torch.tensor(prefix)
        cache = self.model.new_cache(len(groups), lmax + max(tc, 0))
        hp = self.model.hidden_states(x.to(dev), cache)  # right padding: later positions never affect earlier ones
        owner = torch.tensor([g for g, (_, conts, _) in enumerate(groups) for _ in conts])
        conts = [c for _, cs, _ in groups for c in cs]
        first_h = hp[owner.to(dev), torch.tensor([lengths[g] - 1 for g in owner.tolist()], device=dev)]
        if tc > 0:
            rows = len(conts)
            rcache = self.model.new_cache(rows, lmax + tc)
            rcache.copy_rows(cache, owner.to(dev))  # each continuation starts from its own group's prefix
            y = torch.zeros(rows, tc, dtype=torch.long)
            for r, c in enumerate(conts):
                y[r, : len(c) - 1] = torch.tensor(c[:-1])
            plen = torch.tensor([lengths[g] for g in owner.tolist()])
            # padding may run past the last position; clamped, as its outputs are never read
            positions = (plen[:, None] + torch.arange(tc)[None, :]).clamp(max=self.n_ctx - 1)
            mask = torch.zeros(rows, 1, tc, lmax + tc, dtype=torch.bool)
            mask[:, 0, :, :lmax] = (torch.arange(lmax)[None, :] < plen[:, None])[:, None, :]  # own prefix only
            mask[:, 0, :, lmax:] = torch.ones(tc, tc, dtype=torch.bool).tril()
            hc = self.model.hidden_states(y.to(dev), rcache, positions.to(dev), mask.to(dev))
        hidden = []
        for r, c in enumerate(conts):
            hidden.append(first_h[r : r + 1])
            if len(c) > 1:
                hidden.append(hc[r, : len(c) - 1])
        ws = [_Window(r, torch.empty(0), 0, torch.tensor(c), True, True) for r, c in enumerate(conts)]
        tallies = [_Tally() for _ in conts]
        self._tally(torch.cat(hidden), ws, tallies, None)
        out, r = [], 0
        for _, cs, truncated in groups:
            for t in tallies[r : r + len(cs)]:
                t.truncated = truncated
            out.append([t.score() for t in tallies[r : r + len(cs)]])
            r += len(cs)
        return out

    # ------------------------------------------------------------------ shared machinery
    def _batches(self, order: list[int], cost, rows=lambda i: 1) -> Iterator[list[int]]:  # noqa: ANN001
        """Consecutive runs of `order` (sorted longest first) within the row and rows x length budgets."""
        batch: list[int] = []
        n_rows = 0
        for i in order:
            r = rows(i)
            if batch and (n_rows + r > self.batch_size or (len(batch) + 1) * cost(batch[0]) > self.max_batch_tokens):
                yield batch
                batch, n_rows = [], 0
            batch.append(i)
            n_rows += r
        if batch:
            yield batch

    def _tally(
        self, hidden: torch.Tensor, ws: list[_Window], tallies: list[_Tally], exclude_first: torch.Tensor | None
    ) -> None:
        """Project the scored positions' hidden states (in window order), then add each window's log-probs and
        argmax checks to its request's tally."""
        targets = torch.cat([w.targets for w in ws]).to(hidden.device)
        logprobs, hits = [], []
        for lo in range(0, len(targets), _PROJECT_ROWS):
            logits = self.model.lm_head(hidden[lo : lo + _PROJECT_ROWS]).float()
            tgt = targets[lo : lo + _PROJECT_ROWS]
            logprobs.append(logits.log_softmax(-1).gather(1, tgt[:, None]).squeeze(1))
            hits.append(logits.argmax(-1) == tgt)
        lp, hit = torch.cat(logprobs).cpu(), torch.cat(hits).cpu()
        filtered = None
        if exclude_first is not None:
            lengths = torch.tensor([len(w.targets) for w in ws])
            starts = lengths.cumsum(0) - lengths
            opening = [j for j, w in enumerate(ws) if w.opens]
            if opening:
                at = starts[opening].to(hidden.device)
                logits = self.model.lm_head(hidden[at]).float().masked_fill(exclude_first.to(hidden.device), -torch.inf)
                filtered = dict(zip(opening, (logits.argmax(-1) == targets[at]).cpu().tolist(), strict=True))
        lo = 0
        for j, w in enumerate(ws):
            n = len(w.targets)
            t = tallies[w.request]
            t.logprob += float(lp[lo : lo + n].double().sum())
            t.n += n
            rest = lo + 1 if w.opens else lo
            if w.opens:
                t.first_hit = bool(hit[lo])
                if filtered is not None:
                    t.filtered_hit = filtered[j]
            t.rest_hit = t.rest_hit and bool(hit[rest : lo + n].all())
            if w.closes:
                t.last_hit = bool(hit[lo + n - 1])
            lo += n
