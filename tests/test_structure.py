"""The package's shape: rooms with one job (no module over 600 lines but the CLI), no
import circle (lazy imports inside functions count too), and the tree formatted with
``ruff format`` (the style the project commits to)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "icl_heads"
MAX_LINES = 600
#: Modules allowed to be longer, with the reason.
LONG_MODULES = {"cli.py": "one argparse subcommand per analysis; no logic of its own"}


def _modules() -> dict[Path, str]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[path] = ".".join(parts).removesuffix(".__init__")
    return out


def _import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its file (relative imports
    resolved). A package's ``__init__`` is a node like any module (importing from a package
    runs it), so a circle through a package's re-exports counts too; ``from . import x``
    names the submodule only."""
    modules = _modules()
    names = set(modules.values())
    graph: dict[str, set[str]] = {m: set() for m in names}
    for path, module in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            candidates = [f"{target}.{a.name}" for a in node.names]
            if node.module:
                candidates.append(target)
            for candidate in candidates:
                if candidate in names and candidate != module:
                    graph[module].add(candidate)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, done = [], set()

    def visit(node: str, stack: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in stack:
                found.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in done:
                visit(nxt, stack + [nxt])
        done.add(node)

    for start in sorted(graph):
        if start not in done:
            visit(start, [start])
    return found


def test_no_module_of_the_package_is_over_600_lines_but_the_cli():
    long = {
        str(p.relative_to(ROOT)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
        and p.name not in LONG_MODULES
    }
    assert not long, f"modules over {MAX_LINES} lines (split them into rooms): {long}"


def test_the_package_has_no_import_circle():
    cycles = _cycles(_import_graph())
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_circle_check_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_tree_is_formatted_with_ruff():
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    run = subprocess.run(
        [ruff, "format", "--check", "icl_heads", "tests", "benchmarks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, (
        f"run `ruff format icl_heads tests benchmarks`:\n{run.stdout[-2000:]}"
    )
