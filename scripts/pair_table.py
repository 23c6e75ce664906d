"""Print the pair table of docs/design.md (issue 11) from `tests/pairs.py`.

Usage: `python scripts/pair_table.py`, then paste the output between the
`<!-- pair-table -->` and `<!-- /pair-table -->` markers of `docs/design.md`
(`tests/test_pairs.py::test_docs_pair_table` checks it).
"""

import os
import sys

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests")
)

import pairs  # noqa: E402

if __name__ == "__main__":
    print(pairs.markdown_table(), end="")
