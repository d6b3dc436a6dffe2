"""LAMBADA (Paperno et al. 2016), in OpenAI's detokenized test set: predict the last word of a passage whose
answer needs the whole passage.

Protocol (as the paper and OpenAI's file define it): context = the passage up to its last space; target = " " +
the last word, punctuation and all. No <|endoftext|> is prepended. The same strings as lm-evaluation-harness
0.4.13's lambada_openai task, whose acc and perplexity are acc and ppl here (tests/test_evaluate_harness.py).
* acc: every target token is the argmax given the true prefix (greedy decoding reproduces the word).
* ppl: exp(-mean over examples of the target's summed log-probability), the paper's per-word perplexity.
* acc_last_token: only the final BPE token of the target must be the argmax (a common, weaker variant).
* acc_stopword_filter: the paper's "stop-word filter": the first token's argmax is taken over the tokens that do
  not spell a stop word (STOP_WORDS below, as a whole word with its leading space), the rest as in acc. OpenAI
  did not publish their list; this is NLTK's English list.
Few-shot: K other passages of the test file (OpenAI's file has no other split), whole, separated by blank lines.
(GPT-3's few-shot LAMBADA used a fill-in-the-blank format instead; it is not reproduced here.)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from gpt2.errors import GPT2Error
from gpt2.evaluate.data import DataFile, read_jsonl
from gpt2.evaluate.tasks.base import Context, Result, Task, percent, sample_shots, take

if TYPE_CHECKING:
    import torch

    from gpt2.tokenizer import Tokenizer

LAMBADA_SHA256 = "4aa8d02cd17c719165fc8a7887fddd641f43fcafa4b1c806ca8abc31fabdb226"
LAMBADA = DataFile(
    "lambada",
    "lambada_test.jsonl",
    "https://openaipublic.blob.core.windows.net/gpt-2/data/lambada_test.jsonl",
    LAMBADA_SHA256,
    file_sha256=(LAMBADA_SHA256,),
)

# NLTK's English stop words (nltk.corpus.stopwords.words("english"), the classic 179-word list).
_NLTK_ENGLISH = """i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself yourselves
    he him his himself she she's her hers herself it it's its itself they them their theirs themselves what which who
    whom this that that'll these those am is are was were be been being have has had having do does did doing a
    an the and but if or because as until while of at by for with about against between into through during
    before after above below to from up down in out on off over under again further then once here there when
    where why how all any both each few more most other some such no nor not only own same so than too very s t
    can will just don don't should should've now d ll m o re ve y ain aren aren't couldn couldn't didn didn't
    doesn doesn't hadn hadn't hasn hasn't haven haven't isn isn't ma mightn mightn't mustn mustn't needn needn't
    shan shan't shouldn shouldn't wasn wasn't weren weren't won won't wouldn wouldn't"""
STOP_WORDS = frozenset(_NLTK_ENGLISH.split())


def read_lambada(path: Path) -> list[str]:
    """The passages of OpenAI's lambada_test.jsonl ({"text"}), or of the {"context", "continuation"} copies of it
    (lm-evaluation-harness's lambada_openai), whose passage is the context, a space, and the last word."""
    return read_jsonl(
        path,
        lambda d: d["text"] if "text" in d else f"{d['context']} {d['continuation']}",
        "a JSON object with a 'text' field (or 'context' and 'continuation')",
    )


def split_last_word(text: str) -> tuple[str, str]:
    """(context, " " + last word) of a passage."""
    context, sep, word = text.rstrip().rpartition(" ")
    if not sep or not context:
        raise GPT2Error(f"LAMBADA passage has no last word to predict: {text[:60]!r}")
    return context, " " + word


def stop_word_mask(tokenizer: Tokenizer) -> torch.Tensor:
    """True for the tokens that are a whole stop word with its leading space (" the", " He", ...)."""
    import torch

    mask = torch.zeros(tokenizer.vocab_size, dtype=torch.bool)
    for i in range(tokenizer.eot_id):
        b = tokenizer.decode_bytes([i])
        if b.startswith(b" ") and b[1:].decode("utf-8", "replace").lower() in STOP_WORDS:
            mask[i] = True
    return mask


class Lambada(Task):
    name = "lambada"
    metrics = ("ppl", "acc", "acc_stopword_filter", "acc_last_token")
    few_shot_default = 0

    def run(self, ctx: Context) -> Result:
        path = ctx.data.path(LAMBADA)
        passages = read_lambada(path)
        k = self.shots(ctx)
        requests = []
        for i, text in enumerate(take(passages, ctx.limit)):
            context, target = split_last_word(text)
            shots = "".join(p + "\n\n" for p in sample_shots(passages, k, ctx.seed, f"lambada{i}", exclude=i))
            requests.append((ctx.encode(shots + context), ctx.encode(target)))
        scores = ctx.scorer.score(requests, exclude_first=stop_word_mask(ctx.tokenizer), desc=self.name)
        n = len(scores)
        metrics = {
            "ppl": math.exp(math.fsum(-s.logprob for s in scores) / n),
            "acc": percent([s.greedy for s in scores]),
            "acc_stopword_filter": percent([s.greedy_filtered for s in scores]),
            "acc_last_token": percent([s.last_greedy for s in scores]),
        }
        protocol = {
            "data": ctx.data.describe(LAMBADA, path, format="OpenAI lambada_test.jsonl"),
            "context": "passage up to its last space; no <|endoftext|> prepended",
            "target": '" " + last word',
            "shots": k,
            "stop_words": "NLTK English (179 words), whole-word tokens with a leading space",
            "truncated_contexts": sum(s.truncated for s in scores),
        }
        return Result(metrics, n, protocol)
