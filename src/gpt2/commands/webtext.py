"""`gpt2 webtext`: build a WebText-style corpus from Reddit submission dumps (gpt2.webtext.pipeline)."""

from __future__ import annotations

import argparse

STAGES = ("links", "fetch", "extract", "dedup", "filter")  # gpt2.webtext.pipeline.STAGES, without importing it


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpt2 webtext",
        description="Build a WebText-style corpus (Radford et al. 2019, section 2.2): the outbound links of Reddit "
        "submissions with at least 3 karma, fetched politely, their text extracted, de-duplicated and filtered, "
        "written as OUTPUT/corpus/*.jsonl.zst for `gpt2 prepare --input OUTPUT/corpus`.",
    )
    p.add_argument(
        "--submissions",
        nargs="+",
        default=[],
        metavar="FILE",
        help="Reddit submission dumps, one JSON record per line: Pushshift's RS_*.zst (zstd with a 2 GiB window), "
        ".bz2, .xz, .gz or plain.",
    )
    p.add_argument(
        "--skip-bad-inputs",
        action="store_true",
        help="Use what a truncated or corrupt dump holds before the damage, count it in summary.json and go on "
        "(by default such a dump stops the run with one line naming it and the byte reached).",
    )
    p.add_argument(
        "--output",
        required=True,
        metavar="DIR",
        help="Folder for every stage's output, its resumable state, the corpus and summary.json.",
    )
    p.add_argument(
        "--min-karma",
        type=int,
        default=3,
        help="Keep links whose submission scored at least this much (default 3, as the paper).",
    )
    p.add_argument(
        "--before",
        default="2017-12-01",
        metavar="YYYY-MM-DD",
        help="Keep links submitted before this day, UTC (default 2017-12-01, as the paper).",
    )
    p.add_argument(
        "--stages",
        nargs="+",
        choices=STAGES,
        default=list(STAGES),
        metavar="STAGE",
        help=f"Run only these stages ({', '.join(STAGES)}); all of them, in order, by default.",
    )
    p.add_argument(
        "--executor",
        choices=("local", "slurm", "ray"),
        default="local",
        help="Where to run: this machine (default), a Slurm cluster, or a Ray cluster.",
    )
    p.add_argument(
        "--tasks",
        type=int,
        default=1,
        help="Split each stage into this many tasks (keep it the same when resuming a fetch).",
    )
    p.add_argument(
        "--workers", type=int, default=1, help="Run at most this many tasks at once on this machine (local executor)."
    )
    p.add_argument(
        "--allow-private-addresses",
        action="store_true",
        help="Let the fetcher reach private, loopback and link-local addresses (refused by default).",
    )
    p.add_argument("--concurrency", type=int, default=64, help="Requests in flight per task (default 64).")
    p.add_argument(
        "--per-host-concurrency", type=int, default=2, help="Requests in flight to one host at once (default 2)."
    )
    p.add_argument(
        "--per-host-delay",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="Seconds between the starts of two requests to one host (default 1).",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="Seconds to wait for a connection or the next piece of a page (default 20).",
    )
    p.add_argument(
        "--page-deadline",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="Seconds one page may take in all, redirects included (default 60).",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=2,
        help="Further attempts after a timeout, dropped connection, 429 or 5xx (default 2).",
    )
    p.add_argument(
        "--backoff",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="Seconds before the first retry, doubled for each further one (default 2).",
    )
    p.add_argument(
        "--max-crawl-delay",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="robots.txt's Crawl-delay is honoured up to this; hosts asking for more are not fetched (default 60).",
    )
    p.add_argument(
        "--max-bytes",
        type=int,
        default=2_000_000,
        help="Cut each page's body at this many bytes (default 2,000,000); such pages are left out of the corpus.",
    )
    p.add_argument(
        "--keep-truncated",
        action="store_true",
        help="Keep pages cut at --max-bytes in the corpus (by default they are dropped and counted).",
    )
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="Fetch again the pages that failed in an earlier run of this --output (finished pages never are).",
    )
    p.add_argument(
        "--min-chars",
        type=int,
        default=200,
        help="Drop pages whose extracted text is shorter than this many characters (default 200).",
    )
    p.add_argument("--slurm-partition", help="The Slurm partition to submit to (with --executor slurm).")
    p.add_argument("--slurm-time", default="24:00:00", help="The time limit of each Slurm job (default 24:00:00).")
    p.add_argument("--quiet", action="store_true", help="Print nothing but errors and the final line.")
    return p


def run(argv: list[str]) -> None:
    a = parser().parse_args(argv)
    from gpt2.errors import GPT2Error
    from gpt2.io import quiet

    if "links" in a.stages and not a.submissions:
        raise GPT2Error("the links stage needs --submissions FILE...; or run later stages with --stages")
    from gpt2.webtext.fetch import FetchConfig
    from gpt2.webtext.pipeline import WebtextConfig
    from gpt2.webtext.pipeline import run as run_pipeline

    fetch = FetchConfig(
        concurrency=a.concurrency,
        per_host_concurrency=a.per_host_concurrency,
        per_host_delay=a.per_host_delay,
        timeout=a.timeout,
        page_deadline=a.page_deadline,
        max_bytes=a.max_bytes,
        retries=a.retries,
        backoff=a.backoff,
        max_crawl_delay=a.max_crawl_delay,
        allow_private_addresses=a.allow_private_addresses,
        keep_truncated=a.keep_truncated,
        retry_failed=a.retry_failed,
        progress=not a.quiet,
    )
    stages = tuple(s for s in STAGES if s in a.stages)
    cfg = WebtextConfig(a.submissions, a.output, a.min_karma, a.before, stages, a.executor, a.tasks, a.workers,
                        fetch, min_chars=a.min_chars, skip_bad_inputs=a.skip_bad_inputs,
                        slurm_partition=a.slurm_partition, slurm_time=a.slurm_time, progress=not a.quiet)  # fmt: skip

    quiet(a.quiet)
    summary = run_pipeline(cfg)
    if summary is not None:
        final = summary["stages"].get("filter", {"documents": 0, "characters": 0})
        print(f"{a.output}/corpus: {final['documents']:,} documents, {final['characters']:,} characters of text; "
              f"see {a.output}/summary.json")  # fmt: skip
    elif a.executor != "local":
        print(f"submitted the {', '.join(stages)} stages to {a.executor}; logs in {a.output}/logs")
