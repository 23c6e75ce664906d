"""`examples/recommender.py`: generated multi-hot data, `fit`, `.keras`,
reloaded in a fresh process with equal predictions (the example checks that itself).
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import pytest

# The slowest tests: run them alone with `-m slow`, or skip them with
# `-m "not slow"` (CONTRIBUTING.md).
pytestmark = pytest.mark.slow

BACKEND = keras.backend.backend()


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "recommender.py"


def test_recommender_example_runs_and_leaves_no_temporary_folder(tmp_path):
    # Without --out, the .keras file goes to a temporary folder, deleted after.
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--epochs", "2"],
        cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(scratch)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"backend {BACKEND}" in result.stdout, result.stdout
    match = re.search(r"max difference ([0-9.e+-]+)", result.stdout)
    assert match and float(match.group(1)) <= 1e-5, result.stdout
    assert "deleted a temporary file" in result.stdout, result.stdout
    # (`tempfile`'s folders start with "tmp"; torch's caches may also go there.)
    leftovers = [p for p in scratch.rglob("*") if p.name.startswith("tmp")]
    leftovers += list(scratch.rglob("recommender.keras"))
    assert not leftovers, leftovers
