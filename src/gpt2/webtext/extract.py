"""Main text of a web page for the WebText corpus: paragraphs one to a line, headings on lines of their own.

Much of the 2005-2017 web is laid out with tables, <font>, <center> and <br><br> rather than <p>, and trafilatura
(datatrove's extractor) joins such layout cells into one line and keeps their sidebars. Here jusText classifies the
page's blocks (alone by length, stopword and link density, then by their neighbours) on a DOM whose source line
wraps are spaces and whose single <br> is a line break; neighbours may promote a block only inside the part of the
page that holds the blocks good alone. A page with no block good alone (a story of one-sentence paragraphs) goes to
trafilatura. benchmarks/bench_extract.py measures this and the alternatives on tests/webtext_pages/.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

import lxml.html
from datatrove.pipeline.extractors.base import BaseExtractor
from justext import get_stoplist
from justext.core import ParagraphMaker, classify_paragraphs, preprocessor, revise_paragraph_classification
from lxml import etree
from trafilatura import extract

from gpt2.webtext.local import die_with_parent

_SPACE = re.compile(r"\s+")
_VERBATIM = {"pre", "textarea"}  # whitespace is content there (hard-wrapped text files, code)


def _dom(html: str) -> Any | None:
    """The page's DOM, or None when it has no elements. Parsed from UTF-8 bytes because lxml refuses str input that
    carries an XML encoding declaration; huge_tree, as libxml2 otherwise drops what is nested over 255 deep."""
    if not html or not html.strip():
        return None
    parser = lxml.html.HTMLParser(encoding="utf-8", huge_tree=True)
    try:
        return lxml.html.document_fromstring(html.encode("utf-8", "replace"), parser=parser)
    except (etree.ParserError, ValueError):
        return None


def _normalise(root: Any) -> None:
    """Source line breaks become spaces, outside <pre> and <textarea>; a <font> inside another is unwrapped (old
    pages that leave <font> unclosed nest it hundreds deep, and jusText's work per block grows with the depth)."""
    for font in root.xpath("//font[ancestor::font]"):
        font.drop_tag()
    verbatim = 0  # how many <pre> or <textarea> are open around the current node
    for event, node in etree.iterwalk(root, events=("start", "end", "comment", "pi")):
        if event == "start":
            verbatim += node.tag in _VERBATIM
            if node.text and not verbatim:
                node.text = _SPACE.sub(" ", node.text)
            continue
        if event == "end":
            verbatim -= node.tag in _VERBATIM
        if node.tail and not verbatim:  # after its element, or a comment's
            node.tail = _SPACE.sub(" ", node.tail)


@cache
def _stopwords() -> frozenset[str]:
    return get_stoplist("English")  # read from the package's files on every call


def _within(xpath: str, area: str) -> bool:
    return xpath == area or xpath.startswith(area + "/")


def _area(paragraphs: list, anchors: list) -> str:
    """The smallest element holding every anchor (block good on its own) and at least one other block."""
    steps = [p.xpath.split("/") for p in anchors]
    common = []
    for step in zip(*steps, strict=False):  # up to the shortest path
        if len(set(step)) > 1:
            break
        common.append(step[0])
    while len(common) > 1:
        area = "/".join(common)
        if sum(_within(p.xpath, area) for p in paragraphs) > 1:
            return area
        common.pop()
    return "/".join(common)


class _BlockMaker(ParagraphMaker):
    """jusText's splitter into blocks (at block elements and <br><br>), keeping a single <br> as a line break
    where jusText makes it a space."""

    def startElementNS(self, name: tuple, qname: Any, attrs: Any) -> None:
        nodes = self.paragraph.text_nodes
        super().startElementNS(name, qname, attrs)
        if name[1] == "br" and self.paragraph.text_nodes is nodes and nodes and nodes[-1] == " ":
            nodes[-1] = "\n"


def _blocks(root: Any, confine: bool = True) -> list[str] | None:
    """The texts of the blocks jusText keeps, or None when no block is good on its own (nothing to anchor its
    context rules). With `confine`, blocks promoted by their neighbours are kept only inside `_area`."""
    paragraphs = _BlockMaker.make_paragraphs(preprocessor(root))  # the preprocessor works on a copy
    classify_paragraphs(paragraphs, _stopwords())
    revise_paragraph_classification(paragraphs)
    anchors = [p for p in paragraphs if p.cf_class == "good"]
    if not anchors:
        return None
    area = _area(paragraphs, anchors) if confine else ""
    return [p.text for p in paragraphs if p.class_type == "good" and (p.cf_class == "good" or _within(p.xpath, area))]


def _lines(texts: list[str]) -> str | None:
    lines = (line.strip() for text in texts for line in text.split("\n"))
    return "\n".join(line for line in lines if line) or None


def main_text(html: str) -> str | None:
    """The main text of an HTML page, one paragraph (or <br>-broken line) per line, headings on lines of their own;
    None when there is none."""
    root = _dom(html)
    if root is None:
        return None
    _normalise(root)
    blocks = _blocks(root)
    if blocks is not None:
        return _lines(blocks)

    # No paragraph long enough to anchor jusText: trafilatura finds the story by its markup. Tables off, as their
    # cells come out joined on one line; deduplicate off, as it depends on the documents seen before.
    text = extract(root, favor_precision=True, include_comments=False, include_tables=False, deduplicate=False)
    return _lines([text]) if text else None


class MainText(BaseExtractor):
    """Main text by `main_text`: jusText on a normalised DOM, trafilatura where jusText finds no anchor. Chosen by
    benchmarks/bench_extract.py on hand-written old table-layout and modern pages: it kept the most paragraphs on
    lines of their own with the fewest leaks, where trafilatura merged layout cells into one line and kept sidebars."""

    name = "⛏ MainText"
    _requires_dependencies = ["justext", "trafilatura"]

    def __init__(self, timeout: float = 10.0) -> None:
        super().__init__(timeout)

    def extract(self, text: str) -> str | None:
        die_with_parent()  # this runs in datatrove's extraction subprocess, which would outlive a killed run
        return main_text(text)
