"""The WebText pipeline, assembled from datatrove steps and run by one of datatrove's executors.

Stages (Radford et al. 2019, section 2.2), each a chain of datatrove pipelines that a finished run skips
(datatrove records each task's completion under OUTPUT/logs), so a killed run resumes where it stopped:

  links    Reddit submissions -> OUTPUT/links/links.jsonl (gpt2.webtext.links)
  fetch    links -> OUTPUT/pages/*.jsonl.zst, HTML with karma and dates (gpt2.webtext.fetch, state in SQLite)
  extract  main text (gpt2.webtext.extract), pages under `min_chars` dropped -> OUTPUT/extracted
  dedup    datatrove's exact dedup on normalised text, then its MinHash LSH near-duplicate removal -> OUTPUT/deduped
  filter   English only (lingua), boilerplate lines removed, too little alphabetic text dropped, then
           OUTPUT/corpus/*.jsonl.zst (text, url, final_url, karma, created_utc, title) and OUTPUT/summary.json

Run here (the local executor), the stages go one after the other and each is checked before the next: a stage
whose settings differ from the last run's (OUTPUT/logs/STAGE.settings.json) is run again with every stage after
it (the fetch state is kept: no page is fetched twice), and a stage that leaves nothing for the next ends the run
with one line saying why, after writing summary.json. Cluster executors queue the whole chain at once.

Which copy of a duplicate survives: exact dedup keeps the copy whose karma has the highest order of magnitude
(ties broken by a hash of the URL, never by the task split); MinHash keeps the first document of a cluster in
(task, position) order, the first URL when the copies are on one host, but which copy can depend on --tasks when
they are on different hosts. The corpus writer and the other datatrove writers are not atomic file by file;
a task's output counts only once datatrove has recorded the task complete, and a rerun rewrites it.
"""

from __future__ import annotations

import errno
import json
import shutil
import sqlite3
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gpt2.errors import GPT2Error
from gpt2.io import atomic_write, report
from gpt2.webtext.fetch import FetchConfig, fetch_summary
from gpt2.webtext.links import DEFAULT_BEFORE, DEFAULT_MIN_KARMA, parse_date
from gpt2.webtext.steps import (
    Cleaner,
    EnglishOnly,
    HtmlTitle,
    MinLength,
    SimpleWords,
    corpus_record,
    karma_priority,
    normalised_text,
)
from gpt2.webtext.summary import Summary, stage_report, step_counts, submissions, write_summary

STAGES = ("links", "fetch", "extract", "dedup", "filter")
EXECUTORS = ("local", "slurm", "ray")
MINHASH_BUCKETS = 14  # datatrove's defaults (14 bands of 8 hashes over word 5-grams): ~92% recall at Jaccard 0.8
# What each stage writes under OUTPUT (the fetch state, OUTPUT/fetch_state, is never removed: it is the crawl).
STAGE_OUTPUTS = {"links": ("links",), "fetch": ("pages",), "extract": ("extracted",), "dedup": ("dedup", "deduped"),
                 "filter": ("corpus", "summary.json", "length_histogram.png")}  # fmt: skip


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
    extract_timeout: float = 10.0  # seconds for the extractor on one page
    skip_bad_inputs: bool = False  # a truncated or corrupt dump is counted and its readable part used
    slurm_partition: str | None = None
    slurm_time: str = "24:00:00"
    progress: bool = True


def settings(cfg: WebtextConfig) -> dict[str, Any]:
    """The settings summary.json records: the selection, the politeness and refusals, the filters."""
    fetch = {k: v for k, v in asdict(cfg.fetch).items() if k not in ("progress", "retry_failed")}
    return {"submissions": cfg.submissions, "min_karma": cfg.min_karma, "before": cfg.before, "tasks": cfg.tasks,
            "skip_bad_inputs": cfg.skip_bad_inputs, **fetch, "min_chars": cfg.min_chars,
            "min_alpha": cfg.min_alpha}  # fmt: skip


def stage_settings(cfg: WebtextConfig, stage: str) -> dict[str, Any]:
    """What a stage's output depends on; when it changes, the stage and those after it run again."""
    if stage == "links":
        dumps = [[str(Path(f).resolve()), *_size_and_time(Path(f))] for f in cfg.submissions]
        return {"dumps": dumps, "min_karma": cfg.min_karma, "before": cfg.before, "tasks": cfg.tasks,
                "skip_bad_inputs": cfg.skip_bad_inputs}  # fmt: skip
    if stage == "fetch":
        f = cfg.fetch
        return {"tasks": cfg.tasks, "allow_private_addresses": f.allow_private_addresses,
                "keep_truncated": f.keep_truncated, "max_crawl_delay": f.max_crawl_delay}  # fmt: skip
    if stage == "extract":
        return {"tasks": cfg.tasks, "min_chars": cfg.min_chars}
    if stage == "filter":
        return {"tasks": cfg.tasks, "min_chars": cfg.min_chars, "min_alpha": cfg.min_alpha}
    return {"tasks": cfg.tasks}


def _size_and_time(path: Path) -> list[int]:
    try:
        st = path.stat()
    except OSError:
        return [-1, -1]
    return [st.st_size, st.st_mtime_ns]


# What the workers of every stage import. datatrove's local executor starts each pipeline's workers from a
# forkserver, which by default imports nothing: every worker of every pipeline (a full run has a dozen) imported
# these itself, ~3 s of CPU each on a busy 2-core machine, longer than a small stage's work. Preloaded, the
# forkserver imports them once and the workers fork from it already loaded (~0.3 s each; bench_webtext.py).
WORKER_PRELOAD = ["__main__", "gpt2.webtext.pipeline", "gpt2.webtext.fetch", "gpt2.webtext.links",
                  "gpt2.webtext.steps", "gpt2.webtext.local", "gpt2.webtext.extract", "trafilatura",
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
        from gpt2.webtext.local import LocalExecutor

        if workers > 1:
            _preload_workers()
        return LocalExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=logs)
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


def build(cfg: WebtextConfig) -> list[tuple[str, list[Any]]]:
    """The chosen stages in order, each with its executors; on a cluster each executor depends on the one before
    (so slurm and ray can queue them all at once)."""
    from datatrove.pipeline.dedup import ExactDedupFilter, ExactDedupSignature, ExactFindDedups
    from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
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
    chain: list[tuple[str, list[Any]]] = []
    first = next((s for s in STAGES if s in cfg.stages), None)
    needs = {"fetch": out / "links" / "links.jsonl", "extract": out / "pages", "dedup": out / "extracted",
             "filter": out / "deduped"}  # fmt: skip
    if first in needs and not needs[first].exists() and cfg.executor == "local":
        before = STAGES[STAGES.index(first) - 1]
        raise GPT2Error(f"{needs[first]} is missing: run the {before} stage first (--stages {before} {first})")

    def add(stage: str, pipeline: list, tasks: int, name: str) -> None:
        last = chain[-1][1][-1] if chain and chain[-1][1] else None
        depends = last if cfg.executor != "local" else None
        if not chain or chain[-1][0] != stage:
            chain.append((stage, []))
        chain[-1][1].append(_executor(cfg, pipeline, tasks, name, depends))

    def reader(folder: str) -> JsonlReader:
        return JsonlReader(str(out / folder), glob_pattern="*.jsonl*", recursive=False)

    def writer(folder: str) -> JsonlWriter:
        # zstd, not gzip: datatrove's gzip writes at level 9, ~7 MB of text per CPU second, which was a third of
        # the dedup stage's CPU (three passes over the text); zstd's level 3 is ~10x cheaper at a similar size.
        return JsonlWriter(str(out / folder), output_filename="${rank}.jsonl.zst", compression="zstd")

    if "links" in cfg.stages:
        files = [str(Path(f).resolve()) for f in cfg.submissions]
        if not files:
            raise GPT2Error("the links stage needs --submissions: Reddit submission dumps (.zst, .bz2, .xz, .jsonl)")
        for f in files:
            if not Path(f).is_file():
                raise GPT2Error(f"{f}: no such submissions file")
        before = parse_date(cfg.before)
        links = SubmissionLinks(files, cfg.min_karma, before, cfg.skip_bad_inputs, out / "links" / "bad_inputs")
        add("links", [links, writer("links/candidates")], n, "links")
        add("links", [MergeLinks(out / "links" / "candidates", out / "links" / "links.jsonl")], 1, "links-merge")
    if "fetch" in cfg.stages:
        fetch = FetchPages(out / "links" / "links.jsonl", out / "fetch_state", cfg.fetch)
        add("fetch", [fetch, writer("pages")], n, "fetch")
    if "extract" in cfg.stages:
        from gpt2.webtext.extract import MainText

        steps = [reader("pages"), HtmlTitle(), MainText(timeout=cfg.extract_timeout), MinLength(cfg.min_chars),
                 writer("extracted")]  # fmt: skip
        add("extract", steps, n, "extract")
    if "dedup" in cfg.stages:
        exact = ExactDedupConfig(content_getter=normalised_text, document_priority=karma_priority)
        d = out / "dedup"
        add("dedup", [reader("extracted"), ExactDedupSignature(str(d / "exact_sigs"), exact)], n, "dedup-exact-1")
        add("dedup", [ExactFindDedups(str(d / "exact_sigs"), str(d / "exact_dups"), exact)], 1, "dedup-exact-2")
        add("dedup", [reader("extracted"), ExactDedupFilter(str(d / "exact_dups"), exact), writer("dedup/exact")], n,
            "dedup-exact-3")  # fmt: skip
        mh = MinhashConfig(num_buckets=MINHASH_BUCKETS)
        add("dedup", [reader("dedup/exact"), MinhashDedupSignature(str(d / "mh_sigs"), mh, language=SimpleWords())],
            n, "dedup-near-1")  # fmt: skip
        add("dedup", [MinhashDedupBuckets(str(d / "mh_sigs"), str(d / "mh_buckets"), config=mh)], MINHASH_BUCKETS,
            "dedup-near-2")  # fmt: skip
        add("dedup", [MinhashDedupCluster(str(d / "mh_buckets"), str(d / "mh_remove"), config=mh)], 1, "dedup-near-3")
        add("dedup", [reader("dedup/exact"), MinhashDedupFilter(str(d / "mh_remove")), writer("deduped")], n,
            "dedup-near-4")  # fmt: skip
    if "filter" in cfg.stages:
        corpus = JsonlWriter(str(out / "corpus"), output_filename="webtext-${rank}.jsonl.zst", compression="zstd",
                             adapter=corpus_record)  # fmt: skip
        add("filter", [reader("deduped"), EnglishOnly(), Cleaner(cfg.min_chars, cfg.min_alpha), corpus], n, "filter")
        if cfg.executor != "local":  # run here, the summary is written once the stage is checked
            add("filter", [Summary(str(out), settings(cfg))], 1, "summary")
    return chain


# ------------------------------------------------------------------------------------------------ running
def check_output(folder: Path) -> None:
    """One line, before anything runs, if --output is not a folder this process can write in."""
    if folder.exists() and not folder.is_dir():
        raise GPT2Error(f"--output {folder} is a file; give a folder (it is created if missing)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        why = f"cannot write there ({e.strerror})"
        raise GPT2Error(f"--output {folder}: {why}; give a folder you can write in") from None


def _check_fetch_tasks(cfg: WebtextConfig) -> None:
    """The fetch state is split by --tasks: resuming with another split would fetch pages twice."""
    for path in sorted((Path(cfg.output) / "fetch_state").glob("*.sqlite"))[:1]:
        db = sqlite3.connect(path)
        try:
            row = db.execute("SELECT value FROM meta WHERE key='world_size'").fetchone()
        except sqlite3.DatabaseError:
            row = None
        finally:
            db.close()
        if row and int(row[0]) != cfg.tasks:
            raise GPT2Error(f"{path.parent} was fetched with --tasks {row[0]}; resume with --tasks {row[0]} "
                            f"(or remove that folder to fetch again)")  # fmt: skip


def _invalidate(out: Path, stages: list[str], pipelines: dict[str, list[str]]) -> None:
    """Removes what `stages` wrote, their datatrove logs (so their tasks count as not done) and their settings."""
    for stage in stages:
        for name in [*STAGE_OUTPUTS[stage], *(f"logs/{p}" for p in pipelines.get(stage, [])),
                     f"logs/{stage}.settings.json"]:  # fmt: skip
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()


def _has_output(folder: Path) -> bool:
    return any(p.stat().st_size > 0 for p in folder.glob("*.jsonl*")) if folder.is_dir() else False


def _stop_reason(cfg: WebtextConfig, stage: str) -> str | None:
    """Why the run cannot go on after `stage` (one line that says what to do), or None when it can."""
    out = Path(cfg.output)
    if stage == "links":
        with open(out / "links" / "links.jsonl", "rb") as f:
            if any(True for _ in f):
                return None
        counts = step_counts(out / "logs" / "links", "Reddit submissions")
        read = counts.get("submissions", 0)
        if not read:
            return f"no submissions in {', '.join(cfg.submissions)}: the dumps hold no records"
        reasons = sorted(((k, v) for k, v in counts.items() if k not in ("submissions", "kept")), key=lambda kv: -kv[1])
        why = ", ".join(f"{k} {v:,}" for k, v in reasons[:5])
        return f"none of the {read:,} submissions was kept ({why}); see --min-karma and --before"
    if stage == "fetch" and not _has_output(out / "pages"):
        fetched = fetch_summary(out / "fetch_state")
        failed, links = fetched["failed"], fetched["links"]
        if failed.get("private_address") == links:
            return f"all {links:,} links point at private addresses; pass --allow-private-addresses to allow them"
        if fetched["truncated"] and not cfg.fetch.keep_truncated:
            return (f"no page could be used: {fetched['truncated']:,} were cut at --max-bytes {cfg.fetch.max_bytes:,} "
                    f"(pass --keep-truncated to keep them, or a larger --max-bytes with --retry-failed)")  # fmt: skip
        why = ", ".join(f"{k} {v:,}" for k, v in sorted(failed.items(), key=lambda kv: -kv[1])[:6])
        return f"none of the {links:,} links could be fetched ({why}); --retry-failed tries the failed ones again"
    if stage == "extract" and not _has_output(out / "extracted"):
        return f"no page had main text of at least --min-chars {cfg.min_chars:,} characters"
    return None


def run(cfg: WebtextConfig) -> dict | None:
    """Runs the chosen stages; returns the summary when the filter stage ran here (local executor). Reports a line
    as each stage starts and ends, and warns once for each dump that was truncated or corrupt and read only in
    part (with skip_bad_inputs)."""
    out = Path(cfg.output)
    check_output(out)
    chain = build(cfg)
    if not chain:
        return None
    if cfg.executor != "local":
        chain[-1][1][-1].run()  # queues the whole chain on the cluster, each job waiting for the one before
        return None
    pipelines = {stage: [Path(e.logging_dir.path).name for e in executors] for stage, executors in chain}
    for i, (stage, executors) in enumerate(chain, start=1):
        began = time.monotonic()
        report(f"[{i}/{len(chain)}] {stage} ...")
        record = out / "logs" / f"{stage}.settings.json"
        wanted = stage_settings(cfg, stage)
        previous = json.loads(record.read_text("utf-8")) if record.is_file() else None
        if stage == "fetch":
            _check_fetch_tasks(cfg)
        if previous != wanted or (stage == "fetch" and cfg.fetch.retry_failed):
            _invalidate(out, list(STAGES[STAGES.index(stage) :]), pipelines)
            atomic_write(record, json.dumps(wanted) + "\n")
        try:
            for executor in executors:
                executor.run()
        except OSError as e:
            raise _os_error(stage, e) from None
        if stage == "links":
            for bad in submissions(out / "logs")["bad_inputs"]:
                warnings.warn(
                    f"{bad['error']}; the records before that point were used (--skip-bad-inputs)", stacklevel=2
                )
        if (stopped := _stop_reason(cfg, stage)) is not None:
            write_summary(out, settings(cfg), stopped)
            raise GPT2Error(f"{stopped} (see {out / 'summary.json'})")
        report(f"[{i}/{len(chain)}] {stage}: {stage_report(out, stage)} ({time.monotonic() - began:,.1f} s)")
    if "filter" not in cfg.stages:
        return None
    return write_summary(out, settings(cfg))


def _os_error(stage: str, e: OSError) -> GPT2Error:
    if e.errno == errno.ENOSPC:
        return GPT2Error(f"the {stage} stage ran out of disk space writing {e.filename or 'its output'}; free some "
                         f"and run the same command again: it resumes")  # fmt: skip
    where = f" ({e.filename})" if e.filename else ""
    return GPT2Error(f"the {stage} stage failed: {e.strerror or e}{where}; fix that and run the same command again")
