"""A small web for `gpt2 webtext`'s tests: HTTP servers on 127.0.0.1 serving articles, duplicates, redirects,
errors, slow and oversized pages, binary data, a Latin-1 page, an empty page and a robots.txt, and counting
every request by path. No request leaves the machine."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from gpt2.io import open_binary

OLD = 1_400_000_000  # 2014
NEW = 1_530_000_000  # 2018, after the paper's cut-off
# The politeness off and the timeouts short, for servers on this machine.
FAST = ["--allow-private-addresses", "--per-host-delay", "0", "--per-host-concurrency", "4", "--timeout", "2",
        "--page-deadline", "1", "--retries", "1", "--backoff", "0.05", "--max-bytes", "100000", "--quiet"]  # fmt: skip


def submission(url: str, score: int = 10, created: int = OLD, **kw: object) -> dict:
    """A Pushshift submission record."""
    return {"url": url, "score": score, "created_utc": created, "subreddit": "test", "over_18": False,
            "is_self": False, "permalink": f"/r/test/comments/{abs(hash(url)) % 10**6}/", **kw}  # fmt: skip


def write_submissions(path: Path, records: list[dict]) -> Path:
    """A dump as Pushshift packs them: JSON Lines in zstd with a 2 GiB window (`zstd --long=31`) and a checksum."""
    import zstandard

    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=31, enable_ldm=True, write_checksum=True)
    with open(path, "wb") as f, zstandard.ZstdCompressor(compression_params=params).stream_writer(f) as w:
        w.write("".join(json.dumps(r) + "\n" for r in records).encode())
    return path


def corpus(out: Path) -> list[dict]:
    records = []
    for path in sorted((out / "corpus").glob("*.jsonl.zst")):
        with open_binary(path) as f:
            records += [json.loads(line) for line in f]
    return sorted(records, key=lambda r: r["url"])


def state(out: Path) -> dict[str, dict]:
    rows = {}
    for path in sorted((out / "fetch_state").glob("*.sqlite")):
        db = sqlite3.connect(path)
        db.row_factory = sqlite3.Row
        rows |= {r["url"]: dict(r) for r in db.execute("SELECT * FROM pages")}
        db.close()
    return rows


ARTICLES = {
    "tidal": (
        "Tidal turbines in the Pentland Firth",
        [
            "The Pentland Firth, the strait between the Scottish mainland and Orkney, carries some of the fastest "
            "tidal currents in Europe. Twice a day the sea pours through it at speeds of up to five metres a "
            "second, and for decades engineers have wondered how much of that motion could be turned into power.",
            "The first turbines went into the water in 2016. Each stands on a steel base on the seabed, with three "
            "blades that turn slowly enough for seals and porpoises to avoid them. Unlike wind, the tide arrives "
            "on a timetable that can be printed years in advance, which makes the output easy for the grid to plan.",
            "Maintenance is the hard part. Divers cannot work in such currents except during the short slack water "
            "between tides, so the turbines are lifted out by crane barges when they need repairs. The operators "
            "say the costs have fallen with every generation, though they remain well above those of offshore wind.",
            "Local fishermen were sceptical at first, worried that the machines would damage their creel grounds. "
            "Several now work as crew on the survey boats, and the harbour at Scrabster has new moorings paid for by "
            "the project. Whether the firth becomes a power station or a test site depends on the next auction.",
        ],
    ),
    "clock": (
        "Restoring a tower clock, one gear at a time",
        [
            "When the parish council found the old tower clock stopped at twenty past four, nobody could remember "
            "when it had last been wound. The mechanism, made in Derby in 1881, had been left to rust after an "
            "electric motor replaced the weights in the sixties and then failed in its turn.",
            "Restoring it took a retired engineer and two apprentices the better part of a winter. Every wheel was "
            "taken apart, cleaned in paraffin and measured against drawings kept by the makers. The escapement, the "
            "part that lets the gear train advance one tooth at a time, needed new pallets cut by hand from steel.",
            "The hardest decision was whether to keep the electric winding. Purists wanted the weights back and a "
            "volunteer to climb the tower every week; the council wanted a clock that would keep going if that "
            "volunteer moved away. They settled on an automatic winder that lifts the original weights.",
            "The clock now loses about two seconds a week, which the engineer corrects on the first Sunday of each "
            "month. Children from the village school have been up the tower to watch the pendulum swing, and the "
            "bells strike the hours again for the first time in more than fifty years.",
        ],
    ),
    "sourdough": (
        "What actually happens inside a sourdough starter",
        [
            "A sourdough starter is a small ecosystem. Flour and water left in a warm kitchen are colonised by wild "
            "yeasts and lactic acid bacteria that arrive on the grain itself, on the baker's hands and in the air. "
            "Within a week the mixture settles into a stable community that can be kept alive for decades.",
            "The bacteria do most of the work. They ferment the sugars in the flour into lactic and acetic acids, "
            "which give the bread its sour taste and lower the acidity enough to keep out moulds. The yeasts, which "
            "tolerate the acid, produce the carbon dioxide that makes the dough rise.",
            "Microbiologists who sampled starters from bakers around the world found hundreds of species, but each "
            "jar was dominated by only a handful. Surprisingly, the flour mattered less than expected: the same "
            "flour fed in different kitchens produced different communities, shaped by the habits of the baker.",
            "Temperature is the baker's main lever. A warm starter favours the yeasts and a milder bread; a cool "
            "one lets the bacteria produce more acetic acid and a sharper loaf. Feeding more often keeps the acid "
            "down, which is why many bakers feed their starters twice a day before a big bake.",
        ],
    ),
    "bees": (
        "Keeping bees on the roofs of a busy city",
        [
            "There are now more than three thousand registered beehives in London, many of them on the roofs of "
            "offices, hotels and railway stations. The boom began about fifteen years ago, when companies discovered "
            "that a few hives made for good photographs in their annual reports.",
            "Beekeepers have mixed feelings about it. A colony needs flowers within a few miles of the hive, and in "
            "the centre of the city there are only so many parks and gardens. Studies of honey yields suggest that "
            "some districts already have more bees than their flowers can feed.",
            "Wild pollinators may lose out as well. Honeybees compete with bumblebees and solitary bees for the same "
            "nectar, and ecologists worry that a crowded roof can push rarer insects out of a neighbourhood. Several "
            "conservation groups now argue that planting flowers helps more than adding hives.",
            "The most careful urban beekeepers keep fewer colonies and check them often for disease. They also talk "
            "to their neighbours: a swarm landing on a bus shelter in summer is harmless, but it can cause alarm, and "
            "a quick phone call usually brings someone with a box and a soft brush to collect it.",
        ],
    ),
    "lighthouse": (
        "The lens that made lighthouses visible for twenty miles",
        [
            "Before the 1820s, lighthouses used mirrors to throw the light of oil lamps out to sea, and most of that "
            "light was wasted. Augustin Fresnel, a French engineer, proposed replacing the mirror with a lens built "
            "from rings of glass prisms, each bending the light toward the horizon.",
            "The design was lighter and far more efficient than a solid lens of the same size would have been. The "
            "first one was installed at the Cordouan lighthouse in 1823, and within a few decades lenses of this "
            "kind had spread to coasts all over the world, graded in orders by their size.",
            "Each light was given its own pattern of flashes so that sailors could tell one lighthouse from another "
            "at night. The lenses turned on beds of mercury, which let a heavy assembly of brass and glass rotate "
            "smoothly with the push of a clockwork motor wound by the keeper.",
            "Most of the great lenses have since been replaced by small electric beacons, and many now stand in "
            "museums. A few still work where they were built, maintained by volunteers who climb the towers to clean "
            "the glass and who say the view from the lantern room never becomes ordinary.",
        ],
    ),
    "trains": (
        "The quiet return of the night train",
        [
            "Ten years ago the night train seemed finished in Europe. Budget airlines had taken its passengers, and "
            "one national railway after another closed its sleeper services, sold the carriages and declared that "
            "nobody wanted to spend eleven hours travelling between two capitals.",
            "The revival started in Austria, where the state railway bought the rolling stock that others discarded "
            "and ran it at a profit. Its trains now link Vienna with Hamburg, Rome, Brussels and Amsterdam, and the "
            "tickets for the summer months are often sold out weeks in advance.",
            "Part of the appeal is that a night train saves a hotel bill and a day of travel at the same time. Part "
            "is the experience itself: falling asleep in one country and waking in another, with coffee and a roll "
            "served in a compartment while the landscape slides past the window.",
            "The difficulties are mostly practical. Each country charges for the use of its tracks, timetables must "
            "be agreed across borders, and the old carriages need replacing. New ones are being built, and several "
            "routes that disappeared in the last decade are due to open again in the coming years.",
        ],
    ),
    "cafe": (
        "A café in Montréal that never changed its menu",
        [
            "The café on the corner of Saint-Denis has served the same breakfast since 1962: two eggs, toast, "
            "fèves au lard and coffee that the owner insists is not as bad as it looks. Regulars describe the place "
            "as naïve in the best sense, untouched by every fashion that has passed through the neighbourhood.",
            "The owner's father opened it after arriving from Portugal with his savings and a recipe for custard "
            "tarts. The tarts are still on the counter every morning, and the old espresso machine, repaired so many "
            "times that few of its original parts remain, still hisses behind the till.",
            "Rents on the street have tripled in a decade, and most of the neighbouring shops have become boutiques "
            "or restaurants with tasting menus. The café survives because the family owns the building, bought at a "
            "time when nobody thought the street had much of a future.",
            "Asked whether he would ever change anything, the owner laughed and pointed at the menu board, its "
            "letters faded by sixty years of sunlight. Customers would riot, he said, and he was probably right: a "
            "petition to keep the prices the same once collected more than a thousand signatures.",
        ],
    ),
    "chess": (
        "How chess engines changed the way people play",
        [
            "When a computer first beat the world chess champion in 1997, many players feared that the game would "
            "lose its meaning. The opposite happened. Engines became training partners, and a generation of players "
            "grew up checking every idea against a program that could see deeper than any human.",
            "The effect is visible in the openings. Lines that had been considered unsound for a century turned out "
            "to be playable, and fashionable moves were refuted overnight when an engine found a resource nobody had "
            "noticed. Top players now arrive at tournaments with analysis prepared twenty moves deep.",
            "Some coaches worry that young players rely too much on the machine and too little on their own "
            "judgement. Others point out that the engines have made the game more concrete and more honest, since a "
            "bluff that once worked against a tired opponent is now exposed in the analysis room within seconds.",
            "Cheating is the darker side. Because a phone can run a program stronger than the world champion, "
            "organisers now scan players for devices and use statistical tests to flag games whose moves match an "
            "engine's choices too closely for comfort.",
        ],
    ),
}
FRENCH = (
    "Le marché du vendredi",
    [
        "Chaque vendredi matin, la place du village se remplit de tables et de cagettes. Les maraîchers arrivent "
        "avant l'aube avec leurs légumes, les fromagers installent leurs meules et les habitants viennent faire "
        "leurs courses en discutant des nouvelles de la semaine et du temps qu'il fera dimanche.",
        "Le marché existe depuis le Moyen Âge, et certains emplacements se transmettent dans les familles depuis "
        "plusieurs générations. La mairie a tenté de le déplacer sur un parking plus grand, mais les commerçants "
        "et les clients ont refusé, attachés à la fontaine et aux platanes de la vieille place.",
        "Les jeunes agriculteurs y trouvent un moyen de vendre sans intermédiaire. Ils disent que le contact avec "
        "les clients compte autant que les prix, et que les conseils échangés entre deux pesées de pommes de terre "
        "valent bien les réseaux sociaux pour faire connaître leur travail.",
    ],
)
GLACIER = (
    "Ice cores from a shrinking glacier record centuries of weather in thin annual layers of snow and dust, and "
    "the scientists who drill them race to sample the oldest ice before the summer melt washes the record away."
)
NAV = "<nav><a href='/'>Home</a> | <a href='/news'>News</a> | <a href='/about'>About</a></nav>"
FOOTER = "<footer><p>Share this article</p><p>All rights reserved. Subscribe to our newsletter.</p></footer>"


def article_html(title: str, paragraphs: list[str], charset: str | None = None) -> str:
    meta = f'<meta charset="{charset}">' if charset else ""
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    return (
        f"<!DOCTYPE html><html><head>{meta}<title>{title}</title></head><body>{NAV}"
        f"<article><h1>{title}</h1>{body}</article>{FOOTER}</body></html>"
    )


def near_duplicate(paragraphs: list[str]) -> list[str]:
    """The same article lightly edited: two words changed and a sentence added at the end, as a syndicated copy."""
    edited = [p.replace("fastest", "swiftest").replace("Twice a day", "Two times a day") for p in paragraphs]
    return edited[:-1] + [edited[-1] + " Updated with a correction."]


HUGE = article_html("Ice cores", [f"Layer {i}. {GLACIER}" for i in range(86_000)]).encode("utf-8")


# path -> (status, content type, body) for the simple pages
def pages() -> dict[str, tuple[int, str, bytes]]:
    def page(key: str) -> tuple[int, str, bytes]:
        title, paragraphs = ARTICLES[key]
        return 200, "text/html; charset=utf-8", article_html(title, paragraphs).encode("utf-8")

    title, paragraphs = ARTICLES["tidal"]
    cafe_title, cafe_paragraphs = ARTICLES["cafe"]
    big = article_html("Ice cores", [f"Layer {i}. {GLACIER} Sample {i * 7919 % 10007}." for i in range(20_000)])
    binary = bytes((i * 73 + 11) % 256 for i in range(5000))
    return {
        "/news/tidal": page("tidal"),
        "/news/clock": page("clock"),
        "/news/sourdough": page("sourdough"),
        "/news/bees": page("bees"),
        "/news/chess-copy": page("chess"),  # chess is served twice: an exact duplicate on the same host
        "/syndicated/tidal": (200, "text/html", article_html(title, near_duplicate(paragraphs)).encode("utf-8")),
        "/news/lighthouse-final": page("lighthouse"),
        "/fr/marche": (200, "text/html; charset=utf-8", article_html(*FRENCH).encode("utf-8")),
        # Latin-1, declared only inside the page
        "/news/cafe": (200, "text/html", article_html(cafe_title, cafe_paragraphs, "iso-8859-1").encode("latin-1")),
        "/big": (200, "text/html; charset=utf-8", big.encode("utf-8")),
        "/binary": (200, "text/html", binary),
        "/empty": (200, "text/html", b""),
        "/missing": (404, "text/html", b"<html><body><h1>Not found</h1></body></html>"),
        "/private/diary": page("bees"),
        "/feed.json": (200, "application/json", b'{"not": "html"}'),
    }


class QuietServer(ThreadingHTTPServer):
    request_queue_size = 64  # the default 5 resets connections when the crawler opens many at once

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the crawler hangs up on oversized and slow pages on purpose


OLD_TABLE_PAGE = """<HTML><HEAD><TITLE>Tom's Model Railway Pages</TITLE></HEAD>
<BODY BGCOLOR="#FFFFCC"><TABLE WIDTH="100%" BORDER=0><TR>
<TD WIDTH=150 VALIGN=TOP BGCOLOR="#CCCC99"><FONT FACE="Arial" SIZE=2><B>Old Pages</B><BR>
<A HREF="/">Home</A><BR><A HREF="/texts">Texts</A><BR><A HREF="/links">Links</A><BR>
<A HREF="/guestbook">Guestbook</A><BR><BR>You are visitor number <IMG SRC="/counter.gif"> since 1998</FONT></TD>
<TD VALIGN=TOP><FONT SIZE=5><B>Building a layout in a spare bedroom</B></FONT><BR>
<P>{0}
<P>{1}
<P>{2}
<P>{3}
<HR><FONT SIZE=1>Last updated March 2004. Best viewed with Netscape at 800x600.</FONT></TD></TR></TABLE>
</BODY></HTML>"""
OLD_TABLE_TEXT = [
    "When we moved into the house the spare bedroom was the only room nobody wanted, so it became the railway room. "
    "The first plan was a simple oval of track on a door laid across two trestles, which my father had used for his "
    "own trains in the sixties and which still had his pencil marks on the underside.",
    "Within a year the oval had grown into a shelf that runs around three walls of the room. The shelf is only "
    "twelve inches deep, but that is enough for a single line with passing loops at each end, a small goods yard "
    "and a station that takes a train of four coaches without anything hanging over the edge.",
    "The scenery is made the old way, with plaster bandage over crumpled newspaper and a coat of brown emulsion "
    "before the scatter goes on. Trees are twisted wire with rubberised horsehair, which takes a whole evening for "
    "three trees but looks better than anything I have bought ready made at the model shop in town.",
    "Visitors always ask how long it took. The honest answer is that it is never finished: every winter something "
    "gets pulled up and rebuilt, and the timetable I run at weekends changes whenever a new engine arrives. If you "
    "are starting out, my advice is to begin small and to make one corner look finished before moving on.",
]


class Web:
    """One HTTP server on 127.0.0.1 (a free port) in a daemon thread; `hits` counts requests by path and `starts`
    keeps (path, time.monotonic()) for every request. `robots` is its robots.txt; `fixed` makes /later answer."""

    def __init__(self, slow_seconds: float = 0.4, hang_seconds: float = 2.0, robots: str | None = None) -> None:
        self.pages = pages()
        self.hits: Counter[str] = Counter()
        self.starts: list[tuple[str, float]] = []
        self.robots = robots if robots is not None else "User-agent: *\nDisallow: /private/\n"
        self.fixed = False
        self.lock = threading.Lock()
        self.slow_seconds = slow_seconds
        self.hang_seconds = hang_seconds
        self.server = QuietServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        web = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def send(self, status: int, ctype: str, body: bytes, extra: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?")[0]
                with web.lock:
                    web.hits[path] += 1
                    web.starts.append((path, time.monotonic()))
                    n = web.hits[path]
                if path == "/robots.txt":
                    return self.send(200, "text/plain", web.robots.encode())
                if path == "/old/railway":  # 2004-era markup: a table layout, a sidebar, unclosed <P>
                    page = OLD_TABLE_PAGE.format(*OLD_TABLE_TEXT)
                    return self.send(200, "text/html; charset=iso-8859-1", page.encode("latin-1"))
                if path == "/huge":  # 20 MB of one article, far past --max-bytes
                    return self.send(200, "text/html; charset=utf-8", HUGE)
                if path.startswith("/loop/"):  # /loop/a -> /loop/b -> /loop/a ...
                    return self.send(302, "text/html", b"", {"Location": "/loop/b" if path == "/loop/a" else "/loop/a"})
                if path == "/later":  # missing until the test fixes it
                    if not web.fixed:
                        return self.send(404, "text/html", b"<html><body>Not yet</body></html>")
                    title, paragraphs = ARTICLES["clock"]
                    return self.send(200, "text/html", article_html(title, paragraphs).encode("utf-8"))
                if path in web.pages:
                    return self.send(*web.pages[path])
                if path == "/go/lighthouse":
                    return self.send(302, "text/html", b"", {"Location": "/go/lighthouse-2"})
                if path == "/go/lighthouse-2":
                    return self.send(301, "text/html", b"", {"Location": web.base + "/news/lighthouse-final"})
                if path == "/error":
                    return self.send(500, "text/html", b"<html><body>Internal error</body></html>")
                if path == "/flaky":  # the first request since the hits were cleared fails: a retry succeeds.
                    # Not "every other request": a request the client sends twice (a keep-alive connection
                    # that broke under load) would then make the retry fail too.
                    if n == 1:
                        return self.send(503, "text/html", b"busy")
                    title, paragraphs = ARTICLES["chess"]
                    return self.send(200, "text/html", article_html(title, paragraphs).encode("utf-8"))
                if path == "/hang":
                    time.sleep(web.hang_seconds)
                    return self.send(200, "text/html", b"<html><body>too late</body></html>")
                if path == "/slow":  # arrives in pieces, slowly, but within the deadline
                    title, paragraphs = ARTICLES["trains"]
                    body = article_html(title, paragraphs).encode("utf-8")
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    step = len(body) // 4 + 1
                    for i in range(0, len(body), step):
                        self.wfile.write(body[i : i + step])
                        self.wfile.flush()
                        time.sleep(web.slow_seconds / 4)
                    return None
                return self.send(404, "text/html", b"<html><body>Not found</body></html>")

        return Handler
