"""The package's import structure: wings (sub-packages) in one direction, every sft import at module top.

`sft/` is a handful of wings, each a folder whose `__init__.py` says what it holds (docs/architecture.md). A
module imports modules of its own wing or of a wing below it, never above; the imports among modules form no
cycle; and the only imports inside functions are the command line's one table of commands (sft/cli/main.py),
which loads a command's module when that command runs.
"""

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sft"

WINGS = ["data", "runs", "models", "core", "evaluation", "studies", "cli"]  # bottom to top: see docs/architecture.md
LAYER = {wing: i for i, wing in enumerate(WINGS)}
LAZY = {"sft/cli/main.py"}  # the one place that imports a command's module when it runs (a fast --help)
MAX_LINES = 420  # "no module over ~400 lines": a module past this holds more than one concern


def sft_imports(path: Path) -> list[tuple[str, int, bool]]:
    """(sft module imported, e.g. 'core.train', line, at module top?) for every sft import in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top = {id(node) for node in tree.body}
    top |= {id(n) for node in tree.body if isinstance(node, ast.If) for n in ast.walk(node)}  # TYPE_CHECKING blocks
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "sft":
            parts = node.module.split(".")[1:]
            names = [".".join(parts + [a.name]) for a in node.names] if len(parts) == 1 else [".".join(parts)]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".", 1)[1] for a in node.names if a.name.startswith("sft.")]
        else:
            continue
        found += [(name, node.lineno, id(node) in top) for name in names if name]
    return found


def modules() -> dict[str, Path]:
    """'wing.module' -> path, for every module of every wing."""
    return {f"{p.parent.name}.{p.stem}": p for p in sorted(PACKAGE.glob("*/*.py")) if p.stem != "__init__"}


def wing_of(name: str) -> str:
    return name.split(".")[0]


def test_the_package_is_wings_only():
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert not loose, f"put {loose} in a wing (a folder of sft/); docs/architecture.md says which"
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders == sorted(WINGS), f"wings on disk {folders} != WINGS {WINGS}: a new wing is a decision, add it here"


@pytest.mark.parametrize("wing", WINGS)
def test_every_wing_says_what_it_holds_and_may_import(wing):
    doc = ast.get_docstring(ast.parse((PACKAGE / wing / "__init__.py").read_text()))
    assert doc and "May import" in doc, f"sft/{wing}/__init__.py needs a docstring with a 'May import' line"
    below = WINGS[:LAYER[wing]]
    said = doc.split("May import", 1)[1].split("\n\n")[0]
    assert all(w in said for w in below) or "nothing" in said, f"sft/{wing}'s 'May import' line should name {below}"


def test_sft_imports_are_at_module_top():
    inside = [f"sft/{name.replace('.', '/')}.py:{line} imports sft.{mod} inside a function"
              for name, path in modules().items() if str(path.relative_to(ROOT)) not in LAZY
              for mod, line, at_top in sft_imports(path) if not at_top]
    assert not inside, "move these imports to the top of the module (a cycle they hide must be cut):\n" + \
        "\n".join(inside)


def test_imports_point_down_the_wings():
    upward = [f"sft/{name.replace('.', '/')}.py:{line} ({wing_of(name)}) imports sft.{mod} ({wing_of(mod)})"
              for name, path in modules().items() for mod, line, _ in sft_imports(path)
              if LAYER[wing_of(mod)] > LAYER[wing_of(name)]]
    assert not upward, f"imports must point to the same wing or one below ({' < '.join(WINGS)}):\n" + \
        "\n".join(upward)


def test_no_import_cycles():
    mods = modules()
    graph = {name: {m for m, _, _ in sft_imports(path) if m in mods and m != name} for name, path in mods.items()}
    try:
        list(TopologicalSorter(graph).static_order())
    except CycleError as e:
        raise AssertionError(f"import cycle: {' -> '.join(e.args[1])}") from None


def test_no_module_holds_several_concerns_by_size():
    long = {f"sft/{n.replace('.', '/')}.py": len(p.read_text().splitlines()) for n, p in modules().items()}
    long = {k: v for k, v in long.items() if v > MAX_LINES}
    assert not long, f"split these along their concerns (over {MAX_LINES} lines): {long}"


def test_the_checker_sees_a_function_level_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import json\nfrom sft.runs.layout import run_dir\nfrom sft.core import train\n\n"
                   "def f():\n    from sft.studies.demo import run_demo\n")
    assert sft_imports(bad) == [("runs.layout", 2, True), ("core.train", 3, True), ("studies.demo", 6, False)]
