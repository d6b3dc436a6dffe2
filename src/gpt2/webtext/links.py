"""Stage 1, links: the outbound links of Reddit submissions that WebText kept, normalised and de-duplicated.

Radford et al. (2019), section 2.2: "we scraped all outbound links from Reddit, a social media platform, which
received at least 3 karma", links "created before December 2017", with "all Wikipedia documents" removed. The
input is Pushshift-style submission dumps (JSON Lines, plain, .gz or .zst), one submission per line, with `url`,
`score`, `created_utc`, `subreddit`, `over_18`, `is_self` and `permalink`.

The selection and normalisation are plain functions (`select`, `normalise_url`); `SubmissionLinks` and
`MergeLinks` wrap them as datatrove pipeline steps, so the stage runs under any of datatrove's executors.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from gpt2.errors import GPT2Error
from gpt2.io import CorruptInput, atomic_open, atomic_write, open_binary

DEFAULT_BEFORE = "2017-12-01"  # "links created before December 2017" (section 2.2)
DEFAULT_MIN_KARMA = 3  # "which received at least 3 karma" (section 2.2)

# Files, not pages: the text extractor has nothing to read in them, and fetching them wastes the size cap.
MEDIA_EXTENSIONS = frozenset((
    "jpg", "jpeg", "png", "gif", "gifv", "webp", "bmp", "tif", "tiff", "svg", "ico", "heic", "mp4", "m4v", "webm",
    "mkv", "mov", "avi", "wmv", "flv", "mpg", "mpeg", "3gp", "mp3", "m4a", "wav", "ogg", "oga", "flac", "aac",
    "opus", "pdf", "doc", "docx", "xls", "xlsx", "ppt", "pptx", "odt", "ods", "zip", "rar", "7z", "gz", "tgz", "bz2",
    "xz", "tar", "exe", "msi", "dmg", "apk", "deb", "rpm", "iso", "bin", "jar", "swf", "torrent", "csv", "epub",
    "mobi"
))  # fmt: skip
# Hosts whose pages are media, not text (Reddit's own image and video hosts among them).
MEDIA_HOSTS = frozenset((
    "i.redd.it", "v.redd.it", "i.imgur.com", "imgur.com", "gfycat.com", "giant.gfycat.com", "youtube.com",
    "youtu.be", "m.youtube.com", "vimeo.com", "streamable.com", "pbs.twimg.com", "i.reddituploads.com",
    "media.giphy.com", "giphy.com"
))  # fmt: skip
# Query parameters that only track who clicked where: dropping them joins the same page's links.
TRACKING_PARAMETERS = frozenset((
    "fbclid", "gclid", "dclid", "msclkid", "mc_cid", "mc_eid", "igshid", "yclid", "_hsenc", "_hsmi", "mkt_tok",
    "ref_src", "ref_url", "cmpid", "ncid", "ocid", "spm"
))  # fmt: skip
DEFAULT_PORTS = {"http": 80, "https": 443}


def is_wikipedia(host: str) -> bool:
    """Whether `host` is Wikipedia in any language (en.wikipedia.org, de.m.wikipedia.org, wikipedia.org, ...):
    the paper removed Wikipedia because it is "a common data source for other datasets" and would overlap the
    evaluations (section 2.2)."""
    host = host.lower().rstrip(".")
    return host == "wikipedia.org" or host.endswith(".wikipedia.org")


def is_media(url: str) -> bool:
    """Whether the link points at an image, a video, an archive or another binary file, by host or extension."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if host in MEDIA_HOSTS or host.removeprefix("www.") in MEDIA_HOSTS:
        return True
    last = unquote(parts.path).rsplit("/", 1)[-1].lower()
    return "." in last and last.rsplit(".", 1)[1] in MEDIA_EXTENSIONS


def normalise_url(url: str) -> str | None:
    """The canonical form of an http(s) link, so that one page's spellings count once; None if it is not one.

    Lower-case scheme and host (IDNA for non-ASCII hosts), no default port, no user info, no fragment, no
    tracking parameters (utm_*, fbclid, ...), the remaining parameters kept in order, percent-escapes made
    canonical, and an empty path written "/"."""
    url = url.strip()
    if not url:
        return None
    if "://" not in url and url.startswith("www."):
        url = "http://" + url
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")
    if scheme not in DEFAULT_PORTS or not host or any(c in host for c in " <>\"'{}|\\^`"):
        return None
    try:
        host = host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return None
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    netloc = host if port in (None, DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    path = quote(unquote(parts.path), safe="/:@!$&'()*+,;=~-._%") or "/"
    query = [
        (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if not k.lower().startswith("utm_") and k.lower() not in TRACKING_PARAMETERS
    ]
    return urlunsplit((scheme, netloc, path, urlencode(query, quote_via=quote), ""))


def parse_date(text: str) -> int:
    """A date (YYYY-MM-DD, UTC) as a Unix time, for --before."""
    try:
        return int(datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp())
    except ValueError:
        raise GPT2Error(f"--before {text!r} is not a date written YYYY-MM-DD") from None


def _number(record: dict[str, Any], key: str) -> tuple[int | None, str | None]:
    """(the integer value of a required numeric field, None), or (None, why the record is bad): Pushshift's
    dumps hold numbers, and in some months numeric strings."""
    if key not in record:
        return None, f"{key}_missing"
    value = record[key]
    if value is None:
        return None, f"{key}_null"
    if isinstance(value, bool):
        return None, f"{key}_not_a_number"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None, f"{key}_not_a_number"
    return (int(number), None) if math.isfinite(number) else (None, f"{key}_not_a_number")


def _flag(value: Any) -> bool:
    return value is True or value == 1 or (isinstance(value, str) and value.strip().lower() in ("true", "1"))


def select(submission: dict[str, Any], min_karma: int, before: int) -> tuple[str | None, str | None]:
    """(normalised URL, None) for a submission WebText keeps, else (None, why it was dropped), so that the stage
    can count every reason. A record without a usable `score`, `created_utc` or `url` is a bad record, its reason
    prefixed "bad_record:" (a null date must not pass --before as 1970)."""
    score, bad = _number(submission, "score")
    created, bad = (None, bad) if bad else _number(submission, "created_utc")
    if bad:
        return None, "bad_record:" + bad
    url = submission.get("url")
    if not isinstance(url, str):
        why = "missing" if "url" not in submission else "null" if url is None else "not_text"
        return None, "bad_record:url_" + why
    if _flag(submission.get("is_self")) or url.startswith("/r/"):
        return None, "self_post"
    if _flag(submission.get("over_18")):
        return None, "over_18"
    if score < min_karma:
        return None, "low_karma"
    if created >= before:
        return None, "too_recent"
    url = normalise_url(url)
    if url is None:
        return None, "not_http"
    host = urlsplit(url).hostname or ""
    if is_wikipedia(host):
        return None, "wikipedia"
    if host in ("reddit.com", "redd.it") or host.endswith((".reddit.com", ".redd.it")):
        return None, "reddit"  # links back into Reddit are not outbound
    if is_media(url):
        return None, "media"
    return url, None


def host_shard(url: str, world_size: int) -> int:
    """The task that fetches `url`: all of one host's links (host and port, the unit of robots.txt and of the
    per-host limits) go to one task, so its politeness holds globally."""
    return zlib.crc32(urlsplit(url).netloc.encode()) % world_size


class SubmissionLinks(PipelineStep):
    """Reads this task's share of the submission dumps and yields one Document per kept link (text: the
    normalised URL; metadata: karma, created_utc, subreddit, permalink). Counts every dropped reason in stats.

    A truncated or corrupt dump ends the task with one error naming it and the offset reached, unless
    `skip_bad_inputs`: then what it held before that point is used, and the file and its error are written to
    `bad_inputs_dir` (for the summary) and counted."""

    type = "🔗 - LINKS"
    name = "Reddit submissions"

    def __init__(
        self,
        files: Sequence[str | os.PathLike],
        min_karma: int = DEFAULT_MIN_KARMA,
        before: int = 0,
        skip_bad_inputs: bool = False,
        bad_inputs_dir: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        self.files = [str(f) for f in files]
        self.min_karma = min_karma
        self.before = before or parse_date(DEFAULT_BEFORE)
        self.skip_bad_inputs = skip_bad_inputs
        self.bad_inputs_dir = str(bad_inputs_dir) if bad_inputs_dir else None

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        bad: list[dict] = []
        for path in self.files[rank::world_size]:
            try:
                yield from self._read(Path(path))
            except CorruptInput as e:
                if not self.skip_bad_inputs:
                    raise GPT2Error(f"{e}; --skip-bad-inputs uses what the file holds before that point") from None
                self.stat_update("bad_inputs")
                bad.append({"file": path, "offset": e.offset, "size": e.size, "error": str(e)})
        if self.bad_inputs_dir:
            lines = "".join(json.dumps(b, ensure_ascii=False) + "\n" for b in bad)
            atomic_write(Path(self.bad_inputs_dir) / f"{rank:05d}.jsonl", lines)

    def _read(self, path: Path) -> Iterator[Document]:
        with open_binary(path) as f:
            for n, line in enumerate(f):
                if not line.strip():
                    continue
                self.stat_update("submissions")
                try:
                    record = json.loads(line)
                except ValueError:
                    self.stat_update("bad_record:not_json")
                    continue
                if not isinstance(record, dict):
                    self.stat_update("bad_record:not_an_object")
                    continue
                url, reason = select(record, self.min_karma, self.before)
                if url is None:
                    self.stat_update(reason)
                    continue
                self.stat_update("kept")
                meta = {
                    "karma": _number(record, "score")[0],
                    "created_utc": _number(record, "created_utc")[0],
                    "subreddit": str(record.get("subreddit") or ""),
                    "permalink": str(record.get("permalink") or ""),
                }
                yield Document(text=url, id=f"{path.name}:{n}", metadata=meta)


def _better(a: dict, b: dict) -> bool:
    """Whether link record `a` beats `b` for the same URL: more karma, then the earlier post, then the permalink
    (a total order, so the kept record does not depend on how the dumps were split into tasks)."""
    return (-a["karma"], a["created_utc"], a["permalink"]) < (-b["karma"], b["created_utc"], b["permalink"])


class MergeLinks(PipelineStep):
    """One task: merges every task's candidate links into `links.jsonl`, one line per URL, keeping the record
    with the highest karma, sorted by URL. Written atomically, so a killed merge leaves no half file."""

    type = "🔗 - LINKS"
    name = "merge and de-duplicate"

    def __init__(self, candidates: str | os.PathLike, output: str | os.PathLike):
        super().__init__()
        self.candidates = str(candidates)
        self.output = str(output)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        best: dict[str, dict] = {}
        for path in sorted(Path(self.candidates).glob("*.jsonl*")):
            with open_binary(path) as f:
                for line in f:
                    record = json.loads(line)
                    url, meta = record["text"], record.get("metadata", {})
                    self.stat_update("candidates")
                    if url not in best or _better(meta, best[url]):
                        best[url] = meta
        with atomic_open(self.output, "wb") as out:
            for url in sorted(best):
                out.write((json.dumps({"url": url, **best[url]}, ensure_ascii=False) + "\n").encode("utf-8"))
        self.stat_update("links", value=len(best))
        yield from ()


def read_links(path: str | os.PathLike, rank: int = 0, world_size: int = 1) -> Iterator[dict]:
    """The merged links of one fetch task (the hosts that `host_shard` gives to `rank`)."""
    with open(path, "rb") as f:
        for line in f:
            record = json.loads(line)
            if host_shard(record["url"], world_size) == rank:
                yield record
