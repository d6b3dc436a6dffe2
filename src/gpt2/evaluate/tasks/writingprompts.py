"""WritingPrompts (Fan et al. 2018, "Hierarchical Neural Story Generation"), the test split: 15,138 stories
written on r/WritingPrompts, each for its prompt. Not in the GPT-2 paper; the protocol is this project's, built
from the paper's language-modelling protocol (section 3.1; see perplexity.py) and its samples (top-k 40).

Data: the official writingPrompts.tar.gz (dl.fbaipublicfiles.com/fairseq/data/, the address fairseq's
examples/stories README gives), members writingPrompts/test.wp_source (one prompt per line) and
writingPrompts/test.wp_target (the story on the same line number). Neither the authors nor fairseq publish a
checksum or the archive's size, and we found none elsewhere, so the download is not verified against one (the
size check text8 uses needs a known size); what is checked is the pair itself: as many prompts as stories, and the
protocol says whether the split is whole (15,138 lines, Fan et al. Table 1).
The files are word-tokenized (spaced punctuation, split clitics such as "do n't", "[ WP ]" tags, PTB-style
``` `` ``` / `''` quotes where they occur), with `<newline>` standing for each line break of the story.

Protocol:
* Each story is scored given its prompt: context = <|endoftext|> + prompt + "\\n\\n", target = story +
  <|endoftext|>, both de-tokenized (below) for the model, so it reads ordinary text, as the paper scores the
  older benchmarks through invertible de-tokenizers. Its last token, <|endoftext|>, is the end of the story,
  which the model must predict. Stories longer than the context are scored in windows (--stride; default disjoint
  windows, as for WikiText), never cut: Fan et al.'s fairseq pipeline modelled only each story's first 1,000
  words, we score every word.
* word_ppl = exp(total NLL / the ORIGINAL tokens of the stories): each story's whitespace-separated tokens of
  the file (each `<newline>` marker one of them) + one end-of-story token (fairseq's end-of-line `</s>`, which
  its perplexities count), the convention of perplexity.py (openai/gpt-2#78: the paper divides by the original
  data set's token count). Prompts are context: not scored, not counted.
* token_ppl = exp(total NLL / BPE tokens scored).
* De-tokenizer: `<newline>` markers become line breaks, then detokenize.news (the PTB/Moses-style rules: split
  clitics, spaced punctuation, ``` `` ``` and `''` to `"`, "[ WP ]" to "[WP]"). Bytes that are not UTF-8 go to
  the model as their single-byte tokens (perplexity.encode_bytes), so nothing is dropped.
Samples (Context.options "samples" = N, and "samples_path"; what `gpt2 eval --samples N` passes): N stories
written from the first N distinct test prompts (file order), top-k 40 at temperature 1 (the paper's sampling for
its samples), seeded by --seed, until <|endoftext|> or the context is full; kept in the results' protocol and,
when "samples_path" is given, written there as Markdown for reading.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from gpt2.errors import GPT2Error
from gpt2.evaluate import detokenize
from gpt2.evaluate.data import DataFile, lines
from gpt2.evaluate.metrics import perplexity
from gpt2.evaluate.tasks.base import Context, Result, Task, generate_all
from gpt2.evaluate.tasks.perplexity import encode_bytes
from gpt2.io import atomic_write

WP_URL = "https://dl.fbaipublicfiles.com/fairseq/data/writingPrompts.tar.gz"
# No checksum or size of the archive is published (see the docstring): the pair's line counts are the check.
SOURCE = DataFile("writingprompts", "test.wp_source", WP_URL, None, member="writingPrompts/test.wp_source")
TARGET = DataFile("writingprompts", "test.wp_target", WP_URL, None, member="writingPrompts/test.wp_target")
TEST_STORIES = 15_138  # Fan et al. 2018, Table 1
TOP_K = 40
_NEWLINE = re.compile(r" *<newline> *")


def read_lines(path: Path) -> list[str]:
    """The lines of a .wp_source / .wp_target file, without their line ends; bytes that are not UTF-8 are kept
    (as surrogate escapes) so that the model can be given them."""
    text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    return [row.rstrip("\n").removesuffix("\r") for row in lines(text)]


def read_pairs(source: Path, target: Path) -> list[tuple[str, str]]:
    prompts, stories = read_lines(source), read_lines(target)
    if len(prompts) != len(stories):
        raise GPT2Error(f"{source} has {len(prompts)} prompts but {target} has {len(stories)} stories")
    return list(zip(prompts, stories, strict=True))


def detok(text: str) -> str:
    """The data set's tokenization undone: `<newline>` markers to line breaks, then the news rules."""
    return detokenize.news(_NEWLINE.sub("\n", text.strip()))


def original_tokens(story: str) -> int:
    """The story's tokens as the data set counts them: its whitespace-separated tokens, <newline> markers
    included, and one end-of-story token."""
    return len(story.split()) + 1


def encode(ctx: Context, text: str) -> list[int]:
    return encode_bytes(ctx.tokenizer, text.encode("utf-8", errors="surrogateescape"))


def prompt_text(prompt: str) -> str:
    return detok(prompt) + "\n\n"


class WritingPrompts(Task):
    name = "writingprompts"
    metrics = ("word_ppl", "token_ppl")

    def run(self, ctx: Context) -> Result:
        src_path, tgt_path = ctx.data.path(SOURCE), ctx.data.path(TARGET)
        pairs = read_pairs(src_path, tgt_path)
        scored = [(p, s) for p, s in pairs[: ctx.limit] if s.strip()]
        eot = ctx.tokenizer.eot_id
        requests = [([eot, *encode(ctx, prompt_text(p))], [*encode(ctx, detok(s)), eot]) for p, s in scored]
        stride = ctx.stride or ctx.n_ctx
        scores = ctx.scorer.score(requests, stride=stride, desc=self.name)
        nll = -sum(s.logprob for s in scores)
        tokens = sum(s.n_tokens for s in scores)
        words = sum(original_tokens(s) for _, s in scored)
        metrics = {"word_ppl": perplexity(nll, words), "token_ppl": perplexity(nll, tokens)}
        protocol: dict[str, Any] = {
            "data": {
                "source": ctx.data.describe(SOURCE, src_path),
                "target": ctx.data.describe(TARGET, tgt_path),
                "stories_in_file": len(pairs),
                "whole_test_split": len(pairs) == TEST_STORIES,
                "checksum": "none published for the archive; checked: as many prompts as stories",
            },
            "protocol_source": "this project's: the paper's perplexity protocol (section 3.1) on Fan et al.'s test",
            "context": "<|endoftext|> + prompt + '\\n\\n' (de-tokenized)",
            "target": "story (de-tokenized) + <|endoftext|>",
            "words": words,  # the word_ppl denominator
            "words_rule": "whitespace-separated tokens of the story (<newline> markers included) + 1 end of story",
            "tokens": tokens,
            "stride": stride,
            "windowed_stories": sum(len(c) + len(t) > ctx.n_ctx + 1 for c, t in requests),
            "skipped_empty_stories": len(pairs[: ctx.limit]) - len(scored),
            "detokenizer": "<newline> -> line break, then detokenize.news",
        }
        if n_samples := int(ctx.options.get("samples") or 0):
            protocol["samples"] = self.samples(ctx, pairs, n_samples)
            if path := ctx.options.get("samples_path"):
                atomic_write(path, samples_markdown(protocol["samples"], ctx.seed))
                protocol["samples_file"] = str(path)
        return Result(metrics, len(scored), protocol)

    def samples(self, ctx: Context, pairs: list[tuple[str, str]], n: int) -> list[dict[str, str]]:
        """n stories sampled with top-k 40 from the first n distinct prompts."""
        prompts = list(dict.fromkeys(p for p, _ in pairs))[:n]
        texts = ["<|endoftext|>" + prompt_text(p) for p in prompts]  # generate.complete reads the special token
        longest = max(len(encode(ctx, prompt_text(p))) + 1 for p in prompts)
        max_new = ctx.n_ctx - longest
        if max_new < 1:
            raise GPT2Error(f"the model's context ({ctx.n_ctx} tokens) leaves no room for a story after the prompt")
        stories = generate_all(
            ctx, texts, max_new, temperature=1.0, top_k=TOP_K, stop=(), desc=f"{self.name} samples"
        )  # fmt: skip
        return [{"prompt": readable(detok(p)), "story": s.strip()} for p, s in zip(prompts, stories, strict=True)]


def readable(text: str) -> str:
    """text with any byte that was not UTF-8 shown as U+FFFD, so that it can be written out as UTF-8."""
    return text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")


def samples_markdown(samples: list[dict[str, str]], seed: int) -> str:
    head = f"# WritingPrompts samples\n\nTest prompts, stories sampled with top-k {TOP_K} (seed {seed}).\n"
    body = "".join(
        f"\n## {i}. {' '.join(s['prompt'].split())}\n\n{s['story']}\n" for i, s in enumerate(samples, start=1)
    )  # fmt: skip
    return head + body
