"""Metrics of the evaluation suite. BLEU and ROUGE come from their reference libraries (sacrebleu, Google's
rouge-score); the answer-matching metrics of SQuAD and CoQA are a few lines each and follow the official scripts.

Percent scale throughout (accuracy, F1, EM, ROUGE, BLEU), as the paper's tables print them.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's (and CoQA's) answer normalisation: lower case, drop punctuation and the articles a/an/the, and
    collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """Bag-of-words F1 between normalised answers; two empty answers agree (CoQA's "unknown" case)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def max_over_golds(metric, prediction: str, golds: Sequence[str]) -> float:  # noqa: ANN001
    """SQuAD's rule for several references: the best match counts."""
    return max(metric(prediction, g) for g in golds)


def coqa_scores(prediction: str, golds: Sequence[str]) -> tuple[float, float]:
    """(EM, F1) of one CoQA answer as the official script scores it: with n > 1 human answers, the mean over the
    n ways of leaving one out of the best match among the other n - 1 (so that humans and models are compared
    on equal terms); with one answer, the plain match."""
    if len(golds) == 1:
        return exact_match(prediction, golds[0]), token_f1(prediction, golds[0])
    em = f1 = 0.0
    for i in range(len(golds)):
        others = golds[:i] + golds[i + 1 :]
        em += max_over_golds(exact_match, prediction, others)
        f1 += max_over_golds(token_f1, prediction, others)
    return em / len(golds), f1 / len(golds)


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU with sacrebleu's defaults (13a tokenisation, exponent smoothing), the WMT standard."""
    return corpus_bleu_signed(hypotheses, references)[0]


def corpus_bleu_signed(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, str]:
    """corpus_bleu and sacrebleu's signature of how it was computed (nrefs|case|eff|tok|smooth|version), which
    BLEU figures must carry to be comparable (Post 2018, "A Call for Clarity in Reporting BLEU Scores")."""
    from sacrebleu.metrics import BLEU

    bleu = BLEU()
    return float(bleu.corpus_score(list(hypotheses), [list(references)]).score), str(bleu.get_signature())


ROUGE_TYPES = ("rouge1", "rouge2", "rougeLsum", "rougeL")


def rouge_f1(
    predictions: Sequence[str], references: Sequence[str], types: Sequence[str] = ROUGE_TYPES
) -> dict[str, float]:
    """Mean ROUGE F1 over examples (rouge-score, Porter stemming as in ROUGE-1.5.5's -m), in percent, by rouge-score's
    names. Texts hold one sentence per line. rougeLsum is ROUGE-L as ROUGE-1.5.5 scores a multi-sentence summary
    (the summary-level union LCS of each reference sentence against the prediction's sentences; rouge-score splits
    at newlines); rougeL is one LCS over the whole text, sentence breaks ignored. rouge1 and rouge2 ignore lines."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(types), use_stemmer=True)
    totals = dict.fromkeys(types, 0.0)
    for pred, ref in zip(predictions, references, strict=True):
        for name, s in scorer.score(ref, pred).items():
            totals[name] += s.fmeasure
    n = max(len(predictions), 1)
    return {name: 100 * total / n for name, total in totals.items()}


def perplexity(nll: float, count: int) -> float:
    """exp of the mean negative log-likelihood (nats) per counted unit (token, word)."""
    return math.exp(nll / count) if count else float("nan")


def bits_per_unit(nll: float, count: int) -> float:
    """Total negative log-likelihood in bits per counted unit (byte, character)."""
    return nll / math.log(2) / count if count else float("nan")
