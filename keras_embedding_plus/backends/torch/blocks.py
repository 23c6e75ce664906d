"""PyTorch: rows of a variable read, written and filled by blocks (big tables
built, saved and loaded by blocks), and snapshots of a variable's value."""

import torch
from keras import ops

from keras_embedding_plus.backends.torch.core import value_of


def snapshot(variable):
    """A copy, where the variable lives (`assign` writes in place)."""
    return variable.value.detach().clone()


def writes_rows_in_place():
    return True


def builds_by_blocks():
    return True


def write_rows(variable, start, rows):
    """Rows `start ...` of the variable set to `rows`, in place (`copy_`, as
    Keras's own assign)."""
    value = value_of(variable)
    rows = ops.convert_to_tensor(rows)
    with torch.no_grad():
        value[start : start + rows.shape[0]].copy_(rows)


def read_rows(variable, start, stop):
    """Rows `start:stop` of a variable (a view)."""
    return value_of(variable).detach()[start:stop]


def fill_rows(variable, start, rows):
    """`write_rows` into a table being built (`_chunks.initialize`)."""
    write_rows(variable, start, rows)


def gathered(value):
    """`value` itself: every process holds whole tables here."""
    return value
