"""The evaluation tasks, by the names `gpt2 eval --tasks` takes. Each module documents its protocol."""

from __future__ import annotations

from gpt2.evaluate.tasks.base import Context, Result, Task
from gpt2.evaluate.tasks.cbt import CBT
from gpt2.evaluate.tasks.cnn_dm import CNNDailyMail
from gpt2.evaluate.tasks.coqa import CoQA
from gpt2.evaluate.tasks.hellaswag import HellaSwag
from gpt2.evaluate.tasks.lambada import Lambada
from gpt2.evaluate.tasks.nq import NaturalQuestions
from gpt2.evaluate.tasks.perplexity import LanguageModeling
from gpt2.evaluate.tasks.race import RACE
from gpt2.evaluate.tasks.winograd import Winograd
from gpt2.evaluate.tasks.wmt import WMT
from gpt2.evaluate.tasks.writingprompts import WritingPrompts

# In the paper's order: Table 3 left to right, then the later sections; then the tasks the paper did not report
# (RACE from GPT-3, WMT-14 En-De, WritingPrompts), whose protocols say where they come from.
TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Lambada(),
        CBT("CN"),
        CBT("NE"),
        LanguageModeling("wikitext2"),
        LanguageModeling("ptb"),
        LanguageModeling("enwik8"),
        LanguageModeling("text8"),
        LanguageModeling("wikitext103"),
        LanguageModeling("1bw"),
        Winograd(),
        HellaSwag(),
        CoQA(),
        CNNDailyMail(),
        WMT("en", "fr"),
        WMT("fr", "en"),
        NaturalQuestions(),
        RACE("high"),
        RACE("middle"),
        WMT("en", "de"),
        WMT("de", "en"),
        WritingPrompts(),
    )
}

__all__ = ["TASKS", "Context", "Result", "Task"]
