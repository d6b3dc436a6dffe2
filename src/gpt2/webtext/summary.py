"""OUTPUT/summary.json and OUTPUT/length_histogram.png: what each stage of `gpt2 webtext` kept and why it dropped
the rest, read from what the stages left (datatrove's per-task statistics, the fetch state, the corpus)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from gpt2.io import atomic_write, open_binary
from gpt2.webtext.fetch import fetch_summary

# The datatrove pipelines (under OUTPUT/logs) whose writer's counts give each stage's size.
STAGE_WRITERS = {"fetch": "fetch", "extract": "extract", "exact_dedup": "dedup-exact-3", "near_dedup": "dedup-near-4",
                 "filter": "filter"}  # fmt: skip


def step_counts(logs: Path, step: str = "") -> dict[str, Any]:
    """The counters of one pipeline's steps whose name holds `step` (any case), summed over its finished tasks (each
    task writes stats/RANK.json, so a resumed run counts the tasks of the run before it too)."""
    counts: Counter[str] = Counter()
    for path in sorted((logs / "stats").glob("*.json")):
        for block in json.loads(path.read_text("utf-8")):
            if step.lower() in block.get("name", "").lower():
                for key, value in block.get("stats", {}).items():
                    counts[key] += value.get("total", 0) if isinstance(value, dict) else value
    return dict(counts)


def _written(logs: Path) -> dict[str, int] | None:
    """Documents and characters a pipeline's writer wrote, or None if it never ran."""
    if not (logs / "stats").is_dir():
        return None
    counts = step_counts(logs, "Writer")
    return {"documents": int(counts.get("total", 0)), "characters": int(counts.get("doc_len", 0))}


def _dropped(logs: Path) -> dict[str, int]:
    """What the filters of one pipeline dropped, by reason."""
    counts = step_counts(logs)
    return {k.removeprefix("dropped_"): v for k, v in sorted(counts.items()) if k.startswith("dropped_")}


def submissions(logs: Path) -> dict[str, Any]:
    """The links stage's reading of the dumps: submissions read and kept, dropped by reason, bad records by
    reason, and the dumps that were truncated or corrupt (with --skip-bad-inputs)."""
    counts = step_counts(logs / "links", "Reddit submissions")
    bad_inputs = []
    for path in sorted((logs.parent / "links" / "bad_inputs").glob("*.jsonl")):
        bad_inputs += [json.loads(line) for line in path.read_text("utf-8").splitlines()]
    skip = {"submissions", "kept", "bad_inputs"}
    return {
        "read": counts.get("submissions", 0),
        "kept": counts.get("kept", 0),
        "dropped": {k: v for k, v in sorted(counts.items()) if k not in skip and not k.startswith("bad_record:")},
        "bad_records": {
            k.removeprefix("bad_record:"): v
            for k, v in sorted(counts.items())
            if k.startswith("bad_") and k != "bad_inputs"
        },  # fmt: skip
        "bad_inputs": bad_inputs,
    }


def stage_report(output: Path, stage: str) -> str:
    """What a finished stage left, in a few words, for the line the command prints."""
    logs = output / "logs"

    def docs(pipeline: str) -> int:
        return (_written(logs / pipeline) or {"documents": 0})["documents"]

    if stage == "links":
        subs = submissions(logs)
        with open(output / "links" / "links.jsonl", "rb") as f:
            return f"{sum(1 for _ in f):,} links from {subs['read']:,} submissions"
    if stage == "fetch":
        f = fetch_summary(output / "fetch_state")
        return f"{docs('fetch'):,} pages ({sum(f['failed'].values()):,} failed, {f['truncated']:,} cut at --max-bytes)"
    if stage == "extract":
        return f"{docs('extract'):,} pages with main text"
    if stage == "dedup":
        exact, near = docs("dedup-exact-3"), docs("dedup-near-4")
        return f"{near:,} documents ({docs('extract') - exact:,} exact and {exact - near:,} near copies removed)"
    return f"{docs('filter'):,} documents in the corpus"


def write_summary(output: Path, settings: dict, stopped: str | None = None) -> dict:
    """Writes OUTPUT/summary.json and OUTPUT/length_histogram.png from what the stages left; returns the summary.
    `stopped`: why the run ended before the corpus, when it did."""
    logs = output / "logs"
    links = output / "links" / "links.jsonl"
    stages: dict[str, Any] = {}
    if links.is_file():
        with open(links, "rb") as f:
            stages["links"] = {"documents": sum(1 for _ in f)}
    for stage, pipeline in STAGE_WRITERS.items():
        if (s := _written(logs / pipeline)) is not None:
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

    fetched = fetch_summary(output / "fetch_state") if (output / "fetch_state").is_dir() else None
    summary = {
        "what": "a WebText-style corpus (Radford et al. 2019, section 2.2), built by `gpt2 webtext`",
        "stopped": stopped,
        "settings": settings,
        "stages": stages,
        "submissions": submissions(logs),
        "fetch": fetched,
        "removed": {
            "truncated_pages": fetched["truncated"] if fetched and not settings.get("keep_truncated") else 0,
            "extract": _dropped(logs / "extract"),
            "exact_duplicates": removed("extract", "exact_dedup"),
            "near_duplicates": removed("exact_dedup", "near_dedup"),
            "filter": _dropped(logs / "filter"),
            "boilerplate_lines": step_counts(logs / "filter", "heuristic cleaning").get("boilerplate_lines", 0),
        },
        "top_domains": [[d, n] for d, n in sorted(domains.items(), key=lambda kv: (-kv[1], kv[0]))[:15]],
        "length_histogram": "length_histogram.png" if lengths else None,
    }
    if lengths:
        _histogram(lengths, output / "length_histogram.png")
    atomic_write(output / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return summary


class Summary(PipelineStep):
    """One task at the end (where a cluster runs the stages): write_summary."""

    type = "📊 - STATS"
    name = "summary"

    def __init__(self, output: str, settings: dict) -> None:
        super().__init__()
        self.output = output
        self.settings = settings

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        write_summary(Path(self.output), self.settings)
        yield from ()


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
