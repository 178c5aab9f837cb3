"""The floor plan: which package may import which, no circles, no oversized files.

Read from the source with `ast` (every import, deferred ones inside functions included), so a
violation fails here whether or not a test happens to run the importing code.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "tokensft"
STAGES = ("preprocess", "train", "analysis", "reports")
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The tokensft modules `path` imports, anywhere in the file: `from a.b import c` counts as a.b.c
    when c is a module, else as a.b."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names if alias.name.startswith("tokensft")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tokensft"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.add(full if full in modules else node.module)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) for name, path in modules.items()}


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in (*STAGES, "core") else None


def test_core_imports_no_stage():
    bad = [(m, i) for m, imports in _graph().items() if _stage(m) == "core" for i in imports if _stage(i) in STAGES]
    assert not bad, f"core/ must not import a stage: {bad}"


def test_train_analysis_reports_never_import_preprocess():
    bad = [(m, i) for m, imports in _graph().items() if _stage(m) in ("train", "analysis", "reports")
           for i in imports if _stage(i) == "preprocess"]
    assert not bad, f"only preprocess/ (and the CLI) may import tokensft.preprocess: {bad}"


def test_analysis_draws_nothing_and_trains_nothing():
    bad = [(m, i) for m, imports in _graph().items() if _stage(m) == "analysis"
           for i in imports if _stage(i) in ("reports", "train", "preprocess")]
    assert not bad, f"analysis/ computes; reports/ draws: {bad}"


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A circle of imports (module names, first == last), or None. Depth-first search with colours."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if state.get(nxt) is None and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if state.get(node) is None and (found := visit(node)):
            return found
    return None


def test_no_import_circles():
    # a package's __init__ re-exporting its submodules is not a circle: drop edges from a package to
    # its own submodules, which is what `from tokensft.analysis.x import y` inside the package means
    graph = {m: {i for i in imports if not i.startswith(m + ".")} for m, imports in _graph().items()}
    assert _cycle(graph) is None, f"import circle: {' -> '.join(_cycle(graph))}"


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_file_over_the_limit():
    long = {str(p.relative_to(SRC)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"split these by concept (at most {MAX_LINES} lines): {long}"


def test_the_command_line_builds_without_heavy_imports():
    """Every subcommand's parser (train's help lists the objectives) is built for every command, and
    every command prints through reports.console: `tokensft inspect` or a masks-only `enrich` must
    not pay for importing torch, transformers, datasets, pandas or matplotlib."""
    import subprocess
    import sys

    heavy = ("torch", "transformers", "datasets", "pandas", "matplotlib")
    code = (f"import sys, tokensft.cli as c; c.build_parser(); "
            f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}); assert not heavy, heavy[:5]")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
