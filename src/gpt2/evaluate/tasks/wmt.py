"""WMT-14 English-French translation, newstest2014 (3,003 sentences), both directions.

Protocol (the paper's): a context of example pairs "source sentence = target sentence", one per line, then the
test sentence and " =", decoded greedily to the end of the line; the first generated sentence is the
translation. bleu: sacrebleu's corpus BLEU (13a tokenisation), the WMT standard.
The example pairs: the paper does not say where from or how many. We draw K (default 5, --shots) for each
sentence, deterministically by --seed, from the validation set newstest2013 when the data folder holds it
(newstest2013.en + newstest2013.fr, one sentence a line, from statmt.org/wmt14/dev.tgz), else from the other
sentences of the test set itself (never the sentence being translated). The protocol says which.
Data: the "full" newstest2014 .sgm files (as sacrebleu's wmt14/full uses), from statmt.org's test-full.tgz.
"""

from __future__ import annotations

import re
from pathlib import Path

from gpt2.errors import GPT2Error
from gpt2.evaluate.data import DataFile
from gpt2.evaluate.metrics import corpus_bleu
from gpt2.evaluate.tasks.base import Context, Result, Task, clip, generate_all, sample_shots, sentences, take

TEST_FULL = "https://statmt.org/wmt14/test-full.tgz"
TEST_FULL_MD5 = "a8cd784e006feb32ac6f3d9ec7eb389a"  # sacrebleu's checksum for it; no sha256 is published


# The validation set, used when present (no checksum is published for dev.tgz, so it is never downloaded).
DEV = {
    lang: DataFile("wmt14-en-fr", f"newstest2013.{lang}", "http://www.statmt.org/wmt14/dev.tgz", None)
    for lang in ("en", "fr")
}


def sgm_file(side: str, lang: str) -> DataFile:
    name = f"newstest2014-fren-{side}.{lang}.sgm"
    return DataFile("wmt14-en-fr", name, TEST_FULL, None, member=f"test-full/{name}", md5=TEST_FULL_MD5)


_SEG = re.compile(r"<seg[^>]*>(.*)</seg>")


def read_sgm(path: Path) -> list[str]:
    """The segments of a WMT .sgm file, whitespace normalised as sacrebleu does."""
    segs = [
        " ".join(m.group(1).split())
        for line in path.read_text(encoding="utf-8").splitlines()
        if (m := _SEG.search(line))
    ]
    if not segs:
        raise GPT2Error(f"{path}: no <seg> elements; expected a WMT .sgm file")
    return segs


class WMT(Task):
    metrics = ("bleu",)
    few_shot_default = 5

    def __init__(self, src: str, tgt: str) -> None:
        self.src, self.tgt = src, tgt
        self.name = f"wmt14-{src}-{tgt}"
        self.files = (sgm_file("src", src), sgm_file("ref", tgt))

    def run(self, ctx: Context) -> Result:
        src_path, ref_path = (ctx.data.path(f) for f in self.files)
        sources, refs = read_sgm(src_path), read_sgm(ref_path)
        if len(sources) != len(refs):
            raise GPT2Error(f"{src_path} has {len(sources)} segments but {ref_path} has {len(refs)}")
        pairs = list(zip(sources, refs, strict=True))
        k = self.shots(ctx)
        dev = [ctx.data.find(DEV[lang]) for lang in (self.src, self.tgt)]
        pool = pairs
        if dev[0] is not None and dev[1] is not None:
            src_lines, tgt_lines = (p.read_text(encoding="utf-8").splitlines() for p in dev)
            if len(src_lines) != len(tgt_lines):
                raise GPT2Error(f"{dev[0]} has {len(src_lines)} lines but {dev[1]} has {len(tgt_lines)}")
            pool = list(zip(src_lines, tgt_lines, strict=True))
        prompts, truncated = [], 0
        max_new = min(256, ctx.n_ctx // 4)
        for i, (src, _) in enumerate(take(pairs, ctx.limit)):
            shots = sample_shots(pool, k, ctx.seed, f"{self.name}{i}", exclude=i if pool is pairs else None)
            prompt, cut = clip(ctx, "".join(f"{s} = {t}\n" for s, t in shots) + f"{src} =", ctx.n_ctx - max_new, "end")
            prompts.append(prompt)
            truncated += cut
        outputs = generate_all(ctx, prompts, max_new, desc=self.name)
        hyps = [(sentences(o) or [""])[0] for o in outputs]
        protocol = {
            "data": {
                "source": ctx.data.describe(self.files[0], src_path),
                "reference": ctx.data.describe(self.files[1], ref_path),
            },
            "prompt": "K lines '{source} = {target}', then '{source} ='",
            "shots": k,
            "shots_from": "newstest2013 (validation)" if pool is not pairs else "other sentences of the test set",
            "decoding": f"greedy to the end of the line (at most {max_new} tokens); first sentence kept",
            "bleu": "sacrebleu corpus_bleu, 13a tokenisation",
            "truncated_prompts": truncated,
        }
        return Result({"bleu": corpus_bleu(hyps, [r for _, r in pairs[: len(hyps)]])}, len(hyps), protocol)
