"""Print the pair table of docs/design.md from `keras_embedding_plus/testing/pairs.py`.

Usage: `python scripts/pair_table.py` (with the package installed, or
`PYTHONPATH=. python scripts/pair_table.py` from the repository root), then paste
the output between the `<!-- pair-table -->` and `<!-- /pair-table -->` markers of
`docs/design.md` (`tests/lookup/test_pipeline.py::test_docs_pair_table` checks it).
"""

from keras_embedding_plus.testing import pairs

if __name__ == "__main__":
    print(pairs.markdown_table(), end="")
