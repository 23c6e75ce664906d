"""Every Python code block of README.md and docs/*.md, run as a user runs it.

Each page's blocks run with none of the test suite's setup (no virtual devices,
no seeds, no conftest): in order, in one namespace (a page may build on its
earlier blocks) and in one temporary directory of their own. The pages share one
fresh Python process (one import of Keras and the backend, not one a page),
Keras's session cleared between them; a page that sets `os.environ` (which must
come before the imports) gets a fresh process of its own. A recipe (a block
whose first line is `# Big tables recipe (...)`) runs alone in its own process,
as a reader pastes it: it carries its own setup. A block runs on every backend
unless a marker on the line before it says otherwise:

* `<!-- backend: jax -->` (or the first line `# Big tables recipe (jax): ...`):
  only under that backend; elsewhere it skips, "this block needs the jax backend".

A block whose first line is `# Scaling out recipe (jax, processes)` or
`# Scaling out recipe (torch, processes)` runs in several processes:
`test_jax_processes.py` and `test_distribution.py` run them.

The charts the docs show are copies of `benchmarks/results/*.png`: checked equal.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import pytest

BACKEND = keras.backend.backend()


ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
_MARKER = re.compile(r"<!--\s*backend:\s*([\w ,]+?)\s*-->")
_RECIPE = re.compile(r"# Big tables recipe \(([\w ]+)\):")
# A recipe of several processes (the Scaling out page), run by its engine's
# test (integration_tests/test_jax_processes.py, test_tf_workers.py,
# test_distribution.py), not here.
SCALING_OUT_RECIPE = "# Scaling out recipe ("
# A page's blocks, each run as a reader runs it: the longest any took here is
# under a minute (a recipe that trains on 8 virtual devices).
_TIMEOUT_S = 300


def _blocks(page):
    """(line, code, backends or None, alone) for each ```python block."""
    text = page.read_text(encoding="utf-8")
    found = []
    for match in _FENCE.finditer(text):
        code = match.group(1)
        if code.startswith(SCALING_OUT_RECIPE):
            continue  # Several processes: its engine's test runs it.
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
        found.append((line, code, backends, recipe is not None))
    return found


def _runs(page):
    """The page's runs: its recipes one each, its other blocks together."""
    together, runs = [], []
    for line, code, backends, alone in _blocks(page):
        if alone:
            runs.append([(line, code, backends)])
        else:
            together.append((line, code, backends))
    return ([together] if together else []) + runs


def _own_process(blocks):
    """Whether a page's run needs a fresh process: a recipe, or blocks that
    set `os.environ` (before their imports)."""
    return (
        len(blocks) == 1
        and _RECIPE.match(blocks[0][1])
        or any("os.environ" in code for _, code, _ in blocks)
    )


_ALONE = [(page, blocks) for page in PAGES for blocks in _runs(page)]
_SHARED = [(page, blocks) for page, blocks in _ALONE if not _own_process(blocks)]
RUNS = [pytest.param(_SHARED, id="pages")] + [
    pytest.param([(page, blocks)], id=f"{page.name}:{blocks[0][0]}")
    for page, blocks in _ALONE
    if _own_process(blocks)
]

# Runs the pages of argv[1] (a JSON list of [path, [[line, code], ...]]): each
# page's blocks in order, in one namespace and a folder of its own, Keras's
# session cleared after it; line numbers in tracebacks are those of the page.
_RUNNER = """
import json, os, sys
pages = json.load(open(sys.argv[1], encoding="utf-8"))
for index, (path, blocks) in enumerate(pages):
    folder = os.path.abspath(str(index))
    os.makedirs(folder)
    os.chdir(folder)
    print("page", path, file=sys.stderr, flush=True)
    namespace = {"__name__": "__main__"}
    for line, code in blocks:
        exec(compile("\\n" * (line - 1) + code, path, "exec"), namespace)
    if len(pages) > 1:
        import keras
        keras.backend.clear_session()
"""


def test_the_docs_have_code_blocks():
    assert sum(len(blocks) for _, blocks in _ALONE) >= 15, _ALONE
    assert len(_SHARED) >= 8, "most pages share one process"


def _runs_here(backends):
    return backends is None or BACKEND in backends


def _user_environment():
    """The environment a user's shell would have: the backend, without the test
    suite's device flags (conftest adds 8 virtual JAX devices)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "XLA_"))}
    env["KERAS_BACKEND"] = BACKEND
    return env


@pytest.mark.parametrize("pages", RUNS)
def test_code_blocks(pages, tmp_path):
    pages = [
        (str(page), [(line, code) for line, code, b in blocks if _runs_here(b)])
        for page, blocks in pages
    ]
    pages = [(page, blocks) for page, blocks in pages if blocks]
    if not pages:
        pytest.skip(f"these blocks need another backend than {BACKEND}")
    script = tmp_path / "blocks.json"
    script.write_text(json.dumps(pages), encoding="utf-8")
    workdir = tmp_path / "work"
    workdir.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", _RUNNER, str(script)],
        cwd=workdir,
        env=_user_environment(),
        capture_output=True,
        text=True,
        timeout=_TIMEOUT_S,
    )
    assert result.returncode == 0, (
        f"{[Path(page).name for page, _ in pages]} failed (the last 'page' line "
        "below names the page):\n" + result.stderr[-6000:]
    )


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


def test_readme_opens_with_the_import_swap_and_a_bag():
    """Before any figure: the import swap, a bag, and how to install from a clone."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    first = _FENCE.search(text)
    figures = text.index("## Reliability")
    assert first and first.start() < figures
    assert "from keras_embedding_plus import Embedding" in first.group(1)
    assert "EmbeddingBag(" in first.group(1)
    install = text.index("pip install")
    assert install < figures and "clone" in text[:install]
