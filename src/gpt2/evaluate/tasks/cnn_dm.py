"""CNN / Daily Mail summarization (Hermann et al. 2015; See et al. 2017's non-anonymised test split).

Protocol (the paper's): the article, then "\\nTL;DR:", sampled with top-k 2 (k=2, temperature 1, --seed) for 100
tokens; the first 3 generated sentences are the summary. An article too long for the window keeps its start.
Scores: F1 against the reference highlights (rouge-score with stemming), in percent, with summary and reference
written one sentence per line (a highlight per line; SummEval's one-line highlights split into sentences).
* rouge1, rouge2, and rougeLsum = Table 4's R-1, R-2, R-L. Table 4's other rows (Lede-3 from See et al. 2017,
  Bottom-Up Sum from Gehrmann et al. 2018) carry ROUGE-1.5.5 (pyrouge) figures, whose ROUGE-L over a
  multi-sentence summary is the summary-level (union) LCS over its sentences; rouge-score names that rougeLsum.
* rouge_avg = the mean of rouge1, rouge2 and rougeLsum (Table 4's R-AVG: (29.34 + 8.27 + 26.58) / 3 = 21.40).
* rougeL_unsplit: rouge-score's rougeL, one LCS over the whole summary with its sentence breaks ignored; kept for
  comparison with tools that report it (it is not the paper's R-L).
Formats:
* official: cnn_stories.tgz + dailymail_stories.tgz (the stories) and all_test.txt (the test split's URLs; a
  story's file is named by the SHA1 of its URL), read in all_test.txt's order;
* SummEval's 100 test articles (summeval_cnndm_test100.jsonl, in ../shared/data): PTB-tokenized, so article and
  reference are de-tokenized first (detokenize.news).
The protocol says which was read.
"""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

from gpt2.errors import GPT2Error
from gpt2.evaluate import detokenize
from gpt2.evaluate.data import DataFile, read_jsonl
from gpt2.evaluate.metrics import rouge_f1
from gpt2.evaluate.tasks.base import Context, Result, Task, clip, generate_all, sentences

_HF = "https://huggingface.co/datasets/cnn_dailymail/resolve/11343c3752184397d56efc19a8a7cceb68089318/data/"
URL_LIST = DataFile(
    "cnn_dm",
    "all_test.txt",
    "https://raw.githubusercontent.com/abisee/cnn-dailymail/master/url_lists/all_test.txt",
    "c4f5efb5ec2126430a5c156efbd13d0e9c4cb490169e552c38b4a51981a009bd",
)
STORIES = (
    DataFile(
        "cnn_dm",
        "cnn_stories.tgz",
        _HF + "cnn_stories.tgz",
        "e8fbc0027e54e0a916abd9c969eb35f708ed1467d7ef4e3b17a56739d65cb200",
    ),
    DataFile(
        "cnn_dm",
        "dailymail_stories.tgz",
        _HF + "dailymail_stories.tgz",
        "ad69010002210b7c406718248ee66e65868b9f6820f163aa966369878d14147e",
    ),
)
SUMMEVAL = DataFile(
    "cnn_dm",
    "summeval_cnndm_test100.jsonl",
    "https://github.com/neulab/BARTScore (SUM/SummEval/data.pkl, converted as ../shared/data/MANIFEST.md says)",
    None,
    file_sha256=("2d4ec721981ea609e9ed064488438a766a6965242155224b97557f914014e11a",),
)
PROMPT_SUFFIX = "\nTL;DR:"
SUMMARY_TOKENS = 100
SUMMARY_SENTENCES = 3

Article = tuple[str, str]  # article, reference summary


def parse_story(text: str) -> Article:
    """A .story file: the article's paragraphs, then "@highlight" blocks, one highlight sentence each."""
    article, highlights, in_highlight = [], [], False
    for line in (ln.strip() for ln in text.splitlines()):
        if not line:
            continue
        if line == "@highlight":
            in_highlight = True
        elif in_highlight:
            highlights.append(line)
            in_highlight = False
        else:
            article.append(line)
    return " ".join(article), "\n".join(highlights)


def read_official(url_list: Path, archives: list[Path], limit: int | None) -> list[Article]:
    urls = [u.strip() for u in url_list.read_text(encoding="utf-8").splitlines() if u.strip()]
    wanted = [hashlib.sha1(u.encode()).hexdigest() for u in urls][:limit]
    found: dict[str, Article] = {}
    need = set(wanted)
    for archive in archives:
        with tarfile.open(archive, "r:*") as t:
            for info in t:
                key = Path(info.name).stem
                if info.isfile() and key in need:
                    f = t.extractfile(info)
                    assert f is not None
                    found[key] = parse_story(f.read().decode("utf-8", errors="replace"))
                    if len(found) == len(need):
                        break
    missing = need - found.keys()
    if missing:
        raise GPT2Error(f"{len(missing)} test stories of {url_list} are in neither {archives[0]} nor {archives[1]}")
    return [found[k] for k in wanted]


def read_summeval(path: Path, limit: int | None) -> list[Article]:
    """SummEval's articles and highlights, de-tokenized; each highlight is a sentence, so the one-line highlights
    are split into one sentence per line, as the official files give them."""
    return read_jsonl(
        path,
        lambda d: (detokenize.news(d["article"]), "\n".join(sentences(detokenize.news(d["highlights"])))),
        "a JSON object with 'article' and 'highlights'",
        limit,
    )


class CNNDailyMail(Task):
    name = "cnn_dm"
    metrics = ("rouge_avg", "rouge1", "rouge2", "rougeLsum", "rougeL_unsplit")

    def run(self, ctx: Context) -> Result:
        official = [ctx.data.find(f) for f in (URL_LIST, *STORIES)]
        summeval = ctx.data.find(SUMMEVAL)
        if summeval is not None and not all(official):
            articles = read_summeval(summeval, ctx.limit)
            data = ctx.data.describe(SUMMEVAL, summeval, format="SummEval jsonl (PTB-tokenized; de-tokenized)")
        else:
            url_list, *archives = (ctx.data.path(f) for f in (URL_LIST, *STORIES))
            articles = read_official(url_list, archives, ctx.limit)
            data = ctx.data.describe(
                URL_LIST, url_list, format="official .story files", stories=[str(a) for a in archives]
            )
        budget = ctx.n_ctx - SUMMARY_TOKENS - len(ctx.encode(PROMPT_SUFFIX))
        prompts, truncated = [], 0
        for article, _ in articles:
            text, cut = clip(ctx, article, budget, "start")
            prompts.append(text + PROMPT_SUFFIX)
            truncated += cut
        outputs = generate_all(ctx, prompts, SUMMARY_TOKENS, temperature=1.0, top_k=2, stop=(), desc=self.name)
        summaries = ["\n".join(sentences(o)[:SUMMARY_SENTENCES]) for o in outputs]
        scores = rouge_f1(summaries, [ref for _, ref in articles], ("rouge1", "rouge2", "rougeLsum", "rougeL"))
        scores["rougeL_unsplit"] = scores.pop("rougeL")
        table4 = (scores["rouge1"], scores["rouge2"], scores["rougeLsum"])
        metrics = {"rouge_avg": sum(table4) / len(table4), **scores}
        protocol = {
            "data": data,
            "prompt": "{article}\\nTL;DR:",
            "decoding": f"top-k 2, temperature 1, {SUMMARY_TOKENS} tokens, seed {ctx.seed} (+ batch index)",
            "summary": f"first {SUMMARY_SENTENCES} sentences",
            "rouge": "rouge-score F1, Porter stemmer, one sentence per line; R-L = rougeLsum (summary-level LCS), "
            "R-AVG = mean of R-1, R-2, R-L; rougeL_unsplit = rougeL (one LCS, sentence breaks ignored)",
            "truncated_articles": truncated,
        }
        return Result(metrics, len(articles), protocol)
