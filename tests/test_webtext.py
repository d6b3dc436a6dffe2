"""`gpt2 webtext` end to end against real HTTP servers on 127.0.0.1 (tests/webtext_server.py): what survives
each stage, the fetcher's politeness and refusals, resuming after SIGKILL, and --tasks 4 against --tasks 1."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("datatrove")
pytest.importorskip("trafilatura")
pytest.importorskip("lingua")
pytest.importorskip("aiohttp")

from webtext_server import ARTICLES, FAST, NEW, OLD, Web, corpus, state, submission, write_submissions  # noqa: E402

from gpt2.cli import main  # noqa: E402
from gpt2.webtext.links import is_media, is_wikipedia, normalise_url, select  # noqa: E402


# ------------------------------------------------------------------------------------------------ links, pure
def test_normalise_url() -> None:
    assert normalise_url("HTTP://Example.COM:80/a/b?utm_source=x&id=3&fbclid=y#frag") == "http://example.com/a/b?id=3"
    assert normalise_url("https://example.com:443") == "https://example.com/"
    assert normalise_url("https://example.com:8443/x") == "https://example.com:8443/x"
    assert normalise_url("https://user:pw@example.com/%7Euser/") == "https://example.com/~user/"
    assert normalise_url("https://bücher.de/") == "https://xn--bcher-kva.de/"
    assert normalise_url("www.example.com/page") == "http://www.example.com/page"
    for bad in ["ftp://example.com/", "mailto:a@b.c", "/r/python/comments/x", "", "http://", "http://exa mple.com/"]:
        assert normalise_url(bad) is None, bad


def test_wikipedia_and_media() -> None:
    assert is_wikipedia("en.wikipedia.org") and is_wikipedia("de.m.wikipedia.org") and is_wikipedia("WIKIPEDIA.ORG")
    assert not is_wikipedia("wikipedia.org.evil.com") and not is_wikipedia("wikimedia.org")
    assert (
        is_media("https://example.com/cat.JPG") and is_media("https://i.redd.it/abc") and is_media("https://x.y/a.pdf")
    )
    assert not is_media("https://example.com/story.html") and not is_media("https://example.com/v1.2/")


def test_select_applies_the_papers_rules() -> None:
    base = {"url": "https://example.com/a", "score": 3, "created_utc": OLD, "is_self": False, "over_18": False}
    before = 1_512_086_400  # 2017-12-01
    assert select(base, 3, before) == ("https://example.com/a", None)
    assert select({**base, "score": 2}, 3, before) == (None, "low_karma")
    assert select({**base, "created_utc": before}, 3, before) == (None, "too_recent")
    assert select({**base, "is_self": True}, 3, before) == (None, "self_post")
    assert select({**base, "over_18": True}, 3, before) == (None, "over_18")
    assert select({**base, "url": "https://fr.wikipedia.org/wiki/X"}, 3, before) == (None, "wikipedia")
    assert select({**base, "url": "https://i.imgur.com/x.gifv"}, 3, before) == (None, "media")
    assert select({**base, "url": "https://www.reddit.com/r/x"}, 3, before) == (None, "reddit")


# ------------------------------------------------------------------------------------------------ the small web
@pytest.fixture(scope="module")
def webs():
    servers = [Web(), Web(), Web()]
    yield servers
    for s in servers:
        s.close()


def submissions(webs: list[Web]) -> list[dict]:
    a, b, c = (w.base for w in webs)

    sub = submission
    return [
        sub(f"{a}/news/tidal", 5),
        sub(f"{a}/news/tidal?utm_source=reddit#comments", 40),  # the same page: one link, karma 40
        sub(f"{a}/syndicated/tidal", 4),  # a near-duplicate of /news/tidal
        sub(f"{a}/news/clock", 12),
        sub(f"{a}/go/lighthouse", 7),  # two redirects to /news/lighthouse-final
        sub(f"{a}/missing"),
        sub(f"{a}/error"),
        sub(f"{a}/big"),
        sub(f"{a}/private/diary"),  # disallowed by robots.txt
        sub(f"{a}/feed.json"),
        sub(f"{b}/news/sourdough", 3),
        sub(f"{b}/flaky", 9),  # 503, then the chess article
        sub(f"{b}/news/chess-copy", 3),  # the chess article again: an exact duplicate
        sub(f"{b}/binary"),
        sub(f"{b}/hang"),
        sub(f"{b}/fr/marche"),
        sub(f"{c}/news/bees", 30),
        sub(f"{c}/slow", 6),
        sub(f"{c}/news/cafe", 11),
        sub(f"{c}/empty"),
        # dropped by the links stage:
        sub("https://en.wikipedia.org/wiki/Tide", 500),
        sub(f"{c}/photos/cat.jpg", 50),
        sub(f"{c}/news/adult", 50, over_18=True),
        sub(f"{c}/news/self", 50, is_self=True),
        sub(f"{c}/news/low", 2),
        sub(f"{c}/news/recent", 50, NEW),
    ]


def gpt2(*argv: str) -> None:
    try:
        main(["webtext", *argv])
    except SystemExit as e:
        assert not e.code, e.code


@pytest.fixture(scope="module")
def reference(webs, tmp_path_factory) -> Path:
    """One uninterrupted run with one task."""
    tmp = tmp_path_factory.mktemp("webtext")
    dump = write_submissions(tmp / "RS_2017-01.jsonl.zst", submissions(webs))
    gpt2("--submissions", str(dump), "--output", str(tmp / "out"), *FAST)
    return tmp / "out"


def test_links_stage(reference: Path, webs) -> None:
    links = [json.loads(line) for line in (reference / "links" / "links.jsonl").read_text().splitlines()]
    urls = [r["url"] for r in links]
    assert urls == sorted(urls) and len(urls) == 19
    a = webs[0].base
    assert {r["url"]: r["karma"] for r in links}[f"{a}/news/tidal"] == 40  # de-duplicated, highest karma kept
    assert not any("wikipedia" in u or u.endswith((".jpg", "/adult", "/self", "/low", "/recent")) for u in urls)


def test_fetch_stage(reference: Path, webs) -> None:
    a, b, c = (w.base for w in webs)
    rows = state(reference)
    kinds = {u: (r["status"], r["kind"]) for u, r in rows.items()}
    assert kinds[f"{a}/missing"] == ("failed", "http_404")
    assert kinds[f"{a}/error"] == ("failed", "http_500") and rows[f"{a}/error"]["attempts"] == 2  # retried once
    assert kinds[f"{b}/hang"] == ("failed", "timeout") and rows[f"{b}/hang"]["attempts"] == 2
    assert kinds[f"{a}/private/diary"] == ("failed", "robots") and webs[0].hits["/private/diary"] == 0
    assert kinds[f"{a}/feed.json"] == ("failed", "content_type")
    assert kinds[f"{b}/binary"] == ("failed", "binary")
    assert kinds[f"{c}/empty"] == ("failed", "empty")
    assert kinds[f"{b}/flaky"] == ("done", "ok") and rows[f"{b}/flaky"]["attempts"] == 2
    assert kinds[f"{c}/slow"] == ("done", "ok")
    lighthouse = rows[f"{a}/go/lighthouse"]
    assert lighthouse["final_url"] == f"{a}/news/lighthouse-final"
    assert json.loads(lighthouse["redirects"]) == [f"{a}/go/lighthouse-2", f"{a}/news/lighthouse-final"]
    assert rows[f"{a}/big"]["truncated"] == 1 and rows[f"{a}/big"]["status"] == "done"
    assert rows[f"{c}/news/cafe"]["charset"] == "iso8859-1"
    assert all(len(r["content_hash"]) == 64 for r in rows.values() if r["status"] == "done")
    for web in webs:  # robots.txt once per host, and nothing fetched twice that succeeded at once
        assert web.hits["/robots.txt"] == 1
        assert web.hits["/news/tidal"] <= 1


def test_extract_dedup_filter_and_corpus(reference: Path, webs) -> None:
    a, b, c = (w.base for w in webs)
    docs = corpus(reference)
    by_url = {d["url"]: d for d in docs}
    expected = {f"{a}/news/tidal", f"{a}/news/clock", f"{a}/go/lighthouse", f"{b}/news/sourdough", f"{b}/flaky",
                f"{c}/news/bees", f"{c}/slow", f"{c}/news/cafe"}  # fmt: skip
    assert expected <= set(by_url)
    assert f"{a}/syndicated/tidal" not in by_url  # near duplicate
    assert f"{b}/news/chess-copy" not in by_url  # exact duplicate: the copy with more karma (/flaky) stays
    assert f"{b}/fr/marche" not in by_url  # French
    assert by_url[f"{a}/news/tidal"]["karma"] == 40 and by_url[f"{a}/news/tidal"]["created_utc"] == OLD
    tidal = by_url[f"{a}/news/tidal"]["text"]
    assert ARTICLES["tidal"][1][0] in tidal and "Share this article" not in tidal and "Home" not in tidal
    assert "naïve" in by_url[f"{c}/news/cafe"]["text"] and "fèves" in by_url[f"{c}/news/cafe"]["text"]
    assert by_url[f"{c}/news/bees"]["title"] == ARTICLES["bees"][0]

    summary = json.loads((reference / "summary.json").read_text())
    stages = summary["stages"]
    assert stages["links"]["documents"] == 19
    assert stages["fetch"]["documents"] == 11  # 12 pages fetched, /big cut at --max-bytes and left out
    assert stages["extract"]["documents"] >= 10
    assert summary["removed"]["exact_duplicates"] == 1 and summary["removed"]["near_duplicates"] == 1
    assert summary["removed"]["truncated_pages"] == 1 and summary["fetch"]["truncated"] == 1
    assert stages["filter"]["documents"] == len(docs)
    assert stages["filter"]["characters"] == sum(len(d["text"]) for d in docs)
    fetch = summary["fetch"]
    assert fetch["failed"] == {"binary": 1, "content_type": 1, "empty": 1, "http_404": 1, "http_500": 1, "robots": 1,
                               "timeout": 1}  # fmt: skip
    assert fetch["links"] == 19 and fetch["done"] == 12 and fetch["pending"] == 0
    assert fetch["redirected_pages"] == 1 and fetch["redirects_followed"] == 2  # /go/lighthouse's two hops
    assert fetch["retries"] == 3  # /error, /hang and /flaky were each tried twice
    assert summary["top_domains"][0] == ["127.0.0.1", len(docs)]
    subs = summary["submissions"]
    assert subs["read"] == 26 and subs["kept"] == 20 and subs["bad_records"] == {} and subs["bad_inputs"] == []
    assert subs["dropped"] == dict.fromkeys(
        ["low_karma", "media", "over_18", "self_post", "too_recent", "wikipedia"], 1
    )
    assert summary["removed"]["filter"] == {"not_english": 1}
    assert summary["removed"]["boilerplate_lines"] >= 0 and summary["stopped"] is None
    for key in ("per_host_delay", "allow_private_addresses", "max_crawl_delay", "keep_truncated", "max_bytes"):
        assert key in summary["settings"], key
    assert (reference / "length_histogram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_prepare_reads_the_corpus(reference: Path, tmp_path: Path) -> None:
    from gpt2.io import DocumentReader, input_files

    texts = list(DocumentReader(input_files([reference / "corpus"])).texts())
    assert sorted(texts) == sorted(d["text"] for d in corpus(reference))


def test_private_addresses_are_refused_without_the_flag(webs) -> None:
    import asyncio

    from gpt2.webtext.fetch import Crawler, FetchConfig

    async def go() -> list:
        crawler = Crawler(FetchConfig(timeout=2, page_deadline=3))
        try:
            urls = [f"{webs[2].base}/news/bees", "http://10.1.2.3/", "http://169.254.169.254/latest/", "http://[::1]/"]
            return [await crawler.fetch(u) for u in urls]
        finally:
            await crawler.close()

    before = sum(webs[2].hits.values())
    outcomes = asyncio.run(go())
    assert [(o.status, o.kind) for o in outcomes] == [("failed", "private_address")] * 4
    assert sum(webs[2].hits.values()) == before  # not even robots.txt was asked for


def test_tasks_4_gives_the_same_corpus(reference: Path, webs, tmp_path: Path) -> None:
    dump = write_submissions(tmp_path / "RS.jsonl.zst", submissions(webs))
    gpt2("--submissions", str(dump), "--output", str(tmp_path / "out"), "--tasks", "4", *FAST)
    assert len(list((tmp_path / "out" / "fetch_state").glob("*.sqlite"))) == 4
    assert corpus(tmp_path / "out") == corpus(reference)


def test_sigkill_mid_fetch_then_resume_gives_the_same_corpus(reference: Path, webs, tmp_path: Path) -> None:
    dump = write_submissions(tmp_path / "RS.jsonl.zst", submissions(webs))
    out = tmp_path / "out"
    for w in webs:
        w.hits.clear()
    slow = [a if a != "0" or FAST[i - 1] != "--per-host-delay" else "0.3" for i, a in enumerate(FAST)]
    argv = [sys.executable, "-m", "gpt2", "webtext", "--submissions", str(dump), "--output", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([*argv, *slow, "--per-host-concurrency", "1"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # kill once a few pages are finished and others are not
            try:
                rows = state(out) if (out / "fetch_state").is_dir() else {}
            except sqlite3.OperationalError:  # the database is being created
                rows = {}
            finished = [u for u, r in rows.items() if r["status"] != "pending"]
            if len(finished) >= 4:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the fetch never got going")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    before = {u: r for u, r in state(out).items() if r["status"] == "done"}
    pending = [u for u, r in state(out).items() if r["status"] == "pending"]
    assert before and pending, "killed too late to test resuming"
    assert not (out / "corpus").exists()
    hits_before = {w.base: dict(w.hits) for w in webs}

    gpt2("--submissions", str(dump), "--output", str(out), *FAST)  # the same command, in this process
    assert corpus(out) == corpus(reference)
    for url in before:  # finished pages were not fetched again
        web = next(w for w in webs if url.startswith(w.base))
        path = "/" + url.split("/", 3)[3]
        assert web.hits[path] == hits_before[web.base].get(path, 0), url


# ------------------------------------------------------------------------------------------------ executors
def test_cluster_executors_are_constructed(tmp_path: Path) -> None:
    from gpt2.errors import GPT2Error
    from gpt2.webtext.pipeline import WebtextConfig, build

    cfg = WebtextConfig([], str(tmp_path), stages=("extract", "dedup", "filter"), executor="slurm", tasks=8,
                        slurm_partition="cpu")  # fmt: skip
    stages = build(cfg)
    assert [stage for stage, _ in stages] == ["extract", "dedup", "filter"]
    chain = [e for _, executors in stages for e in executors]
    assert type(chain[-1]).__name__ == "SlurmPipelineExecutor" and chain[-1].depends is chain[-2]
    assert chain[-1].pipeline[0].name == "summary"  # a cluster writes the summary as the chain's last job
    assert [e.world_size for e in chain][:2] == [8, 8]
    with pytest.raises(GPT2Error, match="slurm-partition"):
        build(WebtextConfig([], str(tmp_path), stages=("extract",), executor="slurm"))
    try:
        import ray  # noqa: F401
    except ImportError:
        with pytest.raises(GPT2Error, match="ray"):
            build(WebtextConfig([], str(tmp_path), stages=("extract",), executor="ray"))
    else:
        stages = build(WebtextConfig([], str(tmp_path), stages=("extract", "dedup"), executor="ray", tasks=2))
        assert type(stages[-1][1][-1]).__name__ == "RayPipelineExecutor"


def test_errors_are_one_sentence(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["webtext", "--output", str(tmp_path)])
    assert "--submissions" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["webtext", "--submissions", str(tmp_path / "nope.jsonl"), "--output", str(tmp_path)])
    assert "no such submissions file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["webtext", "--output", str(tmp_path), "--stages", "dedup", "filter"])
    assert "run the extract stage first" in capsys.readouterr().err


@pytest.mark.slow
def test_ray_executor_gives_the_same_corpus(reference: Path, webs, tmp_path: Path) -> None:
    """The whole pipeline under datatrove's Ray executor on a fresh local Ray instance with two CPUs. About two
    minutes on a busy 2-core machine (Ray starts a worker and a placement group for every task of a dozen
    pipelines), so ray is not among the test dependencies: this runs where it is installed."""
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install ray); the Ray executor runs only there")
    dump = write_submissions(tmp_path / "RS.jsonl.zst", submissions(webs))
    out = tmp_path / "out"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        gpt2("--submissions", str(dump), "--output", str(out), "--executor", "ray", "--tasks", "2", *FAST)
    finally:
        ray.shutdown()
    assert corpus(out) == corpus(reference)
    stages = json.loads((out / "summary.json").read_text())["stages"]
    assert stages == json.loads((reference / "summary.json").read_text())["stages"]
