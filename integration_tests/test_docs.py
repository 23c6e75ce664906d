"""Every Python code block of README.md and docs/*.md, run as written.

Blocks of one page run in order in one namespace (a page may build on its earlier
blocks) and in one temporary directory. A block runs on every backend unless a
marker on the line before it says otherwise:

* `<!-- backend: jax -->` (or the first line `# Big tables recipe (jax): ...`):
  only under that backend; elsewhere it skips, "this block needs the jax backend".

The charts the docs show are copies of `benchmarks/results/*.png`: checked equal.
"""

import re
from pathlib import Path

import keras
import pytest

BACKEND = keras.backend.backend()


ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
_MARKER = re.compile(r"<!--\s*backend:\s*([\w ,]+?)\s*-->")
_RECIPE = re.compile(r"# Big tables recipe \(([\w ]+)\):")


def _blocks(page):
    """(line, code, backends or None) for each ```python block."""
    text = page.read_text(encoding="utf-8")
    found = []
    for match in _FENCE.finditer(text):
        code = match.group(1)
        backends = None
        # The marker: the HTML comment line right above the fence.
        before = text[: match.start()].rstrip("\n").split("\n")[-1]
        marker = _MARKER.fullmatch(before.strip())
        if marker is not None:
            backends = tuple(n.strip() for n in marker.group(1).split(","))
        recipe = _RECIPE.match(code)
        if recipe and recipe.group(1) != "every backend":
            backends = (recipe.group(1),)
        line = text.count("\n", 0, match.start()) + 2
        found.append((line, code, backends))
    return found


BLOCKS = [
    pytest.param(page, line, code, backends, id=f"{page.name}:{line}")
    for page in PAGES
    for line, code, backends in _blocks(page)
]

# One namespace and one working directory per page, shared by its blocks.
_PAGE_STATE = {}


def test_the_docs_have_code_blocks():
    assert len(BLOCKS) >= 15, len(BLOCKS)


def _runs_here(backends):
    return backends is None or BACKEND in backends


def _run_block(page, line, code, namespace):
    try:
        # Padded so that tracebacks give the line numbers of the page.
        exec(compile("\n" * (line - 1) + code, str(page), "exec"), namespace)
    finally:
        if BACKEND == "jax":
            keras.distribution.set_distribution(None)


@pytest.mark.parametrize("page, line, code, backends", BLOCKS)
def test_code_block(page, line, code, backends, tmp_path_factory, monkeypatch):
    if not _runs_here(backends):
        pytest.skip(f"this block needs the {' or '.join(backends)} backend")
    if page not in _PAGE_STATE:
        _PAGE_STATE[page] = (
            {"__name__": "__docs__"},
            tmp_path_factory.mktemp("docs"),
            set(),
        )
    namespace, workdir, done = _PAGE_STATE[page]
    monkeypatch.chdir(workdir)
    # The page's earlier blocks first, where this process has not run them (under
    # pytest-xdist another worker may have): each block sees what the page
    # defined before it, whichever worker runs it.
    for earlier, earlier_code, earlier_backends in _blocks(page):
        if earlier >= line:
            break
        if earlier not in done and _runs_here(earlier_backends):
            _run_block(page, earlier, earlier_code, namespace)
            done.add(earlier)
    done.add(line)
    _run_block(page, line, code, namespace)


@pytest.mark.parametrize(
    "chart",
    sorted((ROOT / "benchmarks" / "results").glob("*.png")),
    ids=lambda p: p.name,
)
def test_chart_copies_are_current(chart):
    copy = ROOT / "docs" / "assets" / chart.name
    assert copy.exists(), f"docs/assets/{chart.name} missing: copy it from {chart}"
    assert copy.read_bytes() == chart.read_bytes(), (
        f"docs/assets/{chart.name} differs from {chart}: copy it again"
    )


def test_readme_links_resolve():
    """The README's relative links (to the docs pages) point at files."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#]+)\)", text)
    local = [link for link in links if "://" not in link]
    assert local, "the README links to no docs page"
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, missing


def test_readme_size():
    """The README is a front page, the docs are the manual (<= 8 KB)."""
    assert (ROOT / "README.md").stat().st_size <= 8 * 1024
