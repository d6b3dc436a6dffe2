"""The paper's own figures (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners"), to print
beside ours. Table 3 gives every size; for the other tasks the text (and Table 4) gives only the largest model.
Units as ours: perplexities, bits, and percent.
"""

from __future__ import annotations

SIZES = ("117M", "345M", "762M", "1542M")  # the paper's names; Hugging Face's gpt2, -medium, -large, -xl

_TABLE3_COLUMNS = (
    ("lambada", "ppl"),
    ("lambada", "acc_stopword_filter"),  # Table 3's LAMBADA ACC is with the stop-word filter (section 3.3)
    ("cbt-cn", "acc"),
    ("cbt-ne", "acc"),
    ("wikitext2", "word_ppl"),
    ("ptb", "word_ppl"),
    ("enwik8", "bpb"),
    ("text8", "bpc"),
    ("wikitext103", "word_ppl"),
    ("1bw", "word_ppl"),
)
_TABLE3_ROWS = {
    "117M": (35.13, 45.99, 87.65, 83.4, 29.41, 65.85, 1.16, 1.17, 37.50, 75.20),
    "345M": (15.60, 55.48, 92.35, 87.1, 22.76, 47.33, 1.01, 1.06, 26.37, 55.72),
    "762M": (10.87, 60.12, 93.45, 88.0, 19.93, 40.31, 0.97, 1.02, 22.05, 44.575),
    "1542M": (8.63, 63.24, 93.30, 89.05, 18.34, 35.76, 0.93, 0.98, 17.48, 42.16),
}

# (task, metric) -> figure, for the largest model only: section 3.4-3.8 and Table 4.
_LARGEST_ONLY = {
    ("lambada", "acc"): 52.66,  # without the stop-word filter (section 3.3)
    ("winograd", "acc_partial"): 70.70,
    ("coqa", "f1"): 55.0,
    ("cnn_dm", "rouge1"): 29.34,
    ("cnn_dm", "rouge2"): 8.27,
    ("cnn_dm", "rougeLsum"): 26.58,  # Table 4's R-L: summary-level ROUGE-L (see tasks/cnn_dm.py)
    ("cnn_dm", "rouge_avg"): 21.40,
    ("wmt14-en-fr", "bleu"): 5.0,
    ("wmt14-fr-en", "bleu"): 11.5,
    ("nq", "em"): 4.1,
}

PAPER: dict[str, dict[tuple[str, str], float]] = {
    size: dict(zip(_TABLE3_COLUMNS, row, strict=True)) | (_LARGEST_ONLY if size == "1542M" else {})
    for size, row in _TABLE3_ROWS.items()
}

SOURCE = (
    "paper: Radford et al. 2019, Table 3 for every size; the 1542M model's Winograd, CoQA, WMT-14 and NQ figures "
    "from sections 3.4-3.8, CNN/DM from Table 4 (its R-L is summary-level ROUGE-L, rouge-score's rougeLsum), and "
    "its LAMBADA acc without the stop-word filter (52.66) from section 3.3 (Table 3's LAMBADA acc is with it). "
    "HellaSwag, RACE, WMT-14 En-De and WritingPrompts are not in the paper."
)
