"""Every name the repository's text gives resolves: a path into the tree (`sft/core/loss.py`, `tests/...`,
`docs/...`, `bench/...`, `configs/...`, `assets/...`) exists, and a dotted `sft.` name (`sft.data.rows.load_rows`)
imports as a module, or is an attribute of one.

The text: README.md and docs/*.md, the notebooks' cells, the comments and docstrings of every Python file (and
every string of the package, whose messages name files), the requirements, Makefile, pyproject.toml and
configs/, and the --help of every command (`python -m sft`, eval.py, auto_clean.py). A placeholder (`<wing>`,
`*`, `{name}`) ends a path where it starts, so `tests/<wing>/test_<module>.py` checks `tests/` only.
"""

import argparse
import ast
import importlib
import io
import json
import re
import tokenize
from pathlib import Path

import pytest

from sft.cli import auto_clean, case_study
from sft.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
TOP = ("sft", "tests", "docs", "bench", "configs", "assets")  # the committed folders a text names paths in
# A path starts a word (not inside ../shared/sft/..., a URL or model/sft/) and ends on a name character or '/'.
PATH = re.compile(r"(?<![\w./~-])(?:" + "|".join(TOP) + r")/(?:[\w.-]+/)*(?:[\w.-]*\w)?")
PLACEHOLDER = re.compile(r"[.-]*[<{*]")  # a path's name goes on with a placeholder: only the folder is known
NAME = re.compile(r"(?<![\w./-])sft(?:\.[A-Za-z_]\w*)+")  # sft.data.rows.load_rows; a final '.' ends a sentence
SUFFIXES = (".py", ".ipynb", ".md", ".txt", ".toml", ".yaml", ".yml", ".sh", ".json", ".jsonl", ".png", ".csv")


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_files() -> list[Path]:
    return sorted([*ROOT.glob("*.py"), *(p for d in ("sft", "tests", "bench") for p in (ROOT / d).rglob("*.py"))])


def other_files() -> list[Path]:
    """The tree's text that is neither a page, a notebook nor Python: requirements, Makefile, project, configs."""
    return [ROOT / "requirements.txt", ROOT / "bench" / "requirements.txt", ROOT / "Makefile", ROOT / "pyproject.toml",
            *sorted(p for p in (ROOT / "configs").rglob("*") if p.is_file())]


def notebook_text(path: Path) -> str:
    """Every cell's source, code and markdown."""
    return "\n".join("".join(cell["source"]) for cell in json.loads(path.read_text(encoding="utf-8"))["cells"])


def python_text(path: Path) -> str:
    """A Python file's comments and docstrings; in the package every string too (its messages name files)."""
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source)
    parts = [tok.string for tok in tokenize.generate_tokens(io.StringIO(source).readline)
             if tok.type == tokenize.COMMENT]
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                   ast.ClassDef)))]
    parts += [ast.get_docstring(n) or "" for n in nodes]
    if path.is_relative_to(ROOT / "sft"):
        parts += [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    return "\n".join(parts)


def help_texts() -> dict[str, str]:
    """The --help of every command: `python -m sft` and each of its subcommands, eval.py, auto_clean.py."""
    parser = build_parser()
    out = {"python -m sft": parser.format_help()}
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out |= {f"python -m sft {name}": p.format_help() for name, p in sub.choices.items()}
    out["eval.py"] = case_study.build_parser().format_help()
    out["auto_clean.py"] = auto_clean.build_parser().format_help()
    return out


def mentions(text: str) -> tuple[list[str], list[str]]:
    """(paths into the tree, dotted sft names) that a text names, in order, once each."""
    paths = dict.fromkeys(m.group(0).rpartition("/")[0] + "/" if PLACEHOLDER.match(text, m.end()) else m.group(0)
                          for m in PATH.finditer(text))  # assets/plw_sweep-<name>.png: its folder is checked
    names = dict.fromkeys(m.group(0) for m in NAME.finditer(text))
    return list(paths), [n for n in names if not n.endswith(SUFFIXES)]  # sft.py, sft.jsonl: file names


def resolves(name: str) -> bool:
    """Whether a dotted sft name is a module, or an attribute (a dataclass field too) of the longest module it starts
    with."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            fields = getattr(obj, "__dataclass_fields__", {})
            if hasattr(obj, attr):
                obj = getattr(obj, attr)
            elif attr in fields:
                obj = fields[attr]
            else:
                return False
        return True
    return False


def unresolved(text: str) -> list[str]:
    """Every path and sft name in a text that does not resolve."""
    paths, names = mentions(text)
    return [p for p in paths if not (ROOT / p).exists()] + [n for n in names if not resolves(n)]


def report(where: str, text: str) -> list[str]:
    return [f"{where}: {bad}" for bad in unresolved(text)]


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_pages_name_what_exists(page):
    bad = report(str(page.relative_to(ROOT)), page.read_text(encoding="utf-8"))
    assert not bad, "these names no longer resolve; point them at the current path or module:\n" + "\n".join(bad)


def test_notebooks_name_what_exists():
    bad = [b for nb in sorted(ROOT.glob("*.ipynb")) for b in report(nb.name, notebook_text(nb))]
    assert not bad, "these names no longer resolve; point them at the current path or module:\n" + "\n".join(bad)


def test_comments_docstrings_and_messages_name_what_exists():
    bad = [b for p in python_files() for b in report(str(p.relative_to(ROOT)), python_text(p))]
    assert not bad, "these names no longer resolve; point them at the current path or module:\n" + "\n".join(bad)


def test_requirements_makefile_and_configs_name_what_exists():
    bad = [b for p in other_files() for b in report(str(p.relative_to(ROOT)), p.read_text(encoding="utf-8"))]
    assert not bad, "these names no longer resolve; point them at the current path or module:\n" + "\n".join(bad)


def test_every_commands_help_names_what_exists():
    bad = [b for command, text in help_texts().items() for b in report(f"{command} --help", text)]
    assert not bad, "these names no longer resolve; fix the field comment or help text:\n" + "\n".join(bad)


def test_the_checker_finds_what_the_texts_hold():
    """The parsers see real mentions, so the tests above cannot pass by finding nothing."""
    paths, names = mentions((ROOT / "docs" / "architecture.md").read_text(encoding="utf-8"))
    assert "sft/runs/layout.py" in paths and "tests/test_layers.py" in paths
    assert "sft.studies.demo.ensure_assets" in names
    assert "sft/core/config.py" in mentions(help_texts()["python -m sft train"])[0]
    assert "sft.core.overrides.apply_overrides" in mentions(python_text(ROOT / "sft" / "cli" / "main.py"))[1]
    assert len(help_texts()) >= 12


def test_a_stale_name_is_reported(tmp_path):
    """A stale path and a stale sft name injected into copies of a page, a module and a notebook are each found."""
    stale = "every loss setting is in `sft/loss.py`, see sft.data.load_rows and sft.core.nowhere."
    page = tmp_path / "README.md"
    page.write_text((ROOT / "README.md").read_text(encoding="utf-8") + "\n" + stale + "\n", encoding="utf-8")
    assert unresolved(page.read_text(encoding="utf-8")) == ["sft/loss.py", "sft.data.load_rows", "sft.core.nowhere"]
    module = tmp_path / "loss.py"
    module.write_text((ROOT / "sft" / "core" / "loss.py").read_text(encoding="utf-8")
                      + "\n\ndef f():\n    \"\"\"See sft/prune.py.\"\"\"\n    return 1  # as sft.data.tokenize_rows does\n")
    assert unresolved(python_text(module)) == ["sft/prune.py", "sft.data.tokenize_rows"]
    notebook = json.loads((ROOT / "finetune_masked.ipynb").read_text(encoding="utf-8"))
    notebook["cells"][0]["source"].append("\nEvery setting is in `sft/config.py`.")
    (tmp_path / "nb.ipynb").write_text(json.dumps(notebook), encoding="utf-8")
    assert unresolved(notebook_text(tmp_path / "nb.ipynb")) == ["sft/config.py"]
    assert unresolved("`tests/<wing>/test_<module>.py`, sft/*/__init__.py, ../shared/sft/x.py, sft.core., "
                      "assets/plw_sweep-<name>.png") == []
