"""HellaSwag (Zellers et al. 2019), validation set: pick the right one of four endings. Not in the paper; the
modern standard for small models.

Protocol (lm-evaluation-harness 0.4.13's hellaswag task: lm_eval/tasks/hellaswag/utils.py and hellaswag.yaml;
tests/test_evaluate_harness.py holds the strings and the scores to the harness's own): context = activity label +
": " + ctx_a + " " + ctx_b capitalised, with the WikiHow markup cleaned ("[title]" -> ". ", other [tags] dropped,
double spaces collapsed once); each ending, cleaned the same way, is scored as " " + ending given the context
(which runs once for the four).
* acc: the ending with the highest total log-probability.
* acc_norm: the highest log-probability per character of the ending.
Formats: the official hellaswag_val.jsonl, or llama.cpp's hellaswag_val_full.txt[.bz2] (6 lines a task: context
already cleaned as above, label, four endings), which ../shared/data holds; the protocol says which was read.
Few-shot (GPT-3's): K training examples with their right ending, blank-line separated, from hellaswag_train.jsonl.
"""

from __future__ import annotations

import re
from pathlib import Path

from gpt2.errors import GPT2Error
from gpt2.evaluate.data import DataFile, lines, read_jsonl, read_text
from gpt2.evaluate.tasks.base import Context, Result, Task, percent, sample_shots

_BASE = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/"
VAL = DataFile(
    "hellaswag",
    "hellaswag_val.jsonl",
    _BASE + "hellaswag_val.jsonl",
    "0aa3b88843990f3f10a97b9575c94d7b71fb2205240ba04ae4884d9e9c992588",
    file_sha256=("0aa3b88843990f3f10a97b9575c94d7b71fb2205240ba04ae4884d9e9c992588",),
)
TRAIN = DataFile(
    "hellaswag",
    "hellaswag_train.jsonl",
    _BASE + "hellaswag_train.jsonl",
    "dae5e69249868cb9fe4e23ff925c60b66169564cfb7072d793cd7356a2b69f8d",
)
# llama.cpp's text rendering of the validation set (klosax/hellaswag_text_data), compressed or not.
LLAMA_CPP = tuple(
    DataFile("hellaswag", name, "https://github.com/klosax/hellaswag_text_data", None)
    for name in ("hellaswag_val_full.txt.bz2", "hellaswag_val_full.txt")
)

Example = tuple[str, list[str], int]  # context, endings, label


def clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def parse_record(d: dict) -> Example:
    ctx = d["ctx_a"] + " " + d["ctx_b"].capitalize()
    return clean(d["activity_label"] + ": " + ctx), [clean(e) for e in d["endings"]], int(d["label"])


def read_official(path: Path) -> list[Example]:
    return read_jsonl(path, parse_record, "a HellaSwag record (ctx_a, ctx_b, endings, label)")


def read_llama_cpp(path: Path) -> list[Example]:
    rows = [row.rstrip("\n") for row in lines(read_text(path))]
    if len(rows) % 6:
        raise GPT2Error(f"{path}: {len(rows)} lines is not a multiple of 6 (context, label, 4 endings per task)")
    examples = []
    for i in range(0, len(rows), 6):
        if not rows[i + 1].strip().isdigit() or not 0 <= int(rows[i + 1]) <= 3:
            raise GPT2Error(f"{path}:{i + 2}: expected the label 0-3, got {rows[i + 1][:20]!r}")
        examples.append((rows[i], rows[i + 2 : i + 6], int(rows[i + 1])))
    return examples


class HellaSwag(Task):
    name = "hellaswag"
    metrics = ("acc_norm", "acc")
    few_shot_default = 0

    def run(self, ctx: Context) -> Result:
        path = ctx.data.find(VAL)
        llama_cpp = None if path else next(((f, p) for f in LLAMA_CPP if (p := ctx.data.find(f))), None)
        if llama_cpp is not None:
            source, path = llama_cpp
            examples, fmt = read_llama_cpp(path), "llama.cpp hellaswag_val_full.txt (6 lines a task)"
        else:
            source, path = VAL, ctx.data.path(VAL)
            examples, fmt = read_official(path), "official hellaswag_val.jsonl"
        examples = examples[: ctx.limit]
        k = self.shots(ctx)
        pool = read_official(ctx.data.path(TRAIN)) if k else []
        groups = []
        for i, (context, endings, _) in enumerate(examples):
            shots = "".join(f"{c} {e[label]}\n\n" for c, e, label in sample_shots(pool, k, ctx.seed, f"hellaswag{i}"))
            groups.append((ctx.encode(shots + context), [ctx.encode(" " + e) for e in endings]))
        scores = ctx.scorer.score_shared(groups, desc=self.name)
        acc, acc_norm = [], []
        for (_, endings, label), s in zip(examples, scores, strict=True):
            acc.append(max(range(4), key=lambda j: s[j].logprob) == label)
            acc_norm.append(max(range(4), key=lambda j: s[j].logprob / max(len(endings[j]), 1)) == label)
        protocol = {
            "data": ctx.data.describe(source, path, format=fmt),
            "shots": k,
            "acc_norm": "log-probability per character of the ending",
            "truncated_contexts": sum(s[0].truncated for s in scores),
        }
        return Result({"acc_norm": percent(acc_norm), "acc": percent(acc)}, len(examples), protocol)
