"""WMT-14 translation, newstest2014 (3,003 sentences): English-French (the paper's, section 3.7) and English-German
(not in the paper: the same protocol on the other classic WMT-14 pair), both directions each.

Protocol (the paper's): a context of example pairs "source sentence = target sentence", one per line, then the
test sentence and " =", decoded greedily to the end of the line; the first generated sentence is the
translation. bleu: sacrebleu's corpus BLEU (13a tokenisation), the WMT standard; its signature is in the results'
protocol. En-De and De-En ("english sentence = german sentence", and the reverse) use this protocol unchanged:
the paper evaluated only En-Fr, so applying it to En-De is this project's choice.
The example pairs: the paper does not say where from or how many. We draw K (default 5, --shots) for each
sentence, deterministically by --seed, from the validation set: newstest2013, which WMT14 ships as its dev set
(and WMT13 as its test set; it is one multi-way set, so the same 3,000 sentences serve French and German). Never
from newstest2014: examples from the test set would show the model test sentences and references. A newstest2013
pair whose source or reference is also a test sentence is dropped too.
With --shots 0 the validation set is not read; otherwise a missing one is a one-line error naming the file and
where to get it (or is downloaded: the official WMT13 test.tgz, checked against sacrebleu's md5 of it).
Data: the "full" newstest2014 .sgm files (as sacrebleu's wmt14/full uses; for De-En the 3,003-sentence set, not
the 2,737-sentence filtered one of WMT14's original test.tgz), from statmt.org's test-full.tgz, in
wmt14-en-fr/newstest2014-fren-* and wmt14-en-de/newstest2014-deen-*; newstest2013-src.{src}.sgm +
newstest2013-ref.{tgt}.sgm, in the same folder, for the examples.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from gpt2.errors import GPT2Error
from gpt2.evaluate.data import DataFile, MissingData, lines, read_text
from gpt2.evaluate.metrics import corpus_bleu_signed
from gpt2.evaluate.tasks.base import Context, Result, Task, clip, generate_all, sample_shots, sentences, take

TEST_FULL = "https://statmt.org/wmt14/test-full.tgz"
TEST_FULL_MD5 = "a8cd784e006feb32ac6f3d9ec7eb389a"  # sacrebleu's checksum for it; no sha256 is published


# newstest2013 as WMT13's test.tgz ships it: WMT14's dev.tgz holds the same set but has no published checksum.
DEV_URL = "https://statmt.org/wmt13/test.tgz"
DEV_MD5 = "48eca5d02f637af44e85186847141f67"  # sacrebleu's checksum for it (its "wmt13" test set)
# sha256 of the copies in ../shared/data, byte-identical to test.tgz's members (its MANIFEST.md checks them)
_DEV_SHA256 = {
    "src.en": "fff51f0641df3e73110462007adb753f2e70971484c0e41f92c8eb9998bafbe8",
    "ref.fr": "5f3f0566723eef4e27236ebf0e04a74a00ec9302c2346b8d9369a7b987498afd",
    "src.fr": "cd31fe1333638ca3672ef88bfca0054a6be39bfeeb9c754b9ecdbc4827bc2f29",
    "ref.en": "b4c44c76d1b46fa0684500e20f04c4825d2ad1d5ea51d8245b0145c1b8b74d91",
    "src.de": "46f5d6030604f9414be8961d3cc4acc3cc806879880a81d1eabae912371b375d",
    "ref.de": "e9baca082688582e9a57218ff040d9c32aa6c6534024f53eafa1244b3e5ffca3",
}


def folder(src: str, tgt: str) -> str:
    """The data folder of a pair: wmt14-en-fr, wmt14-en-de (one per language pair, both directions in it)."""
    other = tgt if src == "en" else src
    return f"wmt14-en-{other}"


def dev_file(side: str, lang: str, pair_folder: str = "wmt14-en-fr") -> DataFile:
    name = f"newstest2013-{side}.{lang}.sgm"
    return DataFile(
        pair_folder,
        name,
        DEV_URL,
        None,
        member=f"test/{name}",
        md5=DEV_MD5,
        file_sha256=(_DEV_SHA256[f"{side}.{lang}"],),
    )


def sgm_file(side: str, lang: str, pair_folder: str = "wmt14-en-fr") -> DataFile:
    other = pair_folder.rsplit("-", 1)[-1]
    name = f"newstest2014-{other}en-{side}.{lang}.sgm"  # WMT names both directions of a pair "fren", "deen"
    return DataFile(pair_folder, name, TEST_FULL, None, member=f"test-full/{name}", md5=TEST_FULL_MD5)


_DE_SOURCE = "the paper's WMT-14 En-Fr protocol (section 3.7) applied to En-De: this project's choice"
_SEG = re.compile(r"<seg[^>]*>(.*)</seg>")


def read_sgm(path: Path) -> list[str]:
    """The segments of a WMT .sgm file, whitespace normalised as sacrebleu does."""
    segs = [" ".join(m.group(1).split()) for line in lines(read_text(path)) if (m := _SEG.search(line))]
    if not segs:
        raise GPT2Error(f"{path}: no <seg> elements; expected a WMT .sgm file")
    return segs


class WMT(Task):
    metrics = ("bleu",)
    few_shot_default = 5

    def __init__(self, src: str, tgt: str) -> None:
        self.src, self.tgt = src, tgt
        if "en" not in (src, tgt) or src == tgt:
            raise GPT2Error(f"WMT-14 pairs are English and another language, got {src}-{tgt}")
        self.name = f"wmt14-{src}-{tgt}"
        pair = folder(src, tgt)
        self.files = (sgm_file("src", src, pair), sgm_file("ref", tgt, pair))
        self.dev_files = (dev_file("src", src, pair), dev_file("ref", tgt, pair))

    def examples(
        self, ctx: Context, test_sources: set[str], test_refs: set[str]
    ) -> tuple[list[tuple[str, str]], dict[str, Any]]:
        """The newstest2013 pairs that examples are drawn from (none that shares a sentence with the test set), and
        their provenance for the protocol."""
        try:
            src_path, ref_path = (ctx.data.path(f) for f in self.dev_files)
        except MissingData as e:
            raise MissingData(
                f"{self.name}'s few-shot examples come from the validation set newstest2013, never the test set: {e}"
            ) from None
        sources, refs = read_sgm(src_path), read_sgm(ref_path)
        if len(sources) != len(refs):
            raise GPT2Error(f"{src_path} has {len(sources)} segments but {ref_path} has {len(refs)}")
        pool = [(s, t) for s, t in zip(sources, refs, strict=True) if s not in test_sources and t not in test_refs]
        provenance = {
            "set": "newstest2013 (validation)",
            "source": ctx.data.describe(self.dev_files[0], src_path),
            "reference": ctx.data.describe(self.dev_files[1], ref_path),
            "pairs": len(pool),
            "dropped_sharing_a_test_sentence": len(sources) - len(pool),
        }
        return pool, provenance

    def run(self, ctx: Context) -> Result:
        src_path, ref_path = (ctx.data.path(f) for f in self.files)
        sources, refs = read_sgm(src_path), read_sgm(ref_path)
        if len(sources) != len(refs):
            raise GPT2Error(f"{src_path} has {len(sources)} segments but {ref_path} has {len(refs)}")
        pairs = list(zip(sources, refs, strict=True))
        k = self.shots(ctx)
        pool, shots_from = self.examples(ctx, set(sources), set(refs)) if k else ([], None)
        prompts, truncated = [], 0
        max_new = min(256, ctx.n_ctx // 4)
        for i, (src, _) in enumerate(take(pairs, ctx.limit)):
            shots = sample_shots(pool, k, ctx.seed, f"{self.name}{i}")
            prompt, cut = clip(ctx, "".join(f"{s} = {t}\n" for s, t in shots) + f"{src} =", ctx.n_ctx - max_new, "end")
            prompts.append(prompt)
            truncated += cut
        outputs = generate_all(ctx, prompts, max_new, desc=self.name)
        hyps = [(sentences(o) or [""])[0] for o in outputs]
        bleu, signature = corpus_bleu_signed(hyps, [r for _, r in pairs[: len(hyps)]])
        protocol = {
            "data": {
                "source": ctx.data.describe(self.files[0], src_path),
                "reference": ctx.data.describe(self.files[1], ref_path),
            },
            "prompt": "K lines '{source} = {target}', then '{source} ='",
            "protocol_source": "the paper's (section 3.7)" if "fr" in (self.src, self.tgt) else _DE_SOURCE,
            "shots": k,
            "shots_from": shots_from,
            "decoding": f"greedy to the end of the line (at most {max_new} tokens); first sentence kept",
            "bleu": "sacrebleu corpus_bleu, 13a tokenisation",
            "sacrebleu_signature": signature,
            "truncated_prompts": truncated,
        }
        return Result({"bleu": bleu}, len(hyps), protocol)
