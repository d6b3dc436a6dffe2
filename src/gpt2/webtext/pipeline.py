"""The WebText pipeline, assembled from datatrove steps and run by one of datatrove's executors.

Stages (Radford et al. 2019, section 2.2), each a chain of datatrove pipelines that a finished run skips
(datatrove records each task's completion under OUTPUT/logs), so a killed run resumes where it stopped:

  links    Reddit submissions -> OUTPUT/links/links.jsonl (gpt2.webtext.links)
  fetch    links -> OUTPUT/pages/*.jsonl.zst, HTML with karma and dates (gpt2.webtext.fetch, state in SQLite)
  extract  main text with datatrove's Trafilatura extractor, pages under `min_chars` dropped -> OUTPUT/extracted
  dedup    datatrove's exact dedup on normalised text, then its MinHash LSH near-duplicate removal -> OUTPUT/deduped
  filter   English only (lingua), boilerplate lines removed, too little alphabetic text dropped, then
           OUTPUT/corpus/*.jsonl.zst (text, url, karma, created_utc, title) and OUTPUT/summary.json

Which copy of a duplicate survives: exact dedup keeps the copy whose karma has the highest order of magnitude
(ties broken by a hash of the URL, never by the task split); MinHash keeps the first document of a cluster in
(task, position) order, the first URL when the copies are on one host, but which copy can depend on --tasks when
they are on different hosts. The corpus writer and the other datatrove writers are not atomic file by file;
a task's output counts only once datatrove has recorded the task complete, and a rerun rewrites it.
"""

from __future__ import annotations

import html
import json
import re
import unicodedata
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.utils.word_tokenizers import WordTokenizer

from gpt2.errors import GPT2Error
from gpt2.io import atomic_write, open_binary
from gpt2.webtext.fetch import FetchConfig, failures_by_kind
from gpt2.webtext.links import DEFAULT_BEFORE, DEFAULT_MIN_KARMA, parse_date

STAGES = ("links", "fetch", "extract", "dedup", "filter")
EXECUTORS = ("local", "slurm", "ray")
MINHASH_BUCKETS = 14  # datatrove's defaults (14 bands of 8 hashes over word 5-grams): ~92% recall at Jaccard 0.8


@dataclass
class WebtextConfig:
    """Everything `gpt2 webtext` needs."""

    submissions: list[str]
    output: str
    min_karma: int = DEFAULT_MIN_KARMA
    before: str = DEFAULT_BEFORE
    stages: tuple[str, ...] = STAGES
    executor: str = "local"
    tasks: int = 1
    workers: int = 1
    fetch: FetchConfig = field(default_factory=FetchConfig)
    min_chars: int = 200  # extracted text shorter than this is a stub, an error page or a paywall
    min_alpha: float = 0.7  # share of letters among non-space characters below which text is tables or code
    extract_timeout: float = 10.0  # seconds for trafilatura on one page
    slurm_partition: str | None = None
    slurm_time: str = "24:00:00"
    progress: bool = True


# ------------------------------------------------------------------------------------------------ steps
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
    """The corpus's JSON Lines record: what `gpt2 prepare` reads (`text`) and where it came from."""
    m = doc.metadata
    return {"text": doc.text, "url": m.get("url", doc.id), "karma": m.get("karma"),
            "created_utc": m.get("created_utc"), "title": m.get("title", "")}  # fmt: skip


class Summary(PipelineStep):
    """One task at the end: OUTPUT/summary.json (documents and bytes after each stage, fetch failures by kind,
    what each filter removed, the top domains) and OUTPUT/length_histogram.png."""

    type = "📊 - STATS"
    name = "summary"

    def __init__(self, output: str, settings: dict) -> None:
        super().__init__()
        self.output = output
        self.settings = settings

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        write_summary(Path(self.output), self.settings)
        yield from ()


# ------------------------------------------------------------------------------------------------ summary
def _folder_stats(folder: Path) -> dict[str, int] | None:
    if not folder.is_dir():
        return None
    docs = nbytes = 0
    for path in sorted(folder.glob("*.jsonl*")):
        with open_binary(path) as f:
            for line in f:
                docs += 1
                nbytes += len(json.loads(line)["text"].encode("utf-8"))
    return {"documents": docs, "bytes": nbytes}


def _counts(logs: Path, step: str = "") -> dict[str, int]:
    """The counters of one stage's steps (those whose name holds `step`), from datatrove's stats.json."""
    path = logs / "stats.json"
    if not path.is_file():
        return {}
    counts: Counter[str] = Counter()
    for block in json.loads(path.read_text("utf-8")):
        if step in block.get("name", ""):
            for key, value in block.get("stats", {}).items():
                counts[key] += value.get("total", 0) if isinstance(value, dict) else value
    return dict(counts)


def _dropped(logs: Path) -> dict[str, int]:
    """What the filters of one stage dropped, by reason."""
    counts = _counts(logs)
    return {k.removeprefix("dropped_"): v for k, v in sorted(counts.items()) if k.startswith("dropped_")}


def write_summary(output: Path, settings: dict) -> dict:
    """Writes OUTPUT/summary.json and OUTPUT/length_histogram.png from what the stages left; returns the summary."""
    links = output / "links" / "links.jsonl"
    stages: dict[str, Any] = {}
    if links.is_file():
        with open(links, "rb") as f:
            urls = [json.loads(line)["url"] for line in f]
        stages["links"] = {"documents": len(urls), "bytes": sum(len(u) for u in urls)}
    for stage, folder in [("fetch", "pages"), ("extract", "extracted"), ("exact_dedup", "dedup/exact"),
                          ("near_dedup", "deduped"), ("filter", "corpus")]:  # fmt: skip
        if (s := _folder_stats(output / folder)) is not None:
            stages[stage] = s
    domains: Counter[str] = Counter()
    lengths: list[int] = []
    for path in sorted((output / "corpus").glob("*.jsonl*")):
        with open_binary(path) as f:
            for line in f:
                record = json.loads(line)
                host = (re.match(r"https?://([^/:]+)", record["url"]) or [None, ""])[1]
                domains[host.removeprefix("www.")] += 1
                lengths.append(len(record["text"]))

    def removed(a: str, b: str) -> int | None:
        return stages[a]["documents"] - stages[b]["documents"] if a in stages and b in stages else None

    summary = {
        "what": "a WebText-style corpus (Radford et al. 2019, section 2.2), built by `gpt2 webtext`",
        "settings": settings,
        "stages": stages,
        "removed": {
            "exact_duplicates": removed("extract", "exact_dedup"),
            "near_duplicates": removed("exact_dedup", "near_dedup"),
            "extract": _dropped(output / "logs" / "extract"),
            "filter": _dropped(output / "logs" / "filter"),
        },
        "submissions": _counts(output / "logs" / "links", "Reddit submissions"),
        "fetch_failures": failures_by_kind(output / "fetch_state"),
        "top_domains": [[d, n] for d, n in sorted(domains.items(), key=lambda kv: (-kv[1], kv[0]))[:15]],
        "length_histogram": "length_histogram.png" if lengths else None,
    }
    if lengths:
        _histogram(lengths, output / "length_histogram.png")
    atomic_write(output / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return summary


def _histogram(lengths: list[int], path: Path) -> None:
    import numpy as np

    from gpt2.plot import new_figure, save_png

    fig = new_figure(figsize=(7, 4))
    ax = fig.add_subplot()
    top = max(max(lengths), 10)
    ax.hist(lengths, bins=np.logspace(np.log10(max(min(lengths), 1)), np.log10(top * 1.01), 40))
    ax.set_xscale("log")
    ax.set_xlabel("document length (characters)")
    ax.set_ylabel("documents")
    ax.set_title(f"{len(lengths):,} documents, median {int(np.median(lengths)):,} characters")
    fig.tight_layout()
    fig.set_dpi(100)
    save_png(fig, path)


# ------------------------------------------------------------------------------------------------ assembly
# What the workers of every stage import. datatrove's local executor starts each pipeline's workers from a
# forkserver, which by default imports nothing: every worker of every pipeline (a full run has a dozen) imported
# these itself, ~3 s of CPU each on a busy 2-core machine, longer than a small stage's work. Preloaded, the
# forkserver imports them once and the workers fork from it already loaded (~0.3 s each; bench_webtext.py).
WORKER_PRELOAD = ["__main__", "gpt2.webtext.pipeline", "gpt2.webtext.fetch", "gpt2.webtext.links", "trafilatura",
                  "datatrove.pipeline.extractors", "datatrove.pipeline.dedup", "datatrove.pipeline.readers",
                  "datatrove.pipeline.writers", "lingua", "aiohttp", "orjson", "zstandard"]  # fmt: skip


def _preload_workers() -> None:
    """Has the forkserver import WORKER_PRELOAD, if it has not started yet (it is started once per process, and
    a missing module is skipped there)."""
    import multiprocess  # datatrove's multiprocessing, whose forkserver it uses

    multiprocess.set_forkserver_preload(WORKER_PRELOAD)


def _executor(cfg: WebtextConfig, pipeline: list, tasks: int, name: str, depends: Any = None) -> Any:
    logs = str(Path(cfg.output) / "logs" / name)
    workers = min(cfg.workers, tasks)
    if cfg.executor == "local":
        from datatrove.executor import LocalPipelineExecutor

        if workers > 1:
            _preload_workers()

        return LocalPipelineExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=logs, depends=depends)
    if cfg.executor == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        if not cfg.slurm_partition:
            raise GPT2Error("--executor slurm needs --slurm-partition, the partition to submit the jobs to")
        return SlurmPipelineExecutor(pipeline, tasks=tasks, workers=workers, time=cfg.slurm_time,
                                     partition=cfg.slurm_partition, job_name=f"webtext-{name}", logging_dir=logs,
                                     depends=depends)  # fmt: skip
    if cfg.executor == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:  # datatrove imports ray only when the run starts
            raise GPT2Error("--executor ray needs ray: pip install 'ray[default]'")
        from datatrove.executor.ray import RayPipelineExecutor

        return RayPipelineExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=logs, depends=depends)
    raise GPT2Error(f"--executor {cfg.executor!r} is not one of {', '.join(EXECUTORS)}")


def build(cfg: WebtextConfig) -> list[Any]:
    """The executors of the chosen stages, in order, each depending on the one before (so slurm and ray can
    queue them all at once); running the last runs them all."""
    from datatrove.pipeline.dedup import ExactDedupFilter, ExactDedupSignature, ExactFindDedups
    from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    from gpt2.webtext.fetch import FetchPages
    from gpt2.webtext.links import MergeLinks, SubmissionLinks

    unknown = [s for s in cfg.stages if s not in STAGES]
    if unknown:
        raise GPT2Error(f"unknown stage {unknown[0]!r}; the stages are {', '.join(STAGES)}")
    if cfg.tasks < 1 or cfg.workers < 1:
        raise GPT2Error("--tasks and --workers must be at least 1")
    out = Path(cfg.output)
    n = cfg.tasks
    chain: list[Any] = []
    first = next((s for s in STAGES if s in cfg.stages), None)
    needs = {"fetch": out / "links" / "links.jsonl", "extract": out / "pages", "dedup": out / "extracted",
             "filter": out / "deduped"}  # fmt: skip
    if first in needs and not needs[first].exists() and cfg.executor == "local":
        before = STAGES[STAGES.index(first) - 1]
        raise GPT2Error(f"{needs[first]} is missing: run the {before} stage first (--stages {before} {first})")

    def add(pipeline: list, tasks: int, name: str) -> None:
        # Local runs go in order here; cluster executors queue the chain at once, each waiting for the last.
        depends = chain[-1] if chain and cfg.executor != "local" else None
        chain.append(_executor(cfg, pipeline, tasks, name, depends))

    def reader(folder: str) -> JsonlReader:
        return JsonlReader(str(out / folder), glob_pattern="*.jsonl*", recursive=False)

    def writer(folder: str) -> JsonlWriter:
        # zstd, not gzip: datatrove's gzip writes at level 9, ~7 MB of text per CPU second, which was a third of
        # the dedup stage's CPU (three passes over the text); zstd's level 3 is ~10x cheaper at a similar size.
        return JsonlWriter(str(out / folder), output_filename="${rank}.jsonl.zst", compression="zstd")

    if "links" in cfg.stages:
        files = [str(Path(f).resolve()) for f in cfg.submissions]
        if not files:
            raise GPT2Error("the links stage needs --submissions, Reddit submission dumps (.jsonl, .gz or .zst)")
        for f in files:
            if not Path(f).is_file():
                raise GPT2Error(f"{f}: no such submissions file")
        before = parse_date(cfg.before)
        add([SubmissionLinks(files, cfg.min_karma, before), writer("links/candidates")], n, "links")
        add([MergeLinks(out / "links" / "candidates", out / "links" / "links.jsonl")], 1, "links-merge")
    if "fetch" in cfg.stages:
        add([FetchPages(out / "links" / "links.jsonl", out / "fetch_state", cfg.fetch), writer("pages")], n, "fetch")
    if "extract" in cfg.stages:
        steps = [reader("pages"), HtmlTitle(), Trafilatura(favour_precision=True, timeout=cfg.extract_timeout),
                 MinLength(cfg.min_chars), writer("extracted")]  # fmt: skip
        add(steps, n, "extract")
    if "dedup" in cfg.stages:
        exact = ExactDedupConfig(content_getter=normalised_text, document_priority=karma_priority)
        d = out / "dedup"
        add([reader("extracted"), ExactDedupSignature(str(d / "exact_sigs"), exact)], n, "dedup-exact-1")
        add([ExactFindDedups(str(d / "exact_sigs"), str(d / "exact_dups"), exact)], 1, "dedup-exact-2")
        add([reader("extracted"), ExactDedupFilter(str(d / "exact_dups"), exact), writer("dedup/exact")], n,
            "dedup-exact-3")  # fmt: skip
        mh = MinhashConfig(num_buckets=MINHASH_BUCKETS)
        add([reader("dedup/exact"), MinhashDedupSignature(str(d / "mh_sigs"), mh, language=SimpleWords())], n,
            "dedup-near-1")  # fmt: skip
        add([MinhashDedupBuckets(str(d / "mh_sigs"), str(d / "mh_buckets"), config=mh)], MINHASH_BUCKETS,
            "dedup-near-2")  # fmt: skip
        add([MinhashDedupCluster(str(d / "mh_buckets"), str(d / "mh_remove"), config=mh)], 1, "dedup-near-3")
        add([reader("dedup/exact"), MinhashDedupFilter(str(d / "mh_remove")), writer("deduped")], n, "dedup-near-4")
    if "filter" in cfg.stages:
        corpus = JsonlWriter(str(out / "corpus"), output_filename="webtext-${rank}.jsonl.zst", compression="zstd",
                             adapter=corpus_record)  # fmt: skip
        add([reader("deduped"), EnglishOnly(), Cleaner(cfg.min_chars, cfg.min_alpha), corpus], n, "filter")
        settings = {"min_karma": cfg.min_karma, "before": cfg.before, "tasks": cfg.tasks, "min_chars": cfg.min_chars,
                    "min_alpha": cfg.min_alpha, "max_bytes": cfg.fetch.max_bytes}  # fmt: skip
        add([Summary(str(out), settings)], 1, "summary")
    return chain


def run(cfg: WebtextConfig) -> dict | None:
    """Runs the chosen stages; returns the summary when the filter stage ran here (local executor)."""
    chain = build(cfg)
    if not chain:
        return None
    if cfg.executor == "local":
        for executor in chain:  # in order, each in this process or a local pool
            executor.run()
    else:
        chain[-1].run()  # queues the whole chain on the cluster, each job waiting for the one before
        return None
    path = Path(cfg.output) / "summary.json"
    return json.loads(path.read_text("utf-8")) if "filter" in cfg.stages and path.is_file() else None
