"""The documentation holds: every relative link and file path in README.md and docs/*.md resolves in the
repository, every `make` target they name is in the Makefile, and README.md stays a page a newcomer reads."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_LIMIT = 12_000  # bytes, as `wc -c` counts them (at least as many as characters)

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)  # a fenced code block's body
LINK = re.compile(r"!?\[[^\]]*\]\(<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\)")  # [text](target), ![alt](target)
CODE_SPAN = re.compile(r"`([^`\n]+)`")
# A code span that is nothing but a path into the committed tree: the package, tests, benchmarks, configs,
# assets, docs, or a top-level script or notebook. Output folders (model/, evaluation_results/ ...) are left
# out: they exist after a command runs, not in a fresh clone.
REPO_PATH = re.compile(r"(?:sft|tests|bench|configs|assets|docs)(?:/[\w.-]+)*/?|[\w-]+\.(?:py|ipynb)")
MAKE = re.compile(r"(?:^|[\s;&|(])make\s+([A-Za-z0-9][\w.-]*)", re.M)
TARGET = re.compile(r"^([A-Za-z0-9][\w.-]*)\s*:(?!=)", re.M)  # `name:` rules; `X := ...` is an assignment


def page_id(page: Path) -> str:
    """The page's path from the repository root, as the test's id."""
    return str(page.relative_to(ROOT))


def split_code(text: str) -> tuple[str, list[str]]:
    """The page's prose with fenced blocks removed, and every piece of code: fenced block bodies, code spans."""
    blocks = FENCE.findall(text)
    prose = FENCE.sub("", text)
    return prose, blocks + CODE_SPAN.findall(prose)


def links_with_anchors(page: Path) -> list[tuple[str, str]]:
    """(target, anchor) of every markdown link and image outside code that points into the repository."""
    prose, _ = split_code(page.read_text(encoding="utf-8"))
    out = []
    for link in LINK.findall(CODE_SPAN.sub("", prose)):
        if not re.match(r"[a-z][\w+.-]*:", link):  # http:, https:, mailto: are not ours
            target, _, anchor = link.partition("#")
            out.append((target, anchor))
    return out


def links_of(page: Path) -> list[str]:
    """Relative link targets of markdown links and images outside code, without their #anchor."""
    return [t for t, _ in links_with_anchors(page) if t]


def anchors_of(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces to '-', repeats -1, -2."""
    seen: dict[str, int] = {}
    prose, _ = split_code(page.read_text(encoding="utf-8"))
    for heading in re.findall(r"^#+\s+(.+?)\s*#*$", prose, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        seen[slug] = seen.get(slug, -1) + 1
        if seen[slug]:
            seen[f"{slug}-{seen[slug]}"] = 0
    return set(seen)


def paths_of(page: Path) -> list[str]:
    """Code spans that are wholly a path in the committed tree (`sft/core/loss.py`, `configs/accelerate/`, `eval.py`)."""
    spans = CODE_SPAN.findall(FENCE.sub("", page.read_text(encoding="utf-8")))
    return [s for s in spans if REPO_PATH.fullmatch(s)]


def make_targets_named(page: Path) -> list[str]:
    """Every `make X` inside code (a fenced block or a code span) on the page."""
    _, code = split_code(page.read_text(encoding="utf-8"))
    return [t for piece in code for t in MAKE.findall(piece)]


def makefile_targets() -> set[str]:
    """The rule names of the Makefile."""
    return set(TARGET.findall((ROOT / "Makefile").read_text(encoding="utf-8")))


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_relative_links_resolve(page):
    broken = []
    for target in links_of(page):
        path = (page.parent / target).resolve()
        if not path.is_relative_to(ROOT) or not path.exists():
            broken.append(target)
    assert not broken, f"{page_id(page)} links to what is not in the repository: {', '.join(broken)}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_anchors_into_pages_exist(page):
    """A #section of a markdown page that exists names one of its headings (pages not there yet: the test above)."""
    broken = []
    for target, anchor in links_with_anchors(page):
        path = (page.parent / target).resolve() if target else page
        if anchor and path.suffix == ".md" and path.is_file() and anchor not in anchors_of(path):
            broken.append(f"{target}#{anchor}")
    assert not broken, f"{page_id(page)} links to sections that are not there: {', '.join(broken)}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_named_repository_paths_exist(page):
    missing = [p for p in paths_of(page) if not (ROOT / p).exists()]
    assert not missing, f"{page_id(page)} names paths that are not in the repository: {', '.join(missing)}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_make_targets_exist(page):
    targets = makefile_targets()
    missing = sorted({t for t in make_targets_named(page) if t not in targets})
    assert not missing, f"{page_id(page)} names make targets the Makefile lacks: {', '.join(missing)}"


def test_the_checks_see_the_readme():
    """The parsers find what the README plainly holds, so the tests above cannot pass by finding nothing."""
    readme = ROOT / "README.md"
    assert "assets/Comparison.png" in links_of(readme)
    assert "docs/results.md" in links_of(readme)
    assert {"demo", "test", "sweep"} <= set(make_targets_named(readme))
    assert "eval.py" in paths_of(readme) and "auto_clean.py" in paths_of(readme)
    assert {"demo", "test", "sweep", "install", "reference-check"} <= makefile_targets()
    assert "PY" not in makefile_targets()  # `PY := ...` is a variable, not a rule


def test_a_broken_link_is_found(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("[gone](no/such/file.md) [web](https://example.org) [anchor](#here) `make demo`\n")
    assert links_of(page) == ["no/such/file.md"]
    assert make_targets_named(page) == ["demo"]
    page.write_text("# Case studies: `eval.py`\n## Files\n## Files\n")
    assert anchors_of(page) == {"case-studies-evalpy", "files", "files-1"}


def test_readme_is_a_page_a_newcomer_reads():
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_LIMIT, (f"README.md is {size:,} bytes, over {README_LIMIT:,}: move reference material to a "
                                  "page under docs/ and link it")
