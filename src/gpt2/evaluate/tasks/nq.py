"""Natural Questions, open-domain (NQ-open, Lee et al. 2019), the 3,610-question dev split that all work before
December 2020 reports.

Protocol (the paper's): the model is "seeded with example question answer pairs" and answers a new question
with no document, in the form
    Q: {question}\\nA: {answer}\\n\\n ... Q: {question}\\nA:
decoded greedily to the end of the line (at most 24 tokens). em: exact match with SQuAD normalisation against
any of the gold answers (the paper's "accuracy").
The example pairs: K (default 5, --shots) per question from the EfficientQA dev split (NQ-open's other
published questions, disjoint from the test questions), deterministically by --seed; the paper does not say how
many it used.
"""

from __future__ import annotations

from pathlib import Path

from gpt2.evaluate.data import DataFile, read_jsonl
from gpt2.evaluate.metrics import exact_match, max_over_golds
from gpt2.evaluate.tasks.base import Context, Result, Task, generate_all, percent, sample_shots, take

_BASE = (
    "https://raw.githubusercontent.com/google-research-datasets/natural-questions/"
    "fb26a3073b1fe636c97302890a27b491d6530130/nq_open/"
)
DEV = DataFile(
    "nq_open",
    "NQ-open.dev.jsonl",
    _BASE + "NQ-open.dev.jsonl",
    "f15567f38099f3615f5b8a685c0aef449c11ad90d3da3735e8d1b98115b40616",
    file_sha256=("f15567f38099f3615f5b8a685c0aef449c11ad90d3da3735e8d1b98115b40616",),
)
SHOT_POOL = DataFile(
    "nq_open",
    "NQ-open.efficientqa.dev.1.1.jsonl",
    _BASE + "NQ-open.efficientqa.dev.1.1.jsonl",
    "0ad45e2fa9fd32d10b3cf08c63e6d22f97ba1a0ce44ea98040f4c18bce7e268d",
)
MAX_ANSWER_TOKENS = 24

QA = tuple[str, list[str]]


def read_nq(path: Path) -> list[QA]:
    return read_jsonl(path, lambda d: (d["question"], list(d["answer"])), "a JSON object with 'question' and 'answer'")


def prompt(question: str, shots: list[QA]) -> str:
    return "".join(f"Q: {q}\nA: {a[0]}\n\n" for q, a in shots) + f"Q: {question}\nA:"


class NaturalQuestions(Task):
    name = "nq"
    metrics = ("em",)
    few_shot_default = 5

    def run(self, ctx: Context) -> Result:
        path = ctx.data.path(DEV)
        questions = take(read_nq(path), ctx.limit)
        k = self.shots(ctx)
        pool_path = ctx.data.path(SHOT_POOL) if k else None
        pool = read_nq(pool_path) if pool_path else []
        prompts = [prompt(q, sample_shots(pool, k, ctx.seed, f"nq{i}")) for i, (q, _) in enumerate(questions)]
        answers = generate_all(ctx, prompts, MAX_ANSWER_TOKENS, desc=self.name)
        hits = [max_over_golds(exact_match, a.strip(), golds) for a, (_, golds) in zip(answers, questions, strict=True)]
        protocol = {
            "data": ctx.data.describe(DEV, path),
            "prompt": "K x 'Q: {q}\\nA: {a}\\n\\n', then 'Q: {question}\\nA:'",
            "shots": k,
            "shots_from": str(pool_path) if pool_path else None,
            "decoding": f"greedy, until a newline, at most {MAX_ANSWER_TOKENS} tokens",
        }
        return Result({"em": percent(hits)}, len(questions), protocol)
