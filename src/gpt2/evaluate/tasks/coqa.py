"""CoQA (Reddy et al. 2019), development set: answer the next question of a conversation about a document.

Protocol (the paper's): the document, the conversation so far (with the gold answers), then the new question
and a final "A:", in the form
    {story}\\n\\nQ: {q1}\\nA: {a1}\\nQ: {q2}\\nA:
decoded greedily up to the first newline (at most 50 tokens). Every question of every story is one example, in
file order. A prompt longer than the window loses the start of its document (counted in the protocol).
f1 / em: CoQA's official scoring: SQuAD normalisation, and with the dev set's 4 human answers, the mean over the
4 leave-one-out maxima.
Few-shot (GPT-3's): K whole training conversations before the document; they are the first thing cut when the
prompt does not fit GPT-2's window.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from gpt2.errors import GPT2Error
from gpt2.evaluate.data import DataFile, read_text
from gpt2.evaluate.metrics import coqa_scores
from gpt2.evaluate.tasks.base import Context, Result, Task, clip, generate_all, percent, sample_shots

DEV = DataFile(
    "coqa",
    "coqa-dev-v1.0.json",
    "https://nlp.stanford.edu/data/coqa/coqa-dev-v1.0.json",
    "dfa367a9733ce53222918d0231d9b3bedc2b8ee831a2845f62dfc70701f2540a",
    file_sha256=("dfa367a9733ce53222918d0231d9b3bedc2b8ee831a2845f62dfc70701f2540a",),
)
TRAIN = DataFile(
    "coqa",
    "coqa-train-v1.0.json",
    "https://nlp.stanford.edu/data/coqa/coqa-train-v1.0.json",
    "b0fdb2bc1bd38dd3ca2ce5fa2ac3e02c6288ac914f241ac409a655ffb6619fa6",
)
MAX_ANSWER_TOKENS = 50


@dataclass(frozen=True)
class Story:
    text: str
    questions: list[str]
    answers: list[list[str]]  # per turn: the gold answer, then the additional human answers
    id: str = ""


def read_coqa(path: Path) -> list[Story]:
    try:
        data = json.loads(read_text(path))["data"]
        stories = []
        for d in data:
            questions = [q["input_text"] for q in d["questions"]]
            answers = [[a["input_text"]] for a in d["answers"]]
            for extra in d.get("additional_answers", {}).values():
                for turn, a in zip(answers, extra, strict=False):
                    turn.append(a["input_text"])
            if len(questions) != len(answers):
                raise ValueError
            stories.append(Story(d["story"], questions, answers, str(d.get("id", ""))))
    except (ValueError, KeyError, TypeError):
        raise GPT2Error(f"{path}: expected CoQA JSON ({{'data': [{{'story', 'questions', 'answers'}}]}})") from None
    return stories


def conversation(story: Story, turns: int) -> str:
    return "".join(f"Q: {q}\nA: {a[0]}\n" for q, a in zip(story.questions[:turns], story.answers[:turns], strict=True))


def transcript(story: Story) -> str:
    """The story and its whole conversation with the gold answers, as a few-shot example shows them."""
    return f"{story.text}\n\n{conversation(story, len(story.questions))}"


class CoQA(Task):
    name = "coqa"
    metrics = ("f1", "em")
    few_shot_default = 0

    def run(self, ctx: Context) -> Result:
        path = ctx.data.path(DEV)
        stories = read_coqa(path)
        k = self.shots(ctx)
        pool = read_coqa(ctx.data.path(TRAIN)) if k else []
        prompts, golds, truncated = [], [], 0
        budget = ctx.n_ctx - MAX_ANSWER_TOKENS
        for s_i, story in enumerate(stories):
            if ctx.limit is not None and len(prompts) >= ctx.limit:
                break
            shots = "".join(f"{transcript(s)}\n" for s in sample_shots(pool, k, ctx.seed, f"coqa{s_i}"))
            for turn in range(len(story.questions)):
                if ctx.limit is not None and len(prompts) == ctx.limit:
                    break
                prompt, cut = clip(
                    ctx,
                    f"{shots}{story.text}\n\n{conversation(story, turn)}Q: {story.questions[turn]}\nA:",
                    budget,
                    "end",
                )
                prompts.append(prompt)
                golds.append(story.answers[turn])
                truncated += cut
        answers = generate_all(ctx, prompts, MAX_ANSWER_TOKENS, desc=self.name)
        pairs = [coqa_scores(a.strip(), g) for a, g in zip(answers, golds, strict=True)]
        n = len(pairs)
        protocol = {
            "data": ctx.data.describe(DEV, path),
            "prompt": "{story}\\n\\nQ: ...\\nA: ...\\nQ: {question}\\nA:",
            "decoding": f"greedy, until a newline, at most {MAX_ANSWER_TOKENS} tokens",
            "shots": k,
            "truncated_prompts": truncated,
        }
        metrics = {"f1": percent([f for _, f in pairs]), "em": percent([e for e, _ in pairs])}
        return Result(metrics, n, protocol)
