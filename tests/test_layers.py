"""The package's import structure: wings (sub-packages) in one direction, every sft import at module top.

`sft/` is a handful of wings, each a folder whose `__init__.py` says what it holds and what it may import
(docs/architecture.md). A module imports modules of its own wing or of a wing its `__init__` names, and those
are below it, never above; the imports among modules form no cycle; and the only imports inside functions are
the command line's one table of commands (sft/cli/main.py), which loads a command's module when that command
runs. Every form of import counts: `from sft.core import x`, `from sft import core`, `import sft.core`, a
relative import, and `importlib.import_module("sft.core...")` (or `__import__`), whose string is read as far as
it is a literal. Each wing's docstring lists its modules, all of them and no others.

Each check is a function of a package folder, so the probe tests at the end can run it on a copy of sft/ with
a bad import injected and see it fail.
"""

import ast
import fnmatch
import re
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sft"

WINGS = ["data", "runs", "models", "core", "evaluation", "studies", "cli"]  # bottom to top: see docs/architecture.md
LAYER = {wing: i for i, wing in enumerate(WINGS)}
LAZY = {"cli/main.py"}  # the one place that imports a command's module when it runs (a fast --help)
MAX_LINES = 420  # "no module over ~400 lines": a module past this holds more than one concern
IMPORTERS = {"import_module", "__import__"}  # importlib.import_module(...), import_module(...), __import__(...)


def _literal_prefix(node: ast.expr) -> str | None:
    """The text of a string argument as far as it is written out: "sft.core.train", or "sft.cli." of f"sft.cli.{m}"."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        return node.values[0].value
    return None


def _imported(node: ast.AST, package: tuple[str, ...]) -> list[str] | None:
    """The sft modules an import statement or call names ('core.train', or a wing: 'core'), or None if it is none.

    `package` is the importing file's package ('sft', 'core'), for relative imports. A call of import_module
    whose argument is not a literal names '?': the checker cannot tell what it loads.
    """
    if isinstance(node, ast.ImportFrom):
        if node.level:  # relative: from . import x, from ..core import y
            base = list(package[:len(package) - node.level + 1]) + (node.module.split(".") if node.module else [])
        else:
            base = node.module.split(".") if node.module else []
        if not base or base[0] != "sft":
            return None
        parts = base[1:]
        if len(parts) == 0:  # from sft import core
            return [a.name for a in node.names]
        return [".".join(parts + [a.name]) for a in node.names] if len(parts) == 1 else [".".join(parts)]
    if isinstance(node, ast.Import):
        return [a.name.split(".", 1)[1] for a in node.names if a.name.startswith("sft.")] or None
    if isinstance(node, ast.Call) and node.args:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
        if name not in IMPORTERS:
            return None
        text = _literal_prefix(node.args[0])
        if text is None:
            return ["?"]
        if text == "sft" or not text.startswith("sft."):
            return None
        wing_and_module = [p for p in text.split(".")[1:3] if p]
        return [".".join(wing_and_module)] if wing_and_module else ["?"]
    return None


def sft_imports(path: Path, package: tuple[str, ...] = ("sft",)) -> list[tuple[str, int, bool]]:
    """(sft module imported, e.g. 'core.train', line, at module top?) for every sft import in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top = {id(node) for node in tree.body}
    top |= {id(n) for node in tree.body if isinstance(node, ast.If) for n in ast.walk(node)}  # TYPE_CHECKING blocks
    top |= {id(n) for node in tree.body if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            for n in ast.walk(node) if isinstance(n, ast.Call)}  # an import_module call run at import time
    found = []
    for node in ast.walk(tree):
        names = _imported(node, package)
        if names:
            found += [(name, node.lineno, id(node) in top) for name in names if name]
    return found


def files_of(package: Path) -> dict[str, Path]:
    """'wing.module' -> path for every file of every wing, its '__init__' included."""
    return {f"{p.parent.name}.{p.stem}": p for p in sorted(package.glob("*/*.py"))}


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    """'wing.module' -> path, for every module of every wing (no __init__)."""
    return {n: p for n, p in files_of(package).items() if not n.endswith(".__init__")}


def imports_of(package: Path) -> dict[str, list[tuple[str, int, bool]]]:
    """Every wing file's sft imports, read as the files' own package would resolve relative ones."""
    return {name: sft_imports(path, ("sft", name.split(".")[0])) for name, path in files_of(package).items()}


def wing_of(name: str) -> str:
    return name.split(".")[0]


def where(name: str) -> str:
    return f"sft/{name.replace('.', '/')}.py"


def wing_doc(package: Path, wing: str) -> str | None:
    return ast.get_docstring(ast.parse((package / wing / "__init__.py").read_text()))


def may_import(package: Path, wing: str) -> set[str] | None:
    """The wings a wing's docstring lets it import (its 'May import' paragraph), None where it has no such line."""
    doc = wing_doc(package, wing)
    if not doc or "May import" not in doc:
        return None
    said = doc.split("May import", 1)[1].split("\n\n")[0]
    return set(re.findall(r"\w+", said)) & set(WINGS)


def listed_modules(package: Path, wing: str) -> list[str]:
    """The module names (or patterns: *_cmd) a wing's docstring lists: the first column of its indented lines."""
    doc = wing_doc(package, wing) or ""
    out = []
    for line in doc.splitlines():
        if re.match(r" {4}\S", line):
            out += [n.strip() for n in re.split(r"\s{2,}", line.strip())[0].split(",") if n.strip()]
    return out


def declaration_problems(package: Path) -> list[str]:
    """Wings without a 'May import' line, or whose line names a wing above them."""
    out = []
    for wing in WINGS:
        allowed = may_import(package, wing)
        if allowed is None:
            out.append(f"sft/{wing}/__init__.py needs a docstring with a 'May import' line (wings below, or nothing)")
        elif above := sorted(w for w in allowed if LAYER[w] >= LAYER[wing]):
            out.append(f"sft/{wing}/__init__.py may import {above}, which are not below it ({' < '.join(WINGS)})")
    return out


def inside_functions(package: Path) -> list[str]:
    """Imports inside a function (outside LAZY), and import_module calls whose module the checker cannot read."""
    out = []
    for name, found in imports_of(package).items():
        out += [f"{where(name)}:{line} calls import_module with a name that is not a literal"
                for mod, line, _ in found if mod == "?"]
        if where(name).removeprefix("sft/") not in LAZY:
            out += [f"{where(name)}:{line} imports sft.{mod} inside a function" for mod, line, at_top in found
                    if not at_top]
    return out


def upward(package: Path) -> list[str]:
    return [f"{where(name)}:{line} ({wing_of(name)}) imports sft.{mod} ({wing_of(mod)})"
            for name, found in imports_of(package).items() for mod, line, _ in found
            if mod != "?" and LAYER[wing_of(mod)] > LAYER[wing_of(name)]]


def undeclared(package: Path) -> list[str]:
    """Imports of a wing that the importing wing's 'May import' paragraph does not name ('nothing' names none)."""
    out = []
    for name, found in imports_of(package).items():
        allowed = (may_import(package, wing_of(name)) or set()) | {wing_of(name)}
        out += [f"{where(name)}:{line} imports sft.{mod}, but sft/{wing_of(name)}/__init__.py may import "
                f"{sorted(allowed - {wing_of(name)}) or 'nothing'}"
                for mod, line, _ in found if mod != "?" and wing_of(mod) not in allowed]
    return out


def module_list_problems(package: Path) -> list[str]:
    out = []
    for wing in WINGS:
        listed = listed_modules(package, wing)
        present = sorted(p.stem for p in (package / wing).glob("*.py") if p.stem != "__init__")
        missing = [m for m in present if not any(fnmatch.fnmatch(m, pat) for pat in listed)]
        stale = [pat for pat in listed if not any(fnmatch.fnmatch(m, pat) for m in present)]
        if missing:
            out.append(f"sft/{wing}/__init__.py does not list {missing}: add a line saying what each holds")
        if stale:
            out.append(f"sft/{wing}/__init__.py lists {stale}, which are not in sft/{wing}/")
    return out


def test_the_package_is_wings_only():
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert not loose, f"put {loose} in a wing (a folder of sft/); docs/architecture.md says which"
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders == sorted(WINGS), f"wings on disk {folders} != WINGS {WINGS}: a new wing is a decision, add it here"


def test_every_wing_says_what_it_may_import():
    problems = declaration_problems(PACKAGE)
    assert not problems, "\n".join(problems)


def test_every_wing_lists_its_modules():
    problems = module_list_problems(PACKAGE)
    assert not problems, "\n".join(problems)


def test_sft_imports_are_at_module_top():
    inside = inside_functions(PACKAGE)
    assert not inside, "move these imports to the top of the module (a cycle they hide must be cut):\n" + \
        "\n".join(inside)


def test_imports_point_down_the_wings():
    found = upward(PACKAGE)
    assert not found, f"imports must point to the same wing or one below ({' < '.join(WINGS)}):\n" + "\n".join(found)


def test_imports_are_the_ones_each_wing_declares():
    found = undeclared(PACKAGE)
    assert not found, "import only what the wing's 'May import' line names, or change the line:\n" + "\n".join(found)


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


# ---------------------------------------------------------------- probes: each bad import fails the checks


PROBED = {"data/rows.py", "models/load.py", "evaluation/plots.py"}  # the modules the probes write into


@pytest.fixture
def package(tmp_path) -> Path:
    """A copy of sft/ to inject a probe into: every file there, the wings' __init__ and the probed modules with
    their text, the other modules empty (parsing all of sft/ for each probe would take seconds)."""
    copy = tmp_path / "sft"
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        (copy / rel).write_text(path.read_text() if rel.name == "__init__.py" or str(rel) in PROBED else '"""."""\n')
    assert not (upward(copy) or undeclared(copy) or inside_functions(copy) or declaration_problems(copy))
    return copy


def inject(path: Path, source: str) -> None:
    """Add source at the end of a file (after its docstring and imports: a statement at module top)."""
    path.write_text(path.read_text() + "\n" + source + "\n")


@pytest.mark.parametrize("source", ["from sft import core", "import sft.core.train", "from ..core import train"])
def test_probe_a_wing_imported_whole_from_below(package, source):
    inject(package / "data" / "rows.py", source)
    assert any(p.startswith("sft/data/rows.py:") and "(core)" in p for p in upward(package)), upward(package)


@pytest.mark.parametrize("source", ['importlib.import_module("sft.core.train")',
                                    'import_module(f"sft.studies.{name}")', '__import__("sft.cli.main")'])
def test_probe_import_module_calls(package, source):
    inject(package / "models" / "load.py", "import importlib\n\ndef f(name):\n    return " + source)
    assert any(p.startswith("sft/models/load.py:") for p in upward(package)), upward(package)
    assert any(p.startswith("sft/models/load.py:") for p in inside_functions(package))


def test_probe_import_module_with_a_name_it_cannot_read(package):
    inject(package / "evaluation" / "plots.py", "import importlib\n\nMOD = importlib.import_module(NAME)")
    assert [p for p in inside_functions(package) if p.startswith("sft/evaluation/plots.py:") and "literal" in p]


def test_probe_an_init_that_says_nothing_but_imports(package):
    init = package / "models" / "__init__.py"
    init.write_text(init.read_text().replace("May import: data, runs.", "May import: nothing of sft.") +
                    "\nfrom sft.data.io import write_jsonl  # noqa: F401\n")
    found = undeclared(package)
    assert any(p.startswith("sft/models/__init__.py:") for p in found), found
    assert any(p.startswith("sft/models/load.py:") for p in found), found  # its modules import data and runs


def test_probe_a_wing_that_lets_itself_import_upward(package):
    init = package / "runs" / "__init__.py"
    init.write_text(init.read_text().replace("May import: data.", "May import: data, core."))
    assert any("sft/runs/__init__.py may import ['core']" in p for p in declaration_problems(package))


def test_probe_a_module_missing_from_its_wings_list(package):
    (package / "core" / "extra.py").write_text('"""A module no docstring lists."""\n')
    assert any("does not list ['extra']" in p for p in module_list_problems(package)), module_list_problems(package)
    (package / "core" / "extra.py").unlink()
    (package / "core" / "loss.py").unlink()
    assert any("lists ['loss']" in p for p in module_list_problems(package)), module_list_problems(package)


def test_every_third_party_import_is_a_declared_dependency():
    """A library a module imports (at its top or inside a function) is in pyproject.toml's dependencies, so
    `pip install .` gives what the package imports; bitsandbytes (QLoRA only, a CUDA build) is the one optional."""
    import importlib.metadata
    import sys
    import tomllib

    declared = {re.split(r"[<>=!~ \[;]", d, maxsplit=1)[0].lower().replace("_", "-")
                for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    distributions = importlib.metadata.packages_distributions()
    imported = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"sft", "bitsandbytes", "__future__"}
    missing = {m: distributions.get(m, [m]) for m in sorted(third_party)
               if not any(d.lower().replace("_", "-") in declared for d in distributions.get(m, [m]))}
    assert not missing, f"add these distributions to pyproject.toml's dependencies: {missing}"


def unused_imports(path: Path) -> list[tuple[int, str]]:
    """(line, name) of every name a file imports and never uses; an import marked `# noqa: F401`, or a name listed
    in __all__, is meant (a re-export)."""
    source = path.read_text()
    tree, lines = ast.parse(source), source.splitlines()
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    used |= {e.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
             and any(isinstance(t, ast.Name) and t.id == "__all__" for t in n.targets)
             for e in getattr(n.value, "elts", []) if isinstance(e, ast.Constant)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and getattr(node, "module", None) != "__future__":
            if "noqa" in lines[node.end_lineno - 1] and "F401" in lines[node.end_lineno - 1]:
                continue
            out += [(node.lineno, name) for a in node.names
                    if (name := a.asname or a.name.split(".")[0]) not in used]
    return out


def test_no_unused_imports():
    found = [f"{p.relative_to(ROOT)}:{line} imports {name} and never uses it"
             for p in sorted(PACKAGE.rglob("*.py")) for line, name in unused_imports(p)]
    assert not found, "drop these imports (or mark one that is meant with `# noqa: F401 (why)`):\n" + "\n".join(found)


def test_the_checker_sees_an_unused_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from __future__ import annotations\nimport json\nimport os.path\nimport time  # noqa: F401 (kept)\n"
                   "from re import match, sub\n\n__all__ = ['sub']\nprint(os.path.sep)\n")
    assert unused_imports(bad) == [(2, "json"), (5, "match")]
