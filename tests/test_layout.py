"""The floor plan: which package may import which, no circles, no oversized files.

Read from the source with `ast` (every import, deferred ones inside functions included), so a
violation fails here whether or not a test happens to run the importing code.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "tokensft"
MAX_LINES = 400
# The floors of the house, bottom up. A package imports only from floors below its own (and from
# itself); the stages on one floor never import each other.
FLOORS = {
    "core": 0,  # the Arrow contract (schema, reader), models and the model pass, files, locks, run identity
    "records": 1,  # SFT records: read, normalized, rendered into token ids with target spans
    "preprocess": 2, "train": 2, "analysis": 2,  # the stages that write scored datasets, train on them, compute
    "reports": 3,  # draws what analysis computes, words what commands print
    "evaluate": 4,  # measures: trains arms (train), draws the sweep (reports), reads the guidance (analysis)
    "commands": 5,  # the command line (commands/, cli, __main__): wires every stage
}
STAGES = ("preprocess", "train", "analysis", "reports", "evaluate")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _binds(package: Path, name: str) -> bool:
    """Whether a package's __init__ binds `name` itself (`from .summary import summary` makes
    `tokensft.analysis.summary` the function, not the module)."""
    init = package / "__init__.py"
    if not init.is_file():
        return False
    for node in ast.parse(init.read_text(encoding="utf-8")).body:  # module level: a lazy __getattr__'s imports bind nothing
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any((a.asname or a.name) == name for a in node.names):
            return True
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
            return True
    return False


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The tokensft modules `path` imports, anywhere in the file: `from a.b import c` counts as a.b.c
    when c is a module that a.b's __init__ does not shadow with a name of its own, else as a.b."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names if alias.name.startswith("tokensft")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tokensft"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                package = SRC.joinpath(*node.module.split("."))
                out.add(full if full in modules and not _binds(package, alias.name) else node.module)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) for name, path in modules.items()}


def _package(module: str) -> str | None:
    """The top-level package of a tokensft module (core, records, train, ...; None for `tokensft` itself).
    cli and __main__ are rooms of the command line, with commands/."""
    parts = module.split(".")
    if len(parts) == 1:
        return None
    return "commands" if parts[1] in ("cli", "__main__") else parts[1]


def test_every_package_has_a_floor():
    packages = {_package(m) for m in _modules()} - {None}
    assert packages <= set(FLOORS), f"give each package its floor in FLOORS: {sorted(packages - set(FLOORS))}"


def test_every_import_goes_down_a_floor():
    """core imports no other package, records only core, a stage never a stage of its own floor or above."""
    bad = [(m, i) for m, imports in _graph().items() if _package(m) is not None for i in imports
           if _package(i) is not None and _package(i) != _package(m) and FLOORS[_package(i)] >= FLOORS[_package(m)]]
    assert not bad, f"an import up or across a floor: {bad}"


def test_no_stage_imports_preprocess():
    """Reading and rendering records is the records floor's; the scoring stage is wired by the command line alone."""
    bad = [(m, i) for m, imports in _graph().items() if _package(m) in STAGES and _package(m) != "preprocess"
           for i in imports if _package(i) == "preprocess"]
    assert not bad, f"only preprocess/ and the command line may import tokensft.preprocess: {bad}"


def test_a_stage_enters_another_through_its_door():
    """A stage uses another stage's package names (`from tokensft.train import train`), never its modules."""
    bad = [(m, i) for m, imports in _graph().items() if _package(m) in STAGES for i in imports
           if _package(i) in STAGES and _package(i) != _package(m) and i != f"tokensft.{_package(i)}"]
    assert not bad, f"import the stage's package, not its internals: {bad}"


def test_the_floor_checks_can_fail():
    """The rules above on a made-up graph: each violation is found."""
    graph = {"tokensft.core.a": {"tokensft.records.b"}, "tokensft.evaluate.c": {"tokensft.preprocess.d"},
             "tokensft.reports.e": {"tokensft.analysis.f"}, "tokensft.train.g": {"tokensft.analysis"}}
    up = [(m, i) for m, imports in graph.items() for i in imports if FLOORS[_package(i)] >= FLOORS[_package(m)]]
    assert up == [("tokensft.core.a", "tokensft.records.b"), ("tokensft.train.g", "tokensft.analysis")]
    through_the_wall = [(m, i) for m, imports in graph.items() for i in imports if i != f"tokensft.{_package(i)}"
                        and _package(i) in STAGES and _package(m) in STAGES]
    assert through_the_wall == [("tokensft.evaluate.c", "tokensft.preprocess.d"), ("tokensft.reports.e",
                                                                                  "tokensft.analysis.f")]


def test_analysis_draws_nothing_and_trains_nothing():
    bad = [(m, i) for m, imports in _graph().items() if _package(m) == "analysis"
           for i in imports if _package(i) in ("reports", "train", "preprocess", "evaluate")]
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


WALK = """
import json, sys
from tokensft.commands import evaluate
from tokensft.commands.common import Parser

parser = Parser(prog="tokensft")
evaluate.add(parser.add_subparsers(dest="command", required=True))  # eval's and sweep's flags alone
for argv in json.loads(sys.argv[1]):
    args = parser.parse_args(argv)
    args.argv = argv
    assert args.func(args) == 0, argv
print(json.dumps(sorted(m for m in sys.modules if m.startswith("tokensft"))))
"""


def test_an_eval_and_a_sweep_never_enter_preprocess(tmp_path, tiny_dirs):
    """The walk of an eval's (and a sweep's) config from commands/evaluate through the house, run for
    real in a fresh process: every module it imports, deferred ones included, is on a floor the
    eval may stand on, and none is tokensft.preprocess."""
    import json
    import subprocess
    import sys

    from conftest import write_jsonl
    from test_enrich import scored

    data = scored(tmp_path, tiny_dirs["bpe"])  # the sweep's training data, made here (by score) beforehand
    heldout = write_jsonl(tmp_path / "heldout.jsonl", [{"question": "What is 2 + 2?", "answer": "#### 4"},
                                                       {"question": "Hi", "answer": "#### 0"}])
    model = str(tiny_dirs["bpe"])
    runs = [["eval", model, str(heldout), "-o", str(tmp_path / "eval"), "--max-new-tokens", "4", "-q"],
            ["sweep", str(data), "--objectives", "nll", "--eval", str(heldout), "-o", str(tmp_path / "sweep"),
             "--model", model, "--max-steps", "1", "--max-new-tokens", "4", "-q"]]
    done = subprocess.run([sys.executable, "-c", WALK, json.dumps(runs)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    entered = json.loads(done.stdout.splitlines()[-1])
    assert (tmp_path / "eval" / "results.json").is_file() and (tmp_path / "sweep" / "results.json").is_file()
    assert not [m for m in entered if _package(m) == "preprocess"], entered
    rooms = {_package(m) for m in entered} - {None}
    assert rooms == {"commands", "core", "records", "evaluate", "train", "analysis", "reports"}, rooms
    assert {"tokensft.records.render", "tokensft.core.scorer", "tokensft.evaluate.teacher_forced"} <= set(entered)
