"""The package's shape: imports run one way (no circles, counting imports inside functions), library modules
never parse argv, and the `gpt2` command starts without loading torch where the command does not need it."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "gpt2"

# Floors, bottom up: a module imports only from its own floor or lower ones (README, "Layout").
FLOORS = [
    {"gpt2.errors", "gpt2.io", "gpt2.hub", "gpt2.kernels", "gpt2.devices", "gpt2.python_docs", "gpt2.fused_loss"},
    {"gpt2.checkpoint", "gpt2.tokenizer"},
    {"gpt2.model", "gpt2.quantize", "gpt2.bpe_train", "gpt2.data"},
    {"gpt2.generate"},
    {
        "gpt2.train_config",
        "gpt2.train",
        "gpt2.perf",
        "gpt2.plot",
        "gpt2.evaluate",
        "gpt2.analysis",
        "gpt2.serve",
        "gpt2.webtext",
    },
    {"gpt2.commands", "gpt2.cli", "gpt2.__main__", "gpt2"},
]
# The one arrow upward: GPT.generate, a convenience over gpt2.generate, which imports gpt2.model for type hints
# only; a circle would still fail test_no_import_circles.
UPWARD = {("gpt2.model", "gpt2.generate")}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_only(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"


def imports_of(name: str) -> set[str]:
    """The package modules that `name` imports anywhere (module level, functions, methods), except under
    `if TYPE_CHECKING:`, which never runs. `from gpt2.x import y` counts as gpt2.x.y when y is a module."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking_only(node):
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "gpt2")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "gpt2":
            for a in node.names:
                found.add(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(MODULES[name].read_text("utf-8")))
    found.discard(name)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def floor(name: str) -> int:
    for level, names in enumerate(FLOORS):
        if any(name == n or name.startswith(n + ".") for n in names if n != "gpt2") or name in names:
            return level
    raise AssertionError(f"{name} is on no floor: add it to FLOORS and to the README's layout")


def test_every_module_is_found_and_has_a_floor() -> None:
    assert {"gpt2.model", "gpt2.commands.train", "gpt2.evaluate.tasks.lambada", "gpt2.io"} <= set(MODULES)
    for name in MODULES:
        floor(name)


def test_no_import_circles() -> None:
    # depth-first search for a back edge; the path to it is the circle
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        for dep in sorted(GRAPH.get(name, ())):
            if state.get(dep) == 1:
                circle = path[path.index(dep) :] + [dep]
                pytest.fail("import circle: " + " -> ".join(circle))
            if dep not in state:
                visit(dep)
        path.pop()
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)


def test_imports_point_down() -> None:
    upward = [f"{a} -> {b}" for a, deps in GRAPH.items() for b in deps if floor(b) > floor(a) and (a, b) not in UPWARD]
    assert not upward, "imports that point up a floor: " + ", ".join(sorted(upward))


def test_the_leaf_and_the_library_stay_what_they_are() -> None:
    assert GRAPH["gpt2.io"] <= {"gpt2.errors"}
    library = [n for n in MODULES if floor(n) < len(FLOORS) - 1]
    for name in library:
        tree = ast.parse(MODULES[name].read_text("utf-8"))
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert "argparse" not in imported, f"{name} parses command lines; that belongs in gpt2.commands"
    commands = {n for n in MODULES if n.startswith("gpt2.commands.")}
    from gpt2.cli import COMMANDS

    assert {f"gpt2.commands.{module}" for module, _ in COMMANDS.values()} == commands


STARTUP = """
import json, sys
from gpt2.cli import main
loaded = {}
for argv in json.loads(sys.argv[1]):
    try:
        main(argv)
    except SystemExit as e:
        assert not e.code, (argv, e.code)
    loaded[" ".join(argv)] = sorted(m for m in ("torch", "transformers", "matplotlib") if m in sys.modules)
print(json.dumps(loaded))
"""


def test_help_and_the_tokenizer_never_load_torch(tmp_path: Path, shared_data: Path) -> None:
    from gpt2.cli import COMMANDS

    vocab = str(shared_data / "gpt2-vocab")
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text("utf-8")[:50_000]
    (tmp_path / "a.txt").write_text(text, "utf-8")
    runs = [["--help"], *([name, "--help"] for name in COMMANDS), ["tokenizer", "train", "--help"]]
    runs += [
        ["tokenizer", "encode", "--tokenizer", vocab, "--text", "Hello world"],
        ["tokenizer", "decode", "--tokenizer", vocab, "15496", "995"],
        ["tokenizer", "train", "--input", str(tmp_path / "a.txt"), "--vocab-size", "300", "--output",
         str(tmp_path / "tok"), "--quiet", "--workers", "1"],
        ["prepare", "--input", str(tmp_path / "a.txt"), "--tokenizer", str(tmp_path / "tok"), "--output",
         str(tmp_path / "data"), "--quiet"],
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", STARTUP, json.dumps(runs)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.splitlines()[-1])
    assert loaded == {" ".join(argv): [] for argv in runs}
