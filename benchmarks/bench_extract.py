"""Main-text extractors compared on hand-written pages in the styles of the 2005-2017 web (tests/webtext_pages/):
layout tables with sidebars, <font>/<center>/<br><br> markup, unclosed <P>, a forum, a <pre> file, blogs, and modern
article pages, each with its ground truth beside it (NAME.json: title, headings, paragraphs in order, boilerplate
strings that must not appear, optional lines that may).

    python benchmarks/bench_extract.py [--set all|development|held-out] [--repeat 3] [--json PATH] [--dump DIR]
                                       [--only NAME ...] [--verbose]

Per candidate, over the pages (text compared with whitespace collapsed):
  recall      ground-truth paragraphs found as a line of their own, on old-style and on modern pages
  merged      output lines holding the start or end of more than one ground-truth paragraph
  glued       headings (the title and sub-headings) on a line that also holds paragraph text
  leaked      listed boilerplate strings found in the output
  unexpected  output lines that are none of paragraph text, a heading, an optional line or listed boilerplate
  empty       pages with no output
  cpu ms      CPU time per page (time.process_time of this process, median of --repeat passes; wall time would
              count whatever else shares the cores)
Candidates whose library is not installed are left out with a note. Pages marked "held-out" were written after the
chosen extractor was designed, to check it on layouts it was not tuned on.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
PAGES = ROOT / "tests" / "webtext_pages"
FRAGMENT = 40  # characters of a paragraph's start or end that identify it inside a merged line


def norm(text: str) -> str:
    return " ".join(text.split())


# ------------------------------------------------------------------------------------------------ scoring
def score(output: str | None, truth: dict) -> dict:
    """The metrics of one extractor output against one page's ground truth."""
    lines = [norm(line) for line in (output or "").split("\n") if line.strip()]
    paragraphs = [norm(p) for p in truth["paragraphs"]]
    headings = [norm(h) for h in [truth["title"], *truth["headings"]]]
    optional = [norm(o) for o in truth["optional"]]
    boilerplate = truth["boilerplate"]

    def held(line: str) -> set[int]:
        return {i for i, p in enumerate(paragraphs) if p[:FRAGMENT] in line or p[-FRAGMENT:] in line}

    def glued(heading: str) -> bool:
        for line in lines:
            rest = line
            for p in paragraphs:  # a heading's words inside its own paragraph are not a glued heading
                rest = rest.replace(p, "\0")
            if heading in rest and rest != heading and ("\0" in rest or held(rest)):
                return True
        return False

    found = sum(p in lines for p in paragraphs)
    leaked = [b for b in boilerplate if any(b in line for line in lines)]
    unexpected = [
        line
        for line in lines
        if not held(line)
        and not any(p and line in p for p in paragraphs)
        and line not in headings
        and not any(line in o for o in optional)
        and not any(b in line for b in boilerplate)
    ]
    return {
        "paragraphs": len(paragraphs),
        "found": found,
        "merged": sum(len(held(line)) > 1 for line in lines),
        "headings": len(headings),
        "glued": [h for h in headings if glued(h)],
        "boilerplate": len(boilerplate),
        "leaked": leaked,
        "unexpected": unexpected,
        "empty": not lines,
    }


# ------------------------------------------------------------------------------------------------ candidates
def trafilatura_candidate(**options) -> Callable[[str], str | None]:
    from trafilatura import extract
    from trafilatura.deduplication import LRU_TEST

    def run(html: str) -> str | None:
        LRU_TEST.clear()  # deduplicate=True counts text seen in earlier documents; each page is scored as if first
        return extract(html, include_comments=False, deduplicate=True, **options)

    return run


INLINE = {"a", "abbr", "acronym", "b", "big", "br", "cite", "code", "em", "font", "i", "img", "kbd", "nobr", "q",
          "s", "samp", "small", "span", "strike", "strong", "sub", "sup", "tt", "u", "var"}  # fmt: skip


def paragraphise(html: str):
    """The fix trafilatura's own model would need: layout tables (nested, or with a long or <br>-broken cell) become
    <div>s, and every run of inline content between <br><br> (or beside block children) becomes a <p>."""
    import lxml.html

    from gpt2.webtext.extract import _dom, _normalise

    root = _dom(html)
    if root is None:
        return html
    _normalise(root)
    for table in root.xpath("//table"):
        cells = table.xpath("./tr/td|./*/tr/td")
        if table.find(".//table") is not None or any(
            len(c.xpath(".//br")) > 1 or len(c.text_content()) > 200 or c.find(".//p") is not None for c in cells
        ):
            for el in table.iter("table", "tbody", "thead", "tfoot", "tr", "td", "th"):
                el.tag = "div"
    for el in reversed(list(root.iter("td", "th", "div", "center", "font", "span", "blockquote", "body", "p"))):
        kids = list(el)
        runs = [i for i, k in enumerate(kids[:-1]) if k.tag == "br" == kids[i + 1].tag and not (k.tail or "").strip()]
        mixed = any(k.tag not in INLINE for k in kids if isinstance(k.tag, str)) and (el.text or "").strip()
        if not runs and not mixed:
            continue
        groups: list = [lxml.html.Element("p")]
        groups[0].text, el.text = el.text, None
        for i, kid in enumerate(kids):
            if kid.tag == "br" and (i in runs or i - 1 in runs):
                groups.append(lxml.html.Element("p"))
                groups[-1].text = kid.tail
                el.remove(kid)
            elif isinstance(kid.tag, str) and kid.tag not in INLINE:
                tail, kid.tail = kid.tail, None
                groups += [kid, lxml.html.Element("p")]
                groups[-1].text = tail
            else:
                groups[-1].append(kid)
        for group in groups:
            if group.tag != "p" or len(group) or (group.text or "").strip():
                el.append(group)
        if el.tag in INLINE or el.tag == "p":
            el.tag = "div"
    return root


def paragraphised_trafilatura(**options) -> Callable[[str], str | None]:
    run = trafilatura_candidate(**options)
    return lambda html: run(paragraphise(html))


def justext_candidate() -> Callable[[str], str | None]:
    import justext

    stoplist = justext.get_stoplist("English")
    return lambda html: "\n".join(p.text for p in justext.justext(html, stoplist) if not p.is_boilerplate)


def normalised_justext(confine: bool) -> Callable[[str], str | None]:
    from gpt2.webtext.extract import _blocks, _dom, _lines, _normalise

    def run(html: str) -> str | None:
        root = _dom(html)
        if root is None:
            return None
        _normalise(root)
        blocks = _blocks(root, confine=confine)
        return _lines(blocks) if blocks else None

    return run


def chosen() -> Callable[[str], str | None]:
    from gpt2.webtext.extract import main_text

    return main_text


def resiliparse_candidate() -> Callable[[str], str | None]:
    from resiliparse.extract.html2text import extract_plain_text

    # alt texts and bullets off: spacer and navigation images have alt texts, and bullets are not the author's text
    return lambda html: extract_plain_text(html, main_content=True, alt_texts=False, list_bullets=False)


def readability_candidate() -> Callable[[str], str | None]:
    import inscriptis
    from readability import Document

    return lambda html: inscriptis.get_text(Document(html).summary(html_partial=True))  # its HTML, rendered to text


def inscriptis_candidate() -> Callable[[str], str | None]:
    import inscriptis

    return inscriptis.get_text  # the whole page as text: the ceiling of recall, the floor of precision


def newspaper_candidate() -> Callable[[str], str | None]:
    import newspaper

    def run(html: str) -> str | None:
        article = newspaper.Article("http://example.com/page.html", fetch_images=False)
        article.download(input_html=html)
        article.parse()
        return article.text

    return run


CANDIDATES: dict[str, tuple[str, Callable[[], Callable[[str], str | None]]]] = {
    "trafilatura precision (today)": ("trafilatura", lambda: trafilatura_candidate(favor_precision=True)),
    "trafilatura default": ("trafilatura", lambda: trafilatura_candidate()),
    "trafilatura recall": ("trafilatura", lambda: trafilatura_candidate(favor_recall=True)),
    "trafilatura precision, no tables": (
        "trafilatura",
        lambda: trafilatura_candidate(favor_precision=True, include_tables=False),
    ),
    "trafilatura default, no tables": ("trafilatura", lambda: trafilatura_candidate(include_tables=False)),
    "trafilatura recall, no tables": (
        "trafilatura",
        lambda: trafilatura_candidate(favor_recall=True, include_tables=False),
    ),
    "trafilatura precision, paragraphised": ("trafilatura", lambda: paragraphised_trafilatura(favor_precision=True)),
    "trafilatura default, paragraphised": ("trafilatura", lambda: paragraphised_trafilatura()),
    "jusText": ("jusText", justext_candidate),
    "jusText, normalised DOM": ("jusText", lambda: normalised_justext(confine=False)),
    "jusText, normalised, confined": ("jusText", lambda: normalised_justext(confine=True)),
    "main_text (chosen)": ("jusText", chosen),
    "resiliparse main_content": ("resiliparse", resiliparse_candidate),
    "readability-lxml": ("readability-lxml", readability_candidate),
    "newspaper4k": ("newspaper4k", newspaper_candidate),
    "inscriptis (whole page)": ("inscriptis", inscriptis_candidate),
}


# ------------------------------------------------------------------------------------------------ running
def load_pages(folder: Path, subset: str) -> list[tuple[str, str, dict]]:
    pages = []
    for path in sorted(folder.glob("*.html")):
        truth = json.loads(path.with_suffix(".json").read_text("utf-8"))
        if subset == "all" or truth["set"] == subset:
            pages.append((path.stem, path.read_text("utf-8"), truth))
    return pages


def measure(fn: Callable[[str], str | None], pages: list, repeat: int) -> tuple[dict, dict[str, str]]:
    fn(pages[0][1])  # imports and caches are not the page's cost
    outputs: dict[str, str] = {}
    per_page: dict[str, dict] = {}
    passes = []
    for r in range(repeat):
        total = 0.0
        for name, html, truth in pages:
            start = time.process_time()
            out = fn(html)
            total += time.process_time() - start
            if r == 0:
                outputs[name] = out or ""
                per_page[name] = {"era": truth["era"], "set": truth["set"], **score(out, truth)}
        passes.append(total)

    def recall(era: str) -> float | None:
        rows = [p for p in per_page.values() if p["era"] == era]
        return sum(p["found"] for p in rows) / sum(p["paragraphs"] for p in rows) if rows else None

    rows = per_page.values()
    summary = {
        "recall": sum(p["found"] for p in rows) / sum(p["paragraphs"] for p in rows),
        "recall_old": recall("old"),
        "recall_modern": recall("modern"),
        "paragraphs": sum(p["paragraphs"] for p in rows),
        "merged": sum(p["merged"] for p in rows),
        "glued": sum(len(p["glued"]) for p in rows),
        "headings": sum(p["headings"] for p in rows),
        "leaked": sum(len(p["leaked"]) for p in rows),
        "boilerplate": sum(p["boilerplate"] for p in rows),
        "unexpected": sum(len(p["unexpected"]) for p in rows),
        "empty": sum(p["empty"] for p in rows),
        "cpu_ms_per_page": 1000 * statistics.median(passes) / len(pages),
        "pages": per_page,
    }
    return summary, outputs


def installed(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def percent(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pages", type=Path, default=PAGES, help="folder of NAME.html + NAME.json")
    p.add_argument("--set", default="all", choices=["all", "development", "held-out"])
    p.add_argument("--repeat", type=int, default=3, help="timed passes over the pages; the median is reported")
    p.add_argument("--only", nargs="+", metavar="NAME", help="candidates whose name contains one of these")
    p.add_argument("--json", type=Path, help="write every metric, per page too, to this file")
    p.add_argument("--dump", type=Path, help="write each candidate's output to DIR/CANDIDATE/PAGE.txt")
    p.add_argument("--verbose", action="store_true", help="per page: what was missed, merged, glued, leaked")
    args = p.parse_args()

    pages = load_pages(args.pages, args.set)
    if not pages:
        sys.exit(f"no pages in {args.pages} for --set {args.set}")
    old = sum(t["era"] == "old" for _, _, t in pages)
    print(f"{len(pages)} pages ({old} old-style, {len(pages) - old} modern) from {args.pages}, --set {args.set}")
    results: dict[str, dict] = {}
    versions: dict[str, str] = {}
    for name, (distribution, make) in CANDIDATES.items():
        if args.only and not any(o.lower() in name.lower() for o in args.only):
            continue
        found = installed(distribution)
        if found is None:
            print(f"  {name}: skipped, {distribution} is not installed")
            continue
        versions[distribution] = found
        summary, outputs = measure(make(), pages, args.repeat)
        results[name] = summary
        if args.dump:
            folder = args.dump / re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
            folder.mkdir(parents=True, exist_ok=True)
            for page, text in outputs.items():
                (folder / f"{page}.txt").write_text(text + "\n", "utf-8")
        if args.verbose:
            print(f"\n{name}")
            for page, row in summary["pages"].items():
                problems = []
                if row["found"] < row["paragraphs"]:
                    problems.append(f"{row['paragraphs'] - row['found']} of {row['paragraphs']} paragraphs not a line")
                problems += [f"{row['merged']} merged lines"] * bool(row["merged"])
                problems += [f"glued {row['glued']}"] * bool(row["glued"])
                problems += [f"leaked {row['leaked']}"] * bool(row["leaked"])
                problems += [f"{len(row['unexpected'])} unexpected lines"] * bool(row["unexpected"])
                print(f"  {page:28s} {'; '.join(problems) or 'ok'}")

    r0 = next(iter(results.values()), None)
    if r0 is None:
        sys.exit("no candidate ran")
    print(f"\n{'candidate':38s} {'recall':>6s} {'old':>5s} {'modern':>6s} {'merged':>6s} {'glued':>5s} "
          f"{'leaked':>6s} {'unexp.':>6s} {'empty':>5s} {'cpu ms':>7s}")  # fmt: skip
    for name, r in results.items():
        print(f"{name:38s} {percent(r['recall']):>6s} {percent(r['recall_old']):>5s} {percent(r['recall_modern']):>6s} "
              f"{r['merged']:>6d} {r['glued']:>5d} {r['leaked']:>6d} {r['unexpected']:>6d} {r['empty']:>5d} "
              f"{r['cpu_ms_per_page']:>7.1f}")  # fmt: skip
    print(f"\nout of {r0['paragraphs']} paragraphs, {r0['headings']} headings and {r0['boilerplate']} boilerplate "
          f"strings; cpu ms is the median of {args.repeat} passes")  # fmt: skip
    print("versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
    if args.json:
        args.json.write_text(json.dumps({"set": args.set, "versions": versions, "candidates": results}, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
