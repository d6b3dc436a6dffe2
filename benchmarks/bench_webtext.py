"""How fast `gpt2 webtext` fetches, extracts, de-duplicates and filters: the whole pipeline on a few thousand
generated pages served by local HTTP servers (on 127.0.0.1, in a separate process, so that serving does not share
the crawler's interpreter lock), with one task or several, and dedup alone at scale.

    python benchmarks/bench_webtext.py [--pages 3000] [--hosts 8] [--per-host-concurrency 8] [--tasks 1 2]
                                       [--repeat 2]
    python benchmarks/bench_webtext.py --dedup-docs 100000 [--tasks 1 2]
    python benchmarks/bench_webtext.py --submissions 1000000 [--tasks 1 2]

Pages are generated articles (seeded, 4 to 12 paragraphs of English-like sentences in the usual HTML furniture);
5% are exact copies of another page and 5% near copies (two words changed). Each --tasks value runs the whole
pipeline with that many tasks and as many workers (local executor); with --repeat the values alternate
(1 2 1 2 ...) so that other load on the machine falls on each alike, and the median run is reported. Prints wall
time, pages/s and CPU time per page for each stage (CPU: this process and all its descendants, the datatrove
workers included, not the HTTP servers, whose CPU is shown apart), and each stage's speed-up over the first
--tasks value. Politeness is off (no per-host delay), as for a crawl of many hosts where the per-host delay
overlaps other hosts' requests.

--dedup-docs N runs only the dedup stage (exact, then MinHash) on N generated documents, written where the
extract stage would leave them, of which a known share are planted exact and near copies of others; it reports
wall time, documents/s, the peak resident memory of the process tree (summed over its processes, sampled every
0.1 s), and checks that exactly the planted copies were removed: one survivor per original and its copies.

--submissions N runs only the links stage on a Pushshift-style dump of N generated submissions (Pushshift's
fields, in zstd with a 2 GiB window as `zstd --long=31` writes them, split in as many files as the largest --tasks
value), a third of them kept (karma, date, self-posts, NSFW, Wikipedia, media and duplicate links planted), and
reports wall and CPU time per million submissions and the peak resident memory of the process tree.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

VOCABULARY = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have an they "
    "you were her she there been one all we their has would when if so no more some time people year could them "
    "other than then now only its over also after into two first new may any these see way most work because city "
    "water river market council school village engineer garden railway harbour island winter summer museum "
    "history research family country morning evening letter record station bridge machine weather journey"
)
WORDS = VOCABULARY.split()


def article(rng: random.Random, i: int) -> tuple[str, list[str]]:
    def sentence() -> str:
        words = [rng.choice(WORDS) for _ in range(rng.randint(8, 22))]
        return " ".join(words).capitalize() + "."

    paragraphs = [" ".join(sentence() for _ in range(rng.randint(3, 6))) for _ in range(rng.randint(4, 12))]
    return f"Article {i}: {' '.join(rng.choice(WORDS) for _ in range(5))}", paragraphs


def html_page(title: str, paragraphs: list[str]) -> bytes:
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title></head><body>"
        f"<nav><a href='/'>Home</a> <a href='/about'>About</a></nav><article><h1>{title}</h1>{body}</article>"
        f"<footer><p>All rights reserved.</p></footer></body></html>"
    ).encode()


def make_pages(n: int, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    pages: list[bytes] = []
    originals: list[tuple[str, list[str]]] = []
    for i in range(n):
        roll = rng.random()
        if originals and roll < 0.05:
            pages.append(html_page(*rng.choice(originals)))  # exact copy
        elif originals and roll < 0.10:
            title, paragraphs = rng.choice(originals)
            edited = [p.replace(" the ", " a ", 1) for p in paragraphs[:1]] + paragraphs[1:]
            pages.append(html_page(title, edited[:-1] + [edited[-1].replace(" and ", " or ", 1)]))
        else:
            title, paragraphs = article(rng, i)
            originals.append((title, paragraphs))
            pages.append(html_page(title, paragraphs))
    return pages


def serve(n_pages: int, hosts: int, ports: multiprocessing.Queue) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    pages = make_pages(n_pages)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/robots.txt":
                body, ctype = b"User-agent: *\nAllow: /\n", "text/plain"
            else:
                body, ctype = pages[int(self.path.rsplit("/", 1)[1])], "text/html; charset=utf-8"
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Server(ThreadingHTTPServer):
        request_queue_size = 256  # the default 5 resets connections when the crawler opens many at once

        def handle_error(self, request: object, client_address: object) -> None:
            pass

    # One loopback address per host (all of 127/8 reaches this machine): fetch tasks split links by host name,
    # so servers told apart only by port would all land in one task.
    servers = [Server((f"127.0.0.{i + 1}", 0), Handler) for i in range(hosts)]
    for s in servers:
        s.daemon_threads = True
        Thread(target=s.serve_forever, daemon=True).start()
        ports.put(s.server_address)
    time.sleep(3600)


def _stat(pid: int | str) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:  # the process has ended
        return None


def _tree(root: int, exclude: set[int]) -> list[int]:
    """`root` and its descendants, less `exclude` and theirs (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(entry)):
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid not in exclude:
            found.append(pid)
            todo += children.get(pid, [])
    return found


def tree_cpu_seconds(exclude: set[int]) -> float:
    """CPU seconds of this process tree: each live process's own time and that of the children it has reaped
    (datatrove's workers come from a forkserver, which reaps them, so their time lands in its cutime/cstime)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in _tree(os.getpid(), exclude):
        if fields := _stat(pid):
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / tick


def process_cpu_seconds(pid: int) -> float:
    fields = _stat(pid)
    return sum(int(x) for x in fields[11:13]) / os.sysconf("SC_CLK_TCK") if fields else 0.0


class PeakRSS:
    """Samples the summed resident memory of this process tree every `interval` seconds, in a thread."""

    def __init__(self, exclude: set[int], interval: float = 0.1) -> None:
        self.exclude, self.interval, self.peak = exclude, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.is_set():
            rss = 0
            for pid in _tree(os.getpid(), self.exclude):
                try:
                    with open(f"/proc/{pid}/statm") as f:
                        rss += int(f.read().split()[1]) * page
                except OSError:
                    pass
            self.peak = max(self.peak, rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_pipeline(cfg: object, exclude: set[int], server_pid: int | None = None) -> dict[str, dict[str, float]]:
    """Runs each datatrove pipeline of the chain; wall and CPU seconds (and the servers' CPU) by pipeline name."""
    from gpt2.webtext import pipeline

    measured: dict[str, dict[str, float]] = {}
    for _, executors in pipeline.build(cfg):
        for executor in executors:
            name = Path(executor.logging_dir.path).name
            server_start = process_cpu_seconds(server_pid) if server_pid else 0.0
            start, cpu_start = time.perf_counter(), tree_cpu_seconds(exclude)
            executor.run()
            server = process_cpu_seconds(server_pid) - server_start if server_pid else 0.0
            measured[name] = {"wall": time.perf_counter() - start, "cpu": tree_cpu_seconds(exclude) - cpu_start,
                              "server": server}  # fmt: skip
    if "filter" in cfg.stages:
        pipeline.write_summary(Path(cfg.output), pipeline.settings(cfg))
    return measured


def stage_total(measured: dict[str, dict[str, float]], prefix: str, key: str) -> float:
    return sum(m[key] for name, m in measured.items() if name.startswith(prefix))


def median_run(runs: list[dict[str, dict[str, float]]], prefix: str) -> dict[str, dict[str, float]]:
    """The run whose wall time for the stage is the median (the lower one of an even count)."""
    return sorted(runs, key=lambda m: stage_total(m, prefix, "wall"))[(len(runs) - 1) // 2]


def pages_benchmark(args: argparse.Namespace) -> None:
    from gpt2.webtext import pipeline
    from gpt2.webtext.fetch import FetchConfig

    ports: multiprocessing.Queue = multiprocessing.Queue()
    server = multiprocessing.Process(target=serve, args=(args.pages, args.hosts, ports), daemon=True)
    server.start()
    bases = ["http://{}:{}".format(*ports.get(timeout=60)) for _ in range(args.hosts)]
    exclude = {server.pid}
    tmp = Path(tempfile.mkdtemp(prefix="bench-webtext-"))
    runs: dict[int, list[dict[str, dict[str, float]]]] = {n: [] for n in args.tasks}
    summaries: dict[int, dict] = {}
    try:
        dump = tmp / "RS.jsonl"
        with open(dump, "w") as f:
            for i in range(args.pages):
                url = f"{bases[i % args.hosts]}/p/{i}"
                f.write(json.dumps({"url": url, "score": 5, "created_utc": 1_400_000_000, "subreddit": "b",
                                    "over_18": False, "is_self": False, "permalink": f"/r/b/{i}"}) + "\n")  # fmt: skip
        fetch = FetchConfig(concurrency=64, per_host_concurrency=args.per_host_concurrency, per_host_delay=0,
                            allow_private_addresses=True, progress=False)  # fmt: skip
        for repeat in range(args.repeat):
            for n in args.tasks:
                out = tmp / f"out-{n}-{repeat}"
                cfg = pipeline.WebtextConfig([str(dump)], str(out), tasks=n, workers=n, fetch=fetch, progress=False)
                runs[n].append(run_pipeline(cfg, exclude, server.pid))
                summaries[n] = json.loads((out / "summary.json").read_text())
                shutil.rmtree(out, ignore_errors=True)
    finally:
        server.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    stages = summaries[args.tasks[0]]["stages"]
    rows = [
        ("fetch", stages["links"]["documents"], "fetch"),
        ("extract (main text)", stages["fetch"]["documents"], "extract"),
        ("dedup (exact + MinHash)", stages["extract"]["documents"], "dedup"),
        ("filter (lingua + cleaning) and write", stages["near_dedup"]["documents"], "filter"),
    ]
    load = os.getloadavg()
    print(f"{args.pages:,} generated pages on {args.hosts} local hosts, {sys.platform}, {os.cpu_count()} CPUs, "
          f"load average after {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; median of {args.repeat} run(s)")  # fmt: skip
    print(f"{'stage':<38} {'tasks':>5} {'pages':>7} {'wall s':>8} {'pages/s':>9} {'CPU s':>8} {'CPU ms/page':>12} "
          f"{'vs first':>9}")  # fmt: skip
    for name, n_pages, key in rows:
        base = None
        for n in args.tasks:
            m = median_run(runs[n], key)
            wall, used = stage_total(m, key, "wall"), stage_total(m, key, "cpu")
            base = base or wall
            print(f"{name:<38} {n:>5} {n_pages:>7,} {wall:>8.2f} {n_pages / wall:>9.1f} {used:>8.2f} "
                  f"{1000 * used / n_pages:>12.2f} {base / wall:>8.2f}x")  # fmt: skip
    for n in args.tasks:
        m = median_run(runs[n], "fetch")
        server_cpu = stage_total(m, "fetch", "server")
        print(f"HTTP servers during fetch, {n} task(s): {1000 * server_cpu / args.pages:.2f} CPU ms/page")
    for n in args.tasks:
        removed = summaries[n]["removed"]
        kinds = ("exact_duplicates", "near_duplicates")
        print(f"removed with {n} task(s):", json.dumps({k: removed[k] for k in kinds}))
        print(f"datatrove pipelines with {n} task(s), all runs (s):",
              "; ".join(", ".join(f"{k} {v['wall']:.2f}" for k, v in m.items()) for m in runs[n]))  # fmt: skip


# ------------------------------------------------------------------------------------------------ dedup at scale
def write_dedup_corpus(folder: Path, n_docs: int, files: int, exact_share: float, near_share: float,
                       seed: int = 0) -> tuple[int, int]:  # fmt: skip
    """N documents as the extract stage leaves them, `files` gzipped JSON Lines files; a share are exact copies
    (the same text, another URL, some with other line breaks and capitals, which exact dedup normalises away)
    and near copies (two words changed and a sentence added) of earlier originals. Each document's metadata names
    its original (`cluster`). Returns (exact copies, near copies) planted."""
    import gzip

    rng = random.Random(seed)
    folder.mkdir(parents=True)
    outs = [gzip.open(folder / f"{i:05d}.jsonl.gz", "wt", compresslevel=1) for i in range(files)]  # noqa: SIM115
    originals: list[tuple[int, list[str]]] = []
    exact = near = 0

    def sentence() -> str:
        return " ".join(rng.choices(WORDS, k=rng.randint(8, 22))).capitalize() + "."

    for i in range(n_docs):
        roll = rng.random()
        if originals and roll < exact_share:
            cluster, paragraphs = rng.choice(originals)
            text = "\n\n".join(paragraphs) if rng.random() < 0.5 else "\n".join(paragraphs).upper()
            exact += 1
        elif originals and roll < exact_share + near_share:
            cluster, paragraphs = rng.choice(originals)
            edited = list(paragraphs)
            for _ in range(2):
                k = rng.randrange(len(edited))
                words = edited[k].split(" ")
                words[rng.randrange(len(words))] = rng.choice(WORDS)
                edited[k] = " ".join(words)
            text = "\n\n".join(edited) + " " + sentence()
            near += 1
        else:
            paragraphs = [" ".join(sentence() for _ in range(rng.randint(3, 6))) for _ in range(rng.randint(4, 12))]
            cluster, text = i, "\n\n".join(paragraphs)
            originals.append((i, paragraphs))
        record = {"text": text, "id": f"doc-{i}", "metadata": {"url": f"https://site{i % 997}.example/{i}",
                  "karma": 3 + i % 50, "cluster": cluster}}  # fmt: skip
        outs[i % files].write(json.dumps(record) + "\n")
    for f in outs:
        f.close()
    return exact, near


def dedup_benchmark(args: argparse.Namespace) -> None:
    from gpt2.io import open_binary
    from gpt2.webtext import pipeline

    tmp = Path(tempfile.mkdtemp(prefix="bench-webtext-dedup-"))
    try:
        start = time.perf_counter()
        source = tmp / "extracted"
        exact, near = write_dedup_corpus(source, args.dedup_docs, max(8, max(args.tasks)), 0.05, 0.05)
        print(f"{args.dedup_docs:,} documents ({exact:,} exact and {near:,} near copies planted) written in "
              f"{time.perf_counter() - start:.0f} s, {sum(f.stat().st_size for f in source.iterdir()) / 1e6:.0f} MB "
              f"gzipped")  # fmt: skip
        print(f"{'tasks':>5} {'wall s':>8} {'docs/s':>8} {'CPU s':>8} {'CPU ms/doc':>11} {'peak RSS MB':>12} "
              f"{'exact rm':>9} {'near rm':>8} {'missed':>7} {'lost':>5}  load")  # fmt: skip
        base = None
        for n in args.tasks:
            out = tmp / f"out-{n}"
            out.mkdir()
            shutil.copytree(source, out / "extracted")
            cfg = pipeline.WebtextConfig([], str(out), stages=("dedup",), tasks=n, workers=n, progress=False)
            with PeakRSS(exclude=set()) as peak:
                measured = run_pipeline(cfg, set())
            wall, used = stage_total(measured, "dedup", "wall"), stage_total(measured, "dedup", "cpu")
            base = base or wall

            def read(folder: Path) -> list[dict]:
                records = []
                for path in sorted(folder.glob("*.jsonl*")):
                    with open_binary(path) as f:
                        records += [json.loads(line) for line in f]
                return records

            after_exact = len(read(out / "dedup" / "exact"))
            survivors = read(out / "deduped")
            per_cluster: dict[int, int] = {}
            for r in survivors:
                per_cluster[r["metadata"]["cluster"]] = per_cluster.get(r["metadata"]["cluster"], 0) + 1
            originals = args.dedup_docs - exact - near
            missed = sum(c - 1 for c in per_cluster.values())  # copies that survived beside their original
            lost = originals - len(per_cluster)  # originals none of whose copies survived
            load = " ".join(f"{x:.2f}" for x in os.getloadavg())
            print(f"{n:>5} {wall:>8.1f} {args.dedup_docs / wall:>8.0f} {used:>8.1f} "
                  f"{1000 * used / args.dedup_docs:>11.2f} {peak.peak / 2**20:>12.0f} "
                  f"{args.dedup_docs - after_exact:>9,} {after_exact - len(survivors):>8,} {missed:>7,} {lost:>5,}  "
                  f"{load}   ({base / wall:.2f}x the first)")  # fmt: skip
            print("      pipelines (s):", ", ".join(f"{k} {v['wall']:.1f}" for k, v in measured.items()))
            shutil.rmtree(out, ignore_errors=True)
        print(f"planted: {exact:,} exact copies, {near:,} near copies; missed: copies that survived beside their "
              f"original, lost: originals removed with all their copies (both should be 0)")  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_dumps(folder: Path, n: int, files: int) -> list[Path]:
    """N generated Reddit submissions in `files` long-window zstd dumps; returns their paths."""
    import zstandard

    rng = random.Random(0)
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=31, enable_ldm=True, write_checksum=True)
    paths = [folder / f"RS_2017-{i + 1:02d}.zst" for i in range(files)]
    writers = [zstandard.ZstdCompressor(compression_params=params).stream_writer(open(p, "wb")) for p in paths]  # noqa: SIM115
    hosts = [f"site{i}.example" for i in range(5000)] + ["en.wikipedia.org", "i.imgur.com"]
    for i in range(n):
        host = rng.choice(hosts)
        record = {"id": f"{i:x}", "url": f"https://{host}/story/{rng.randrange(n)}?utm_source=reddit",
                  "score": rng.choice([0, 1, 2, 3, 5, 40, 1200]), "created_utc": 1_480_000_000 + rng.randrange(10**8),
                  "subreddit": rng.choice(["news", "science", "pics"]), "over_18": rng.random() < 0.03,
                  "is_self": rng.random() < 0.2, "permalink": f"/r/x/comments/{i:x}/", "title": "A title",
                  "author": "someone", "num_comments": rng.randrange(500), "domain": host}  # fmt: skip
        writers[i % files].write((json.dumps(record) + "\n").encode())
    for w in writers:
        w.close()
    return paths


def links_benchmark(args: argparse.Namespace) -> None:
    from gpt2.webtext import pipeline

    tmp = Path(tempfile.mkdtemp(prefix="bench-webtext-links-"))
    try:
        dumps = write_dumps(tmp, args.submissions, max(args.tasks))
        size = sum(p.stat().st_size for p in dumps)
        print(f"{args.submissions:,} submissions in {len(dumps)} long-window zstd dumps, {size / 1e6:.0f} MB")
        print(f"{'tasks':>5} {'wall s':>8} {'s per 1M':>9} {'CPU s':>8} {'peak RSS MB':>12} {'links':>9}  load")
        for n in args.tasks:
            out = tmp / f"out-{n}"
            cfg = pipeline.WebtextConfig([str(p) for p in dumps], str(out), stages=("links",), tasks=n, workers=n,
                                         progress=False)  # fmt: skip
            with PeakRSS(exclude=set()) as peak:
                measured = run_pipeline(cfg, set())
            wall, used = stage_total(measured, "links", "wall"), stage_total(measured, "links", "cpu")
            with open(out / "links" / "links.jsonl", "rb") as f:
                kept = sum(1 for _ in f)
            load = " ".join(f"{x:.2f}" for x in os.getloadavg())
            print(f"{n:>5} {wall:>8.1f} {wall * 1e6 / args.submissions:>9.1f} {used:>8.1f} "
                  f"{peak.peak / 2**20:>12.0f} {kept:>9,}  {load}")  # fmt: skip
            shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pages", type=int, default=3000, help="pages to generate and serve (default 3000)")
    p.add_argument("--hosts", type=int, default=8, help="local servers, each its own host:port (default 8)")
    p.add_argument("--per-host-concurrency", type=int, default=8, help="requests in flight per host (default 8)")
    p.add_argument(
        "--tasks",
        type=int,
        nargs="+",
        default=[1],
        help="run with each of these task counts (as many workers); speed-ups are over the first",
    )
    p.add_argument("--repeat", type=int, default=1, help="runs of each --tasks value, interleaved (default 1)")
    p.add_argument("--dedup-docs", type=int, default=0, metavar="N",
                   help="instead, dedup alone on N generated documents with planted copies")  # fmt: skip
    p.add_argument("--submissions", type=int, default=0, metavar="N",
                   help="instead, the links stage alone on N generated submissions")  # fmt: skip
    args = p.parse_args()
    if not sys.platform.startswith("linux"):
        sys.exit("this benchmark reads process CPU and memory from Linux's /proc")
    if args.submissions:
        links_benchmark(args)
    elif args.dedup_docs:
        dedup_benchmark(args)
    else:
        pages_benchmark(args)


if __name__ == "__main__":
    main()
