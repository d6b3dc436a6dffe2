"""The corpus that needs no download: real English that every Python installation carries, the language
reference's topics (pydoc_data, the text of `help("if")`) and the docstrings of the standard library. `gpt2 demo`
trains on it by default.
"""

from __future__ import annotations

import ast
import json
import sysconfig
from pathlib import Path

from gpt2.errors import GPT2Error
from gpt2.io import atomic_write

# Standard-library folders that are tests, demos or vendored code rather than documentation.
SKIP_PARTS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "turtledemo", "lib2to3", "ensurepip"}


def python_docs() -> list[str]:
    """The documentation text shipped with this Python: one document per reference topic, one per stdlib module
    (its docstrings, in source order). About 2 MB of English on CPython 3.11."""
    docs = []
    try:
        from pydoc_data.topics import topics  # the reference manual's topics, as `help()` shows them

        docs += [text.strip() for _, text in sorted(topics.items()) if text.strip()]
    except ImportError:  # some distributions split pydoc_data off; the docstrings remain
        pass
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        if SKIP_PARTS & set(path.relative_to(stdlib).parts):
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, OSError):
            continue
        nodes = [
            tree,
            *(n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))),
        ]
        parts = [doc for n in nodes if (doc := ast.get_docstring(n)) and len(doc) >= 40]
        if parts:
            docs.append("\n\n".join(parts))
    if not docs:
        raise GPT2Error("found no documentation text in this Python installation; pass --input with your own text")
    return docs


def write_corpus(out: Path) -> Path:
    """python_docs() as out/python_docs.jsonl (one record per document), written once."""
    path = out / "python_docs.jsonl"
    if not path.exists():
        lines = "".join(json.dumps({"text": d}) + "\n" for d in python_docs())
        atomic_write(path, lines)
    return path
