"""How fast `gpt2 webtext` fetches, extracts, de-duplicates and filters: the whole pipeline, one task, on a few
thousand generated pages served by local HTTP servers (on 127.0.0.1, in a separate process, so that serving
does not share this process's interpreter lock with the crawler).

    python benchmarks/bench_webtext.py [--pages 3000] [--hosts 8] [--per-host-concurrency 8]

Pages are generated articles (seeded, 4 to 12 paragraphs of English-like sentences in the usual HTML furniture);
5% are exact copies of another page and 5% near copies (two words changed). Prints pages/s per stage, with the
time of each datatrove pipeline, and what dedup removed. Politeness is off (no per-host delay), as for a crawl
of many hosts where the per-host delay overlaps other hosts' requests.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import shutil
import sys
import tempfile
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

    servers = [Server(("127.0.0.1", 0), Handler) for _ in range(hosts)]
    for s in servers:
        s.daemon_threads = True
        Thread(target=s.serve_forever, daemon=True).start()
        ports.put(s.server_address[1])
    time.sleep(3600)


def cpu_seconds() -> float:
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pages", type=int, default=3000, help="pages to generate and serve (default 3000)")
    p.add_argument("--hosts", type=int, default=8, help="local servers, each its own host:port (default 8)")
    p.add_argument("--per-host-concurrency", type=int, default=8, help="requests in flight per host (default 8)")
    args = p.parse_args()

    from gpt2.webtext import pipeline
    from gpt2.webtext.fetch import FetchConfig

    ports: multiprocessing.Queue = multiprocessing.Queue()
    server = multiprocessing.Process(target=serve, args=(args.pages, args.hosts, ports), daemon=True)
    server.start()
    bases = [f"http://127.0.0.1:{ports.get(timeout=60)}" for _ in range(args.hosts)]
    tmp = Path(tempfile.mkdtemp(prefix="bench-webtext-"))
    try:
        dump = tmp / "RS.jsonl"
        with open(dump, "w") as f:
            for i in range(args.pages):
                url = f"{bases[i % args.hosts]}/p/{i}"
                f.write(json.dumps({"url": url, "score": 5, "created_utc": 1_400_000_000, "subreddit": "b",
                                    "over_18": False, "is_self": False, "permalink": f"/r/b/{i}"}) + "\n")  # fmt: skip
        fetch = FetchConfig(concurrency=64, per_host_concurrency=args.per_host_concurrency, per_host_delay=0,
                            allow_private_addresses=True, progress=False)  # fmt: skip
        cfg = pipeline.WebtextConfig([str(dump)], str(tmp / "out"), fetch=fetch, progress=False)
        times: dict[str, float] = {}
        cpu: dict[str, float] = {}
        for executor in pipeline.build(cfg):
            name = Path(executor.logging_dir.path).name
            start, cpu_start = time.perf_counter(), cpu_seconds()
            executor.run()
            times[name] = time.perf_counter() - start
            cpu[name] = cpu_seconds() - cpu_start
        summary = json.loads((tmp / "out" / "summary.json").read_text())
    finally:
        server.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    stages = summary["stages"]

    def total(d: dict[str, float], prefix: str) -> float:
        return sum(t for k, t in d.items() if k.startswith(prefix))

    rows = [
        ("fetch", stages["links"]["documents"], "fetch"),
        ("extract (trafilatura)", stages["fetch"]["documents"], "extract"),
        ("dedup (exact + MinHash)", stages["extract"]["documents"], "dedup"),
        ("filter (lingua + cleaning) and write", stages["near_dedup"]["documents"], "filter"),
    ]
    print(f"{args.pages:,} generated pages on {args.hosts} local hosts, one task, {sys.platform}")
    print(f"{'stage':<38} {'pages':>7} {'wall s':>8} {'pages/s':>9} {'CPU s':>8} {'pages/CPU s':>12}")
    for name, n, key in rows:
        wall, used = total(times, key), total(cpu, key)
        print(f"{name:<38} {n:>7,} {wall:>8.2f} {n / wall:>9.1f} {used:>8.2f} {n / max(used, 1e-9):>12.1f}")
    print("CPU s: this process and the children it waited for (trafilatura's sandbox), not the servers")
    print("removed:", json.dumps({k: summary["removed"][k] for k in ("exact_duplicates", "near_duplicates")}))
    print("datatrove pipelines (s):", ", ".join(f"{k} {v:.2f}" for k, v in times.items()))


if __name__ == "__main__":
    main()
