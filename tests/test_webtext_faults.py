"""`gpt2 webtext` on what real users hit first: Pushshift's long-window dumps, truncated and corrupt dumps, bad
records, empty dumps, outputs it cannot write, links it must refuse, giant pages, hosts that ask to be crawled
slowly, redirect loops, failed pages tried again, a killed run's processes, and a quiet terminal. Each bad input
ends in one line (never a traceback) and loses nothing without saying so."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("datatrove")
pytest.importorskip("trafilatura")
pytest.importorskip("lingua")
pytest.importorskip("aiohttp")

from webtext_server import (  # noqa: E402
    FAST,
    OLD,
    OLD_TABLE_TEXT,
    Web,
    corpus,
    state,
    submission,
    write_submissions,
)

from gpt2.cli import main  # noqa: E402
from gpt2.webtext.fetch import Crawler, FetchConfig  # noqa: E402
from gpt2.webtext.links import host_shard  # noqa: E402
from gpt2.webtext.summary import submissions  # noqa: E402

LINKS_ONLY = ["--stages", "links", "--quiet"]


@pytest.fixture(scope="module")
def web():
    server = Web()
    yield server
    server.close()


def webtext(capsys, *argv: str) -> tuple[int, str, str]:
    """`gpt2 webtext ARGV` in this process: (exit code, stdout, stderr)."""
    try:
        main(["webtext", *argv])
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def links(out: Path) -> list[str]:
    return [json.loads(line)["url"] for line in (out / "links" / "links.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------------ dumps
def test_bad_records_are_counted_by_reason_and_never_kept(tmp_path, capsys) -> None:
    good = [submission(f"https://example.com/{i}") for i in range(3)]
    bad = [
        submission("https://example.com/null-date", 50, None),  # null once passed --before as 1970
        {k: v for k, v in submission("https://example.com/no-date", 50).items() if k != "created_utc"},
        submission("https://example.com/text-date", 50, "yesterday"),
        submission("https://example.com/null-score", None),
        submission(None),
    ]
    dump = tmp_path / "RS_2017-11.zst"  # Pushshift's names: no .jsonl
    write_submissions(dump, [*good, *bad])
    with open(dump, "ab") as f:  # lines that are not records, in a frame of their own
        import zstandard

        f.write(zstandard.ZstdCompressor().compress(b"not json\n[1, 2]\n"))
    code, _, _ = webtext(capsys, "--submissions", str(dump), "--output", str(tmp_path / "out"), *LINKS_ONLY)
    assert code == 0
    assert links(tmp_path / "out") == sorted(s["url"] for s in good)
    counts = submissions(tmp_path / "out" / "logs")
    assert counts["read"] == 10 and counts["kept"] == 3
    assert counts["bad_records"] == {"created_utc_missing": 1, "created_utc_not_a_number": 1, "created_utc_null": 1,
                                     "not_an_object": 1, "not_json": 1, "score_null": 1, "url_null": 1}  # fmt: skip


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_a_damaged_dump_stops_with_one_line_or_is_counted_when_skipped(tmp_path, capsys, damage: str) -> None:
    records = [submission(f"https://example.com/{i}") for i in range(20_000)]
    dump = write_submissions(tmp_path / "RS.zst", records)
    raw = dump.read_bytes()
    if damage == "truncated":
        raw = raw[: int(len(raw) * 0.6)]
    else:
        raw = raw[: len(raw) // 2] + bytes(16) + raw[len(raw) // 2 + 16 :]
    dump.write_bytes(raw)
    out = tmp_path / "out"
    code, _, err = webtext(capsys, "--submissions", str(dump), "--output", str(out), *LINKS_ONLY)
    line = one_error_line(err)
    assert code == 1 and str(dump) in line and "--skip-bad-inputs" in line
    assert ("the file ends at byte" if damage == "truncated" else "corrupt zstd data near byte") in line

    with pytest.warns(UserWarning, match=r"the records before that point were used \(--skip-bad-inputs\)") as w:
        code, _, _ = webtext(capsys, "--submissions", str(dump), "--output", str(out), "--skip-bad-inputs", *LINKS_ONLY)
    assert code == 0 and str(dump) in str(w[0].message)
    kept = links(out)
    assert 0 < len(kept) < 20_000
    [bad] = submissions(out / "logs")["bad_inputs"]
    assert bad["file"] == str(dump) and 0 < bad["offset"] <= bad["size"] == len(raw)


def test_an_empty_dump_says_so_and_a_rerun_with_a_good_one_works(tmp_path, capsys, web) -> None:
    dump, out = tmp_path / "RS.zst", tmp_path / "out"
    dump.write_bytes(b"")
    code, _, err = webtext(capsys, "--submissions", str(dump), "--output", str(out), *FAST)
    assert code == 1 and "no submissions in" in one_error_line(err)
    assert json.loads((out / "summary.json").read_text())["stopped"].startswith("no submissions")
    write_submissions(dump, [submission(f"{web.base}/news/bees"), submission(f"{web.base}/news/clock")])
    code, stdout, _ = webtext(capsys, "--submissions", str(dump), "--output", str(out), *FAST)
    assert code == 0 and "2 documents" in stdout
    assert [d["url"] for d in corpus(out)] == [f"{web.base}/news/bees", f"{web.base}/news/clock"]


def test_outputs_it_cannot_write_are_one_line(tmp_path, capsys) -> None:
    dump = write_submissions(tmp_path / "RS.zst", [submission("https://example.com/")])
    (tmp_path / "file").write_text("x")
    code, _, err = webtext(capsys, "--submissions", str(dump), "--output", str(tmp_path / "file"), *LINKS_ONLY)
    assert code == 1 and "is a file; give a folder" in one_error_line(err)
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(readonly)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here ({done.stderr.decode().strip()})")
    try:
        for out in (readonly, readonly / "sub"):
            code, _, err = webtext(capsys, "--submissions", str(dump), "--output", str(out), *LINKS_ONLY)
            assert code == 1 and "cannot write there (Read-only file system)" in one_error_line(err)
    finally:
        subprocess.run(["umount", "-l", str(readonly)], check=False)


# ------------------------------------------------------------------------------------------------ fetching
def test_private_links_are_refused_before_any_wait_and_allowed_on_a_rerun(tmp_path, capsys, web) -> None:
    paths = [f"/news/{name}" for name in ("bees", "clock", "sourdough")] + [f"/missing?{i}" for i in range(27)]
    dump = write_submissions(tmp_path / "RS.zst", [submission(web.base + p) for p in paths])
    out = tmp_path / "out"
    before = sum(web.hits.values())
    slow = ["--per-host-delay", "5", "--quiet"]  # 30 links on one host: 150 s if each waited its turn
    started = time.monotonic()
    code, _, err = webtext(capsys, "--submissions", str(dump), "--output", str(out), *slow)
    assert time.monotonic() - started < 60
    assert code == 1 and "all 30 links point at private addresses; pass --allow-private-addresses" in one_error_line(
        err
    )
    assert sum(web.hits.values()) == before  # not a single request, robots.txt included
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fetch"]["failed"] == {"private_address": 30} and summary["settings"]["per_host_delay"] == 5

    code, stdout, _ = webtext(capsys, "--submissions", str(dump), "--output", str(out), *FAST)
    assert code == 0 and "3 documents" in stdout  # the same output folder: the refused links are fetched now
    assert {d["url"] for d in corpus(out)} == {web.base + p for p in paths[:3]}


def test_giant_pages_are_dropped_and_counted_or_kept_without_fetching_again(tmp_path, capsys, web) -> None:
    dump = write_submissions(tmp_path / "RS.zst", [submission(f"{web.base}/huge"), submission(f"{web.base}/news/bees")])
    out = tmp_path / "out"
    argv = ["--submissions", str(dump), "--output", str(out), *FAST, "--max-bytes", "2000000", "--page-deadline", "20"]
    web.hits.clear()
    assert webtext(capsys, *argv)[0] == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["removed"]["truncated_pages"] == 1 and [d["url"] for d in corpus(out)] == [f"{web.base}/news/bees"]
    assert webtext(capsys, *argv, "--keep-truncated")[0] == 0
    docs = corpus(out)
    assert [d["url"] for d in docs] == [f"{web.base}/huge", f"{web.base}/news/bees"]
    assert len(docs[0]["text"]) < 2_000_000 and web.hits["/huge"] == 1  # from the fetch state, not fetched again


def test_failed_pages_are_tried_again_only_when_asked(tmp_path, capsys, web) -> None:
    dump = write_submissions(
        tmp_path / "RS.zst", [submission(f"{web.base}/later"), submission(f"{web.base}/news/bees")]
    )
    out = tmp_path / "out"
    argv = ["--submissions", str(dump), "--output", str(out), *FAST]
    web.fixed = False
    web.hits.clear()
    try:
        assert webtext(capsys, *argv)[0] == 0 and len(corpus(out)) == 1
        web.fixed = True
        assert webtext(capsys, *argv)[0] == 0 and len(corpus(out)) == 1 and web.hits["/later"] == 1
        assert webtext(capsys, *argv, "--retry-failed")[0] == 0 and web.hits["/later"] == 2
        docs = {d["url"]: d for d in corpus(out)}
        assert set(docs) == {f"{web.base}/later", f"{web.base}/news/bees"}
        assert docs[f"{web.base}/later"]["final_url"] == f"{web.base}/later"
    finally:
        web.fixed = False


def crawl(cfg: FetchConfig, urls: list[str]) -> list:
    async def go() -> list:
        crawler = Crawler(cfg)
        try:
            return await asyncio.gather(*(crawler.fetch(u) for u in urls))
        finally:
            await crawler.close()

    return asyncio.run(go())


def gaps(web: Web, prefix: str) -> list[float]:
    times = [t for path, t in web.starts if path.startswith(prefix) or path == "/robots.txt"]
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def test_robots_crawl_delay_is_honoured_and_a_longer_one_refused() -> None:
    polite, greedy = Web(robots="User-agent: *\nCrawl-delay: 0.5\n"), Web(robots="User-agent: *\nCrawl-delay: 120\n")
    try:
        cfg = FetchConfig(per_host_delay=0, per_host_concurrency=4, allow_private_addresses=True, progress=False)
        outcomes = crawl(cfg, [f"{polite.base}/news/{n}" for n in ("bees", "clock", "sourdough", "tidal")])
        assert [o.kind for o in outcomes] == ["ok"] * 4
        assert len(gaps(polite, "/news/")) == 4 and min(gaps(polite, "/news/")) >= 0.45  # robots.txt, then 4 pages
        outcomes = crawl(cfg, [f"{greedy.base}/news/bees"])
        assert outcomes[0].kind == "crawl_delay" and set(greedy.hits) == {"/robots.txt"}
    finally:
        polite.close()
        greedy.close()


def test_every_redirect_hop_waits_for_the_hosts_turn(web) -> None:
    web.starts.clear()
    cfg = FetchConfig(per_host_delay=0.3, max_redirects=5, allow_private_addresses=True, progress=False)
    [outcome] = crawl(cfg, [f"{web.base}/loop/a"])
    assert outcome.kind == "too_many_redirects" and len(outcome.redirects) == 6
    hops = [t for path, t in web.starts if path.startswith("/loop/")]
    assert len(hops) == 6 and min(b - a for a, b in zip(hops, hops[1:], strict=False)) >= 0.27


def test_hosts_are_split_among_tasks_by_host_and_port() -> None:
    shards = {host_shard(f"http://127.0.0.1:{port}/page", 4) for port in range(8000, 8016)}
    assert len(shards) > 1
    assert host_shard("http://example.com/a", 4) == host_shard("https://example.com/b", 4)  # same host, one task


# ------------------------------------------------------------------------------------------------ whole runs
def spawn(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "gpt2", "webtext", *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip


def session_processes(sid: int) -> list[int]:
    """The live processes of a session (a killed run's workers keep its session id)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                pids.append(int(entry.name))
    return pids


def wait_until(condition, seconds: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {seconds:g} s for {what}")
        time.sleep(0.05)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_leaves_no_process_behind_and_the_rerun_finishes(tmp_path, web) -> None:
    paths = ["/news/tidal", "/news/clock", "/news/sourdough", "/news/bees", "/news/chess-copy", "/old/railway"]
    other = Web()
    try:
        dump = write_submissions(
            tmp_path / "RS.zst", [submission(b + p) for b in (web.base, other.base) for p in paths]
        )
        out = tmp_path / "out"
        slow = [a if a != "0" or FAST[i - 1] != "--per-host-delay" else "0.4" for i, a in enumerate(FAST)]
        argv = ["--submissions", str(dump), "--output", str(out), *slow, "--tasks", "2", "--workers", "2"]
        for moment, ready in [
            ("mid-fetch", lambda: any(r["status"] == "done" for r in state(out).values())),
            ("mid-extract", lambda: any((out / "logs" / "extract" / "logs").glob("task_*.log"))),
        ]:
            proc = spawn(argv)
            try:
                started = lambda ready=ready, proc=proc: _safe(ready) or proc.poll() is not None  # noqa: E731
                wait_until(started, 120, f"the run to get {moment}")
                assert proc.poll() is None, f"the run ended before {moment}: {proc.communicate()}"
                os.killpg(proc.pid, 0)  # the session exists
                proc.send_signal(signal.SIGKILL)
                proc.wait(30)
                gone = lambda sid=proc.pid: not session_processes(sid)  # noqa: E731
                wait_until(gone, 30, f"the processes of a run killed {moment}")
            finally:
                if session_processes(proc.pid):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
        for folder in (out, tmp_path / "uninterrupted"):  # the killed run finished, and a run never killed
            proc = spawn([*argv[:3], str(folder), *argv[4:]])
            _, stderr = proc.communicate(timeout=600)
            assert proc.returncode == 0 and stderr == "", stderr
        assert corpus(out) == corpus(tmp_path / "uninterrupted") and len(corpus(out)) >= 5
    finally:
        other.close()


def _safe(condition) -> bool:  # noqa: ANN001
    try:
        return bool(condition())
    except Exception:  # a database or folder half made by the run
        return False


def test_the_terminal_gets_stage_lines_or_nothing_and_old_pages_come_out_clean(tmp_path, web) -> None:
    dump = write_submissions(tmp_path / "RS.zst", [submission(f"{web.base}/old/railway"),
                                                   submission(f"{web.base}/news/clock")])  # fmt: skip
    loud = [a for a in FAST if a != "--quiet"]
    proc = spawn(["--submissions", str(dump), "--output", str(tmp_path / "loud"), *loud, "--tasks", "2",
                  "--workers", "2"])  # fmt: skip
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    stages = [line for line in stderr.splitlines() if line.startswith("[")]
    assert [s.split()[0] for s in stages if s.split()[-1] == "..."] == ["[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"]
    assert "INFO" not in stderr and "datatrove" not in stderr and "Traceback" not in stderr
    assert stdout.startswith(f"{tmp_path / 'loud'}/corpus: 2 documents")
    proc = spawn(["--submissions", str(dump), "--output", str(tmp_path / "quiet"), *FAST])
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0 and stderr == "" and len(stdout.splitlines()) == 1
    old = next(d for d in corpus(tmp_path / "quiet") if d["url"].endswith("/old/railway"))
    lines = [line.strip() for line in old["text"].splitlines() if line.strip()]
    for paragraph in OLD_TABLE_TEXT:  # each paragraph its own line, none glued to the heading
        assert paragraph in lines
    for furniture in ("Old Pages", "Guestbook", "visitor number", "Netscape"):
        assert furniture not in old["text"]
    assert old["title"] == "Tom's Model Railway Pages" and old["created_utc"] == OLD
