"""Stage 2, fetch: a polite, resumable crawler for the selected links, as a datatrove pipeline step.

Each task fetches the links of its own hosts (`links.host_shard`; a host is a host name and port, robots.txt's
unit), so the per-host limits hold across tasks: at most `per_host_concurrency` requests to a host at once,
`per_host_delay` seconds (or robots.txt's longer Crawl-delay) between the starts of any two requests to it,
robots.txt and redirect hops included, and robots.txt honoured (RFC 9309: a missing robots.txt allows
everything, an unreachable one allows nothing). Requests time out, transient failures (timeouts, dropped
connections, 429 and 5xx) are retried with exponential back-off up to `retries` times, bodies are cut at
`max_bytes` (such pages are kept in the state but left out of the corpus unless `keep_truncated`: a giant page
cut short is neither whole nor small), only HTML is kept, redirects are followed by hand (each hop checked like
the first) and recorded, and the charset comes from the header, the page's <meta>, UTF-8, or detection, in that
order.

A crawler fed arbitrary links must not become a way into the network it runs in (cloud metadata services, a
cluster's internal dashboards), so hosts that resolve to private, loopback, link-local or other non-global
addresses are refused unless `allow_private_addresses` is set, before any request or wait for the host. The
check resolves the name before the request,
so a host that answers DNS differently a moment later (rebinding) is not covered; run crawlers where the
network itself keeps them out of internal services too.

State lives in SQLite, one database per task: a page is marked done (with its status, attempts, final URL,
redirects, content hash and compressed body) in the same transaction that stores it, so a run killed at any
point resumes with every finished page kept and none fetched again. Failed pages are tried again only when asked
(`retry_failed`), or, for refused private addresses, once they are allowed.
"""

from __future__ import annotations

import asyncio
import codecs
import hashlib
import ipaddress
import json
import math
import re
import socket
import sqlite3
import time
import zlib
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit
from urllib.robotparser import RobotFileParser

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from gpt2.errors import GPT2Error
from gpt2.io import progress_bar
from gpt2.webtext.links import is_wikipedia, normalise_url, read_links

if TYPE_CHECKING:
    import aiohttp

USER_AGENT = "gpt2-webtext/0.1 (a WebText-style research crawler; honours robots.txt)"
ROBOTS_AGENT = "gpt2-webtext"
HTML_TYPES = ("text/html", "application/xhtml+xml")
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
SCHEMA = """
CREATE TABLE IF NOT EXISTS pages (
    url TEXT PRIMARY KEY, karma INTEGER, created_utc INTEGER, subreddit TEXT,
    status TEXT NOT NULL DEFAULT 'pending',  -- pending, done or failed
    kind TEXT,                               -- 'ok', or the kind of the last failure
    attempts INTEGER NOT NULL DEFAULT 0, http_status INTEGER, final_url TEXT, redirects TEXT,
    content_type TEXT, charset TEXT, truncated INTEGER, content_hash TEXT, body BLOB, error TEXT,
    linked INTEGER NOT NULL DEFAULT 1        -- in the current links.jsonl (a rerun may select other links)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""


@dataclass
class FetchConfig:
    """How politely and how hard to fetch."""

    concurrency: int = 64  # requests in flight per task, over all hosts
    per_host_concurrency: int = 2
    per_host_delay: float = 1.0  # seconds between the starts of two requests to one host
    timeout: float = 20.0  # seconds to connect, and between two pieces of a body
    page_deadline: float = 60.0  # seconds for a whole page, redirects included (a slow trickle ends here)
    max_bytes: int = 2_000_000  # bodies are cut here
    retries: int = 2  # further attempts after a transient failure
    backoff: float = 2.0  # seconds before the first retry, doubled for each further one
    max_redirects: int = 10
    max_crawl_delay: float = 60.0  # a host whose robots.txt asks for longer between requests is not fetched
    allow_private_addresses: bool = False
    keep_truncated: bool = False  # pages cut at max_bytes go into the corpus too
    retry_failed: bool = False  # failed pages of an earlier run are tried again
    user_agent: str = USER_AGENT
    progress: bool = True


@dataclass
class Outcome:
    status: str  # done, failed, or retry (a transient failure)
    kind: str
    http_status: int | None = None
    final_url: str | None = None
    redirects: list[str] = field(default_factory=list)
    content_type: str | None = None
    charset: str | None = None
    truncated: bool = False
    content_hash: str | None = None
    text: str | None = None
    error: str | None = None


def open_state(path: str | Path) -> sqlite3.Connection:
    """The fetch state database (created if new). WAL: a killed process loses at most the page in flight."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(SCHEMA)
    return db


def fetch_summary(state_dir: str | Path) -> dict[str, Any]:
    """What the fetch did, over every task's state database (the current links only): pages done, failed by
    kind, cut at max_bytes, redirected (and the hops followed), and the retries made."""
    failed: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    for path in sorted(Path(state_dir).glob("*.sqlite")):
        db = sqlite3.connect(path)
        try:
            failed.update(
                dict(db.execute("SELECT kind, COUNT(*) FROM pages WHERE linked AND status='failed' GROUP BY kind"))
            )
            row = db.execute(
                "SELECT COUNT(*), SUM(status='done'), SUM(status='pending'), SUM(status='done' AND truncated),"
                " SUM(redirects IS NOT NULL AND redirects != '[]'), SUM(json_array_length(COALESCE(redirects, '[]'))),"
                " SUM(MAX(attempts - 1, 0)) FROM pages WHERE linked"
            ).fetchone()
            names = ("links", "done", "pending", "truncated", "redirected", "hops", "retries")
            totals.update({name: value or 0 for name, value in zip(names, row, strict=True)})
        finally:
            db.close()
    return {
        "links": totals["links"],
        "done": totals["done"],
        "pending": totals["pending"],
        "failed": dict(sorted(failed.items())),
        "truncated": totals["truncated"],
        "redirected_pages": totals["redirected"],
        "redirects_followed": totals["hops"],
        "retries": totals["retries"],
    }


# ------------------------------------------------------------------------------------------------ decoding
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)


def _codec(name: str | None) -> str | None:
    if not name:
        return None
    try:
        return codecs.lookup(name.strip().strip("\"'")).name
    except LookupError:
        return None


def decode_html(body: bytes, header_charset: str | None) -> tuple[str, str] | None:
    """(text, charset) of an HTML body: the header's charset, else the page's <meta>, else UTF-8, else the one
    charset_normalizer detects; None if the bytes are not text at all (an image served as text/html)."""
    if b"\0" in body[:8192]:  # no text encoding a page would use puts NUL bytes in its markup
        return None
    candidates = [_codec(header_charset)]
    if m := _META_CHARSET.search(body[:4096]):
        candidates.append(_codec(m.group(1).decode("ascii", "replace")))
    candidates.append("utf-8")
    for name in filter(None, candidates):
        try:
            return body.decode(name), name
        except (UnicodeDecodeError, LookupError):
            continue
    from charset_normalizer import from_bytes

    best = from_bytes(body[:65536]).best()
    if best is None:
        return None
    return body.decode(best.encoding, "replace"), best.encoding


def _mime(content_type: str | None) -> tuple[str, str | None]:
    if not content_type:
        return "", None
    parts = [p.strip() for p in content_type.split(";")]
    charset = next((p.split("=", 1)[1] for p in parts[1:] if p.lower().startswith("charset=")), None)
    return parts[0].lower(), charset


def crawl_delay(robots: str, agent: str = ROBOTS_AGENT) -> float | None:
    """robots.txt's Crawl-delay (seconds) for our agent's group, else for the `*` group; fractions allowed, which
    urllib's parser, reading whole numbers only, ignores."""
    delays: dict[str, float] = {}
    agents: list[str] = []
    in_rules = False
    for line in robots.splitlines():
        key, _, value = line.split("#", 1)[0].partition(":")
        key, value = key.strip().lower(), value.strip()
        if key == "user-agent":
            if in_rules:  # a user-agent line after rules starts a new group
                agents, in_rules = [], False
            agents.append(value.lower())
        elif key:
            in_rules = True
            try:
                delay = float(value) if key == "crawl-delay" else None
            except ValueError:
                delay = None
            if delay is not None and math.isfinite(delay) and delay >= 0:
                for a in agents:
                    delays.setdefault(a, delay)
    ours = [d for a, d in delays.items() if a != "*" and a in agent.lower()]
    return ours[0] if ours else delays.get("*")


# ------------------------------------------------------------------------------------------------ the crawler
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})


async def _read_capped(r: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """The body, cut at `limit` bytes (the rest is never read: the connection is dropped instead)."""
    body = bytearray()
    async for chunk in r.content.iter_any():
        body += chunk
        if len(body) >= limit:
            del body[limit:]
            return bytes(body), True
    return bytes(body), False


class Crawler:
    """Fetches pages under FetchConfig's rules; `fetch(url)` gives an Outcome and never raises. Create it inside
    the event loop that will use it (aiohttp's sessions belong to one loop).

    aiohttp, not httpx: against a fast local server httpx spent about 2.5 ms of CPU per request in its pure-Python
    connection pool and anyio layers, aiohttp (C HTTP parser) about 0.5 ms, so one task was bound by its own CPU
    below 200 pages/s with httpx and is bound by the server with aiohttp (benchmarks/bench_webtext.py)."""

    def __init__(self, cfg: FetchConfig) -> None:
        self.cfg = cfg
        self.client = self._client(cfg.concurrency)  # for hosts without their own: robots.txt, redirect targets
        self.host_clients: dict[str, aiohttp.ClientSession] = {}
        self.robots: dict[str, RobotFileParser | bool] = {}
        self.robot_locks: dict[str, asyncio.Lock] = {}
        self.addresses: dict[str, bool] = {}
        self.next_start: dict[str, float] = {}  # per host: when the next request may start
        self.crawl_delays: dict[str, float] = {}  # per host: robots.txt's Crawl-delay, where it gives one

    def _client(self, connections: int) -> aiohttp.ClientSession:
        import aiohttp

        return aiohttp.ClientSession(
            # Seconds to connect, and between two pieces of a body; the whole page's deadline is `fetch`'s.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.cfg.timeout, sock_read=self.cfg.timeout),
            connector=aiohttp.TCPConnector(limit=connections),
            headers={"User-Agent": self.cfg.user_agent, "Accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.1"},
            trust_env=False,  # a proxy from the environment would see (and could be) the internal network
        )

    def open_host(self, netloc: str) -> None:
        """Gives a host its own small connection pool while its pages are fetched, closed when they are done, so
        a crawl over millions of hosts does not keep idle connections to those it has finished with."""
        self.host_clients[netloc] = self._client(self.cfg.per_host_concurrency)

    async def close_host(self, netloc: str) -> None:
        if client := self.host_clients.pop(netloc, None):
            await client.close()

    def client_for(self, url: str) -> aiohttp.ClientSession:
        return self.host_clients.get(urlsplit(url).netloc, self.client)

    async def close(self) -> None:
        for netloc in list(self.host_clients):
            await self.close_host(netloc)
        await self.client.close()

    def delay(self, netloc: str) -> float:
        """Seconds between the starts of two requests to a host: ours, or its robots.txt's if longer."""
        return max(self.cfg.per_host_delay, self.crawl_delays.get(netloc, 0.0))

    async def _turn(self, netloc: str) -> float:
        """Waits until the host may be sent another request (its delay after the start of the last one), and
        books that start, which it returns; every request waits here, robots.txt and redirect hops too."""
        now = time.monotonic()
        start = max(self.next_start.get(netloc, now), now)
        self.next_start[netloc] = start + self.delay(netloc)
        if start > now:
            await asyncio.sleep(start - now)
        return start

    async def refused(self, url: str) -> bool:
        """Whether the URL's host is (or resolves to) an address that is not on the public internet. Raises
        socket.gaierror when the name does not resolve."""
        if self.cfg.allow_private_addresses:
            return False
        parts = urlsplit(url)
        host = parts.hostname or ""
        if host not in self.addresses:
            try:
                addresses = [ipaddress.ip_address(host)]
            except ValueError:
                infos = await asyncio.get_running_loop().getaddrinfo(host, parts.port or 80, type=socket.SOCK_STREAM)
                addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
            self.addresses[host] = not addresses or any(not a.is_global for a in addresses)
        return self.addresses[host]

    async def _robots_allows(self, url: str) -> bool:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        lock = self.robot_locks.setdefault(origin, asyncio.Lock())
        async with lock:  # one robots.txt request per origin, however many pages wait for it
            if origin not in self.robots:
                self.robots[origin] = await self._load_robots(origin)
        rules = self.robots[origin]
        return rules if isinstance(rules, bool) else rules.can_fetch(ROBOTS_AGENT, url)

    async def _load_robots(self, origin: str) -> RobotFileParser | bool:
        import aiohttp
        from yarl import URL

        async def get() -> tuple[int, bytes]:
            url = URL(origin + "/robots.txt", encoded=True)
            async with self.client_for(origin).get(url, allow_redirects=False) as r:
                return r.status, (await _read_capped(r, 500_000))[0] if r.status < 300 else b""

        netloc = urlsplit(origin).netloc
        began = await self._turn(netloc)
        try:
            status, body = await asyncio.wait_for(get(), self.cfg.timeout)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError):
            return False  # unreachable: RFC 9309 says assume everything is disallowed
        if 400 <= status < 500 or 300 <= status < 400:
            return True  # no robots.txt: everything is allowed (redirects are not followed for it)
        if status >= 500:
            return False
        text = body.decode("utf-8", "replace")
        parser = RobotFileParser()
        parser.parse(text.splitlines())
        delay = crawl_delay(text)
        if delay is not None:  # the request after robots.txt waits for its delay too
            self.crawl_delays[netloc] = max(self.crawl_delays.get(netloc, 0.0), delay)
            self.next_start[netloc] = max(self.next_start.get(netloc, 0.0), began + self.delay(netloc))
        return parser

    async def fetch(self, url: str) -> Outcome:
        """The page at `url`, its redirects followed; never raises. The page's deadline counts the time spent
        on the network, not the waits for a host's turn."""
        import aiohttp

        try:
            return await self._fetch(url)
        except aiohttp.ServerTimeoutError as e:  # connect or read timeout, before the page's deadline
            return Outcome("retry", "timeout", error=str(e) or type(e).__name__)
        except asyncio.TimeoutError:
            return Outcome("retry", "timeout", error=f"no complete answer in {self.cfg.page_deadline:g} s")
        except (socket.gaierror, aiohttp.ClientConnectorDNSError) as e:
            return Outcome("failed", "dns", error=str(e))
        except (aiohttp.InvalidURL, aiohttp.ClientResponseError, ValueError) as e:
            # an invalid URL, or a response that is not HTTP (bad status line or headers): trying again would
            # not help
            return Outcome("failed", "invalid", error=str(e) or type(e).__name__)
        except (aiohttp.ClientError, OSError) as e:  # refused, reset or dropped connections
            return Outcome("retry", "connection", error=str(e) or type(e).__name__)

    async def _get(self, url: str) -> tuple[int, str | None, str | None, bytes, bool]:
        """(status, Location, Content-Type, body, cut at max_bytes) of one request; the body only of an HTML
        (or untyped) 2xx answer."""
        from yarl import URL

        # encoded=True: the URL is already normalised, and re-quoting it would fetch another URL than stored
        async with self.client_for(url).get(URL(url, encoded=True), allow_redirects=False) as r:
            location, content_type = r.headers.get("Location"), r.headers.get("Content-Type")
            if r.status >= 300 or _mime(content_type)[0] not in ("", *HTML_TYPES):
                return r.status, location, content_type, b"", False
            return r.status, location, content_type, *await _read_capped(r, self.cfg.max_bytes)

    async def _fetch(self, url: str) -> Outcome:
        redirects: list[str] = []
        budget = self.cfg.page_deadline  # seconds of network time left for the page
        for _ in range(self.cfg.max_redirects + 1):
            host = urlsplit(url).hostname or ""
            if is_wikipedia(host):
                return Outcome("failed", "wikipedia", final_url=url, redirects=redirects)
            if await self.refused(url):
                return Outcome("failed", "private_address", final_url=url, redirects=redirects)
            if not await self._robots_allows(url):
                return Outcome("failed", "robots", final_url=url, redirects=redirects)
            netloc = urlsplit(url).netloc
            if self.crawl_delays.get(netloc, 0.0) > self.cfg.max_crawl_delay:
                error = f"robots.txt asks for {self.crawl_delays[netloc]:g} s between requests"
                return Outcome("failed", "crawl_delay", final_url=url, redirects=redirects, error=error)
            await self._turn(netloc)
            began = time.monotonic()
            status, location, content_type, raw, truncated = await asyncio.wait_for(self._get(url), max(budget, 0))
            budget -= time.monotonic() - began
            if status in REDIRECT_STATUS and location:
                target = normalise_url(urljoin(url, location))
                if target is None:
                    return Outcome("failed", "bad_redirect", status, url, redirects)
                url = target
                redirects.append(url)
                continue
            if status in TRANSIENT_STATUS:
                return Outcome("retry", f"http_{status}", status, url, redirects)
            if status >= 300:
                return Outcome("failed", f"http_{status}", status, url, redirects)
            mime, charset = _mime(content_type)
            if mime and mime not in HTML_TYPES:
                return Outcome("failed", "content_type", status, url, redirects, content_type=mime)
            if not raw.strip():
                return Outcome("failed", "empty", status, url, redirects, content_type=mime)
            decoded = decode_html(raw, charset)
            if decoded is None:
                return Outcome("failed", "binary", status, url, redirects, content_type=mime)
            text, charset = decoded
            digest = hashlib.sha256(raw).hexdigest()
            return Outcome("done", "ok", status, url, redirects, mime, charset, truncated, digest, text)
        return Outcome("failed", "too_many_redirects", final_url=url, redirects=redirects)


# ------------------------------------------------------------------------------------------------ the step
class FetchPages(PipelineStep):
    """Fetches this task's links (from `links.jsonl`) into `state_dir/RANK.sqlite`, then yields every page
    fetched, sorted by URL (text: the HTML; metadata: url, final_url, karma, created_utc, subreddit); pages cut at
    max_bytes only with `keep_truncated`."""

    type = "🌐 - FETCH"
    name = "polite fetcher"

    def __init__(self, links: str | Path, state_dir: str | Path, config: FetchConfig | None = None) -> None:
        super().__init__()
        self.links = str(links)
        self.state_dir = str(state_dir)
        self.config = config or FetchConfig()

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        db = open_state(Path(self.state_dir) / f"{rank:05d}.sqlite")
        try:
            self._add_links(db, rank, world_size)
            asyncio.run(self._crawl(db))
            counts = dict(db.execute("SELECT status, COUNT(*) FROM pages WHERE linked GROUP BY status"))
            self.stat_update("done", value=counts.get("done", 0))
            self.stat_update("failed", value=counts.get("failed", 0))
            yield from self._pages(db)
        finally:
            db.close()

    def _add_links(self, db: sqlite3.Connection, rank: int, world_size: int) -> None:
        """Marks this run's links (new ones pending, known ones keeping what was fetched), and makes the failed
        pages that this run's settings would fetch otherwise pending again."""
        row = db.execute("SELECT value FROM meta WHERE key='world_size'").fetchone()
        if (
            row and int(row[0]) != world_size
        ):  # links are split among tasks by host: another --tasks splits them otherwise
            raise GPT2Error(
                f"{self.state_dir} was fetched with --tasks {row[0]}; resume with the same --tasks "
                f"(or remove that folder to start the fetch again)"
            )
        if "linked" not in {c[1] for c in db.execute("PRAGMA table_info(pages)")}:  # a state from before the column
            db.execute("ALTER TABLE pages ADD COLUMN linked INTEGER NOT NULL DEFAULT 1")
        with db:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('world_size', ?)", (str(world_size),))
            db.execute("UPDATE pages SET linked=0")
            db.executemany(
                "INSERT INTO pages (url, karma, created_utc, subreddit) VALUES (?, ?, ?, ?) ON CONFLICT(url) DO UPDATE"
                " SET karma=excluded.karma, created_utc=excluded.created_utc, subreddit=excluded.subreddit, linked=1",
                ((r["url"], r["karma"], r["created_utc"], r.get("subreddit", "")) for r in read_links(
                    self.links, rank, world_size)),
            )  # fmt: skip
            again = "status='failed' AND kind='private_address'" if self.config.allow_private_addresses else "0"
            if self.config.retry_failed:
                again = "status='failed'"
            db.execute(f"UPDATE pages SET status='pending', attempts=0 WHERE linked AND ({again})")

    async def _crawl(self, db: sqlite3.Connection) -> None:
        cfg = self.config
        max_attempts = 1 + cfg.retries
        rows = db.execute("SELECT url, attempts FROM pages WHERE linked AND status='pending' ORDER BY url").fetchall()
        by_host: dict[str, deque[tuple[str, int]]] = {}
        for url, attempts in rows:
            by_host.setdefault(urlsplit(url).netloc, deque()).append((url, attempts))
        if not by_host:
            return
        from gpt2.webtext.local import terminal

        failures: Counter[str] = Counter()
        bar = progress_bar(
            total=len(rows), unit="page", desc="fetch", enabled=cfg.progress, smoothing=0.1, file=terminal()
        )
        crawler = Crawler(cfg)
        requests = asyncio.Semaphore(cfg.concurrency)

        def record(url: str, attempts: int, out: Outcome) -> None:
            status = "pending" if out.status == "retry" and attempts < max_attempts else out.status
            status = "failed" if status == "retry" else status
            body = zlib.compress(out.text.encode("utf-8"), 6) if out.text is not None else None
            with db:  # one transaction: the page and its status land together or not at all
                db.execute(
                    "UPDATE pages SET status=?, kind=?, attempts=?, http_status=?, final_url=?, redirects=?,"
                    " content_type=?, charset=?, truncated=?, content_hash=?, body=?, error=? WHERE url=?",
                    (status, out.kind, attempts, out.http_status, out.final_url, json.dumps(out.redirects),
                     out.content_type, out.charset, int(out.truncated), out.content_hash, body, out.error, url),
                )  # fmt: skip
            if status != "pending":
                bar.update(1)
                if status == "failed":
                    failures[out.kind] += 1
                    bar.set_postfix_str(", ".join(f"{k} {v}" for k, v in failures.most_common(6)), refresh=False)

        async def host_worker(queue: deque[tuple[str, int]]) -> None:
            while queue:
                url, attempts = queue.popleft()
                while True:
                    async with requests:
                        out = await crawler.fetch(url)  # waits for the host's turn before each request
                    attempts += 1
                    record(url, attempts, out)
                    if out.status != "retry" or attempts >= max_attempts:
                        break
                    await asyncio.sleep(cfg.backoff * 2 ** (attempts - 1))  # back off: the host may be struggling

        async def do_host(netloc: str, queue: deque[tuple[str, int]]) -> None:
            try:  # a host that is refused or does not resolve fails at once, with no request and no wait
                refused = await crawler.refused(queue[0][0])
            except (OSError, UnicodeError) as e:
                refused, why = True, Outcome("failed", "dns", error=str(e))
            else:
                why = Outcome("failed", "private_address")
            if refused:
                for url, attempts in queue:
                    record(url, attempts + 1, why)
                return
            workers = min(cfg.per_host_concurrency, len(queue))
            crawler.open_host(netloc)
            try:
                await asyncio.gather(*(host_worker(queue) for _ in range(workers)))
            finally:
                await crawler.close_host(netloc)

        try:
            # Hosts are started lazily, a bounded number at a time: a dump can hold millions of them.
            active: set[asyncio.Task] = set()
            for netloc, queue in by_host.items():
                active.add(asyncio.ensure_future(do_host(netloc, queue)))
                if len(active) >= cfg.concurrency:
                    _, active = await asyncio.wait(active, return_when=asyncio.FIRST_COMPLETED)
            if active:
                await asyncio.gather(*active)
        finally:
            bar.close()
            await crawler.close()

    def _pages(self, db: sqlite3.Connection) -> Iterator[Document]:
        truncated = "" if self.config.keep_truncated else " AND NOT truncated"
        cursor = db.execute(
            "SELECT url, final_url, karma, created_utc, subreddit, body FROM pages WHERE linked AND status='done'"
            + truncated + " ORDER BY url"
        )  # fmt: skip
        for url, final_url, karma, created_utc, subreddit, body in cursor:
            meta = {"url": url, "final_url": final_url, "karma": karma, "created_utc": created_utc,
                    "subreddit": subreddit}  # fmt: skip
            yield Document(text=zlib.decompress(body).decode("utf-8"), id=url, metadata=meta)
