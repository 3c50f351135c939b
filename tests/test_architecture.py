"""docs/architecture.md stays true: its table lists the packages of app/ and what each may
import; every import in app/ (at the top of a module or inside a function) keeps to it; no
area imports `app` itself; and no two modules import each other, however indirectly."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"
# Top-level modules every area may use; they import only core.
SHARED = {"config", "errors", "htmx", "urls"}
ROW_RE = re.compile(r"^\| `(\w+)` \|.*\|([^|]*)\|$")


def written_rules(doc: Path = DOC) -> dict[str, set[str]]:
    """Package -> the packages it may import, from the document's table."""
    rules = {}
    for line in doc.read_text().splitlines():
        match = ROW_RE.match(line)
        if match:
            rules[match.group(1)] = set(re.findall(r"`(\w+)`", match.group(2)))
    return rules


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for a package tree (`root` is the package's folder)."""
    out = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(root: Path) -> dict[str, set[str]]:
    """Module -> the modules (or packages) of the same tree it imports, anywhere in its code
    (inside functions too), but under `if TYPE_CHECKING:` (which never runs)."""
    found = modules(root)
    top = root.name
    edges: dict[str, set[str]] = {}
    for name, path in found.items():
        tree = ast.parse(path.read_text())
        skipped = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
            for inner in ast.walk(node)
        }
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.split(".")[0] == top}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] != top:
                    continue
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    targets.add(full if full in found else target)
        edges[name] = targets - {name}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every group of modules that import one another (Tarjan's strongly connected
    components with more than one module)."""
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in edges:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def broken_rules(edges: dict[str, set[str]], rules: dict[str, set[str]]) -> list[str]:
    """Imports across packages that the written rules do not allow."""
    top = next(iter(edges)).split(".")[0]
    broken = []
    for module, targets in sorted(edges.items()):
        parts = module.split(".")
        own = parts[1] if len(parts) > 1 else ""
        if own in ("", "cli"):  # app/__init__.py wires every area; cli.py makes the app
            continue
        for target in sorted(targets):
            other = target.split(".")[1] if "." in target else ""
            if other == own:
                continue
            if other == "":
                broken.append(f"{module} imports {top} itself")
            elif own in SHARED:
                if other != "core":
                    broken.append(f"{module} (shared by every area) imports {target}")
            elif own not in rules:
                broken.append(f"{module}: package {own} is not in docs/architecture.md")
            elif other not in rules[own] | SHARED:
                broken.append(f"{module} imports {target}: {own} may import {sorted(rules[own])}")
    return broken


def test_the_documented_packages_are_the_packages_of_app():
    packages = {p.parent.name for p in (ROOT / "app").glob("*/__init__.py")}
    assert set(written_rules()) == packages


def test_every_import_keeps_to_the_written_rules():
    assert broken_rules(imports(ROOT / "app"), written_rules()) == []


def test_records_imports_only_core():
    assert written_rules()["records"] == {"core"}
    assert written_rules()["core"] == set()


def test_no_module_imports_another_that_imports_it_back():
    assert cycles(imports(ROOT / "app")) == []


def test_the_checks_find_a_cycle_through_a_function_and_a_broken_rule(tmp_path):
    """The checks themselves, on a small tree: a cycle closed by an import inside a
    function, an area importing one it may not, and one importing the app itself."""
    tree = tmp_path / "pkg"
    for folder in ("core", "records", "webhooks"):
        (tree / folder).mkdir(parents=True)
        (tree / folder / "__init__.py").write_text("")
    (tree / "__init__.py").write_text("def create_app():\n    pass\n")
    (tree / "records" / "a.py").write_text("from ..webhooks import b\n")
    (tree / "webhooks" / "b.py").write_text(
        "def later():\n    from ..records import a\n\n\nfrom .. import create_app\n"
    )
    (tree / "core" / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..records import a\n"
    )
    edges = imports(tree)
    assert cycles(edges) == [["pkg.records.a", "pkg.webhooks.b"]]
    rules = {"core": set(), "records": {"core"}, "webhooks": {"records", "core"}}
    assert broken_rules(edges, rules) == [
        "pkg.records.a imports pkg.webhooks.b: records may import ['core']",
        "pkg.webhooks.b imports pkg itself",
    ]
