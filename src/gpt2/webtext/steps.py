"""The pipeline's own datatrove steps and the functions its datatrove steps are configured with: the page title,
length and language filters, heuristic cleaning, MinHash words, exact-dedup keys and the corpus record."""

from __future__ import annotations

import html
import re
import unicodedata
import zlib
from typing import Any

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.utils.word_tokenizers import WordTokenizer

_TITLE = re.compile(r"<title[^>]*>(.*?)</title\s*>", re.IGNORECASE | re.DOTALL)


class HtmlTitle(PipelineStep):
    """Keeps the page's <title> in the metadata before extraction replaces the HTML with its text."""

    type = "🛢 - EXTRAC"
    name = "title"

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            m = _TITLE.search(doc.text[:100_000])
            doc.metadata["title"] = " ".join(html.unescape(m.group(1)).split())[:1000] if m else ""
            yield doc


class MinLength(BaseFilter):
    """Drops documents shorter than `min_chars` characters."""

    name = "minimum length"

    def __init__(self, min_chars: int) -> None:
        super().__init__()
        self.min_chars = min_chars

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return len(doc.text.strip()) >= self.min_chars or (False, "too_short")


class EnglishOnly(BaseFilter):
    """Keeps English documents, by lingua, whose language models ship inside its wheel (datatrove's own filter
    downloads a fastText model when it runs, which an offline cluster cannot do). Low-accuracy mode reads
    trigrams only: enough for whole pages, and it loads in under a second instead of ten."""

    name = "English only"

    def __init__(self, sample_chars: int = 1000) -> None:
        super().__init__()
        self.sample_chars = sample_chars
        self._detector = None

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        from lingua import Language, LanguageDetectorBuilder

        if self._detector is None:
            self._detector = LanguageDetectorBuilder.from_all_languages().with_low_accuracy_mode().build()
        language = self._detector.detect_language_of(doc.text[: self.sample_chars])
        doc.metadata["language"] = language.iso_code_639_1.name.lower() if language else ""
        return language == Language.ENGLISH or (False, "not_english")

    def __getstate__(self) -> dict:  # the detector is rebuilt in each worker process, not pickled
        return {**self.__dict__, "_detector": None}


# Lines that are page furniture rather than the article: cookie banners, share buttons, sign-up prompts.
BOILERPLATE = re.compile(
    r"\b(cookies?|javascript|all rights reserved|copyright ©|subscribe|newsletter|sign up|sign in|log in|"
    r"share (this|on)|follow us|click here|privacy policy|terms of (use|service)|advertisement|read more|"
    r"related (articles|posts|stories)|comments? \(\d+\)|leave a (reply|comment))\b",
    re.IGNORECASE,
)


class Cleaner(BaseFilter):
    """Heuristic cleaning: removes short boilerplate lines, then drops documents with too little text left or
    too small a share of letters (tables, code listings, link farms)."""

    name = "heuristic cleaning"

    def __init__(self, min_chars: int, min_alpha: float) -> None:
        super().__init__()
        self.min_chars = min_chars
        self.min_alpha = min_alpha

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        lines = [ln for ln in doc.text.split("\n") if not (len(ln) < 200 and BOILERPLATE.search(ln))]
        if len(lines) != doc.text.count("\n") + 1:
            self.stat_update("boilerplate_lines", value=doc.text.count("\n") + 1 - len(lines))
        doc.text = "\n".join(lines).strip()
        if len(doc.text) < self.min_chars:
            return False, "too_short"
        visible = [c for c in doc.text if not c.isspace()]
        if sum(c.isalpha() for c in visible) < self.min_alpha * len(visible):
            return False, "few_letters"
        return True


class SimpleWords(WordTokenizer):
    """Words for MinHash shingles: Unicode word characters. datatrove's English tokenizer is spaCy's, a large
    dependency for what near-duplicate detection needs."""

    def __init__(self) -> None:
        super().__init__("en")

    def word_tokenize(self, text: str) -> list[str]:
        return re.findall(r"\w+", text)

    def sent_tokenize(self, text: str) -> list[str]:
        return [s for s in re.split(r"(?<=[.!?])\s+", text) if s]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in re.finditer(r"\S.*?(?:[.!?](?=\s)|$)", text, re.DOTALL)]


def normalised_text(doc: Document) -> str:
    """The text exact dedup compares: NFKC, lower case, whitespace collapsed (the same article with other line
    breaks or capitalised headings is the same article)."""
    return " ".join(unicodedata.normalize("NFKC", doc.text).lower().split())


def karma_priority(doc: Document) -> int:
    """Exact dedup keeps the copy with the highest priority (1..65535): karma's order of magnitude first, then a
    hash of the URL, so the survivor does not depend on how documents were split among tasks."""
    karma = max(int(doc.metadata.get("karma") or 0), 1)
    tie = zlib.crc32(str(doc.metadata.get("url", doc.id)).encode()) & 0xFFF
    return 1 + (min(karma.bit_length(), 15) << 12 | tie) % 65535


def corpus_record(self: Any, doc: Document) -> dict:
    """The corpus's JSON Lines record: what `gpt2 prepare` reads (`text`) and where it came from: the Reddit link
    (`url`) and the page it led to after redirects (`final_url`)."""
    m = doc.metadata
    url = m.get("url", doc.id)
    return {"text": doc.text, "url": url, "final_url": m.get("final_url") or url, "karma": m.get("karma"),
            "created_utc": m.get("created_utc"), "title": m.get("title", "")}  # fmt: skip
