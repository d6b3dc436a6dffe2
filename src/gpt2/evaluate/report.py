"""The results as a Markdown table shaped like the paper's Table 3: one row per checkpoint (ours, then the
paper's four sizes), one column per task metric; below it, where each task's protocol comes from (the paper,
GPT-3, or this project's choice), and the tasks skipped for missing data, with the reason."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gpt2.evaluate.paper import PAPER, SIZES, SOURCE
from gpt2.evaluate.tasks import TASKS

# The columns a task contributes (all its metrics are in the JSON).
HEADLINE = {
    "lambada": ("ppl", "acc", "acc_stopword_filter"),
    "cnn_dm": ("rouge1", "rouge2", "rougeLsum", "rouge_avg"),
    "race-high": ("acc", "acc_norm"),
    "race-middle": ("acc", "acc_norm"),
}
# Where each task's protocol comes from, printed under the table (each task module's docstring has the details).
_PAPER = "the paper"
PROTOCOL_SOURCE = {
    "lambada": f"{_PAPER}, section 3.3",
    "cbt-cn": f"{_PAPER}, section 3.2",
    "cbt-ne": f"{_PAPER}, section 3.2",
    **dict.fromkeys(
        ("wikitext2", "ptb", "enwik8", "text8", "wikitext103", "1bw"),
        f"{_PAPER}, section 3.1 (the window stride is this project's reading: disjoint windows)",
    ),
    "winograd": f"{_PAPER}, section 3.4",
    "hellaswag": "lm-evaluation-harness 0.4.13 (hellaswag task; not in the paper)",
    "coqa": f"{_PAPER}, section 3.5",
    "cnn_dm": f"{_PAPER}, section 3.6",
    "wmt14-en-fr": f"{_PAPER}, section 3.7",
    "wmt14-fr-en": f"{_PAPER}, section 3.7",
    "nq": f"{_PAPER}, section 3.8",
    "race-high": "GPT-3 (Brown et al. 2020) as lm-evaluation-harness 0.4.13 implements it; not in the paper",
    "race-middle": "GPT-3 (Brown et al. 2020) as lm-evaluation-harness 0.4.13 implements it; not in the paper",
    "wmt14-en-de": "this project's: the paper's WMT-14 En-Fr protocol (section 3.7) on En-De",
    "wmt14-de-en": "this project's: the paper's WMT-14 En-Fr protocol (section 3.7) on De-En",
    "writingprompts": "this project's: the paper's perplexity protocol (section 3.1) on Fan et al. 2018's test split",
}
_LOWER_IS_BETTER = ("ppl", "bpb", "bpc", "bits_per_byte")
_SHORT = {
    "acc_stopword_filter": "acc (stop-word filter)",
    "acc_partial": "acc (partial scoring)",
    "acc_full": "acc (full scoring)",
    "rouge1": "R-1",
    "rouge2": "R-2",
    "rougeLsum": "R-L",
    "rouge_avg": "R-AVG",
}


def columns(tasks: Sequence[str]) -> list[tuple[str, str]]:
    ordered = [t for t in TASKS if t in tasks]
    return [(t, m) for t in ordered for m in HEADLINE.get(t, TASKS[t].metrics[:1])]


def fmt(metric: str, value: float | None) -> str:
    if value is None or value != value:  # missing, or NaN
        return "–"
    if metric in ("bpb", "bpc", "bits_per_byte"):
        return f"{value:.3f}"
    return f"{value:.2f}" if abs(value) < 1e5 else f"{value:.3g}"  # an untrained model's perplexity: 1.14e+07


def markdown_table(runs: Sequence[dict[str, Any]]) -> str:
    """runs: results dicts as evaluate() returns them."""
    tasks = [t for run in runs for t in run["tasks"]]
    cols = columns(list(dict.fromkeys(tasks)))
    header = ["checkpoint"] + [f"{t} {_SHORT.get(m, m)}" + (" ↓" * m.endswith(_LOWER_IS_BETTER)) for t, m in cols]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        label = str(run["model"]) + (f" (first {run['protocol']['limit']})" if run["protocol"].get("limit") else "")
        cells = [fmt(m, run["tasks"].get(t, {}).get(m)) for t, m in cols]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    for size in SIZES:
        cells = [fmt(m, PAPER[size].get((t, m))) for t, m in cols]
        lines.append("| " + " | ".join([f"paper GPT-2 {size}", *cells]) + " |")
    notes = [f"{SOURCE} ↓: lower is better. Accuracy, F1, EM, ROUGE and BLEU in percent."]
    shown = list(dict.fromkeys(t for t, _ in cols))
    if shown:
        notes.append("Protocols:\n" + "\n".join(f"- {t}: {PROTOCOL_SOURCE.get(t, 'see its module')}" for t in shown))
    skipped = {t: why for run in runs for t, why in run.get("skipped", {}).items()}
    if skipped:
        notes.append("Skipped, their data missing:\n" + "\n".join(f"- {t}: {why}" for t, why in skipped.items()))
    return "\n".join(lines) + "\n\n" + "\n\n".join(notes) + "\n"
