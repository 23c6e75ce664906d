"""`padding_idx`, with PyTorch's meaning: one row that starts at zeros and never trains.

* `check(padding_idx, input_dim)` validates the argument; a negative index wraps
  (`-1` is the last row), as in `torch.nn.Embedding`.
* `initializer(base, padding_idx)` wraps the table's (and LoRA `A`'s) initializer
  so that the padding row is built as zeros. A table given explicitly
  (`weights=`, `set_weights`, loading a file) keeps the values it is given, as
  PyTorch keeps `_weight`.
* `FrozenRow` is the last row transform of the lookup pipeline: the rows of the
  padding id pass through `stop_gradient`, so the table's gradient (dense or
  row-sparse, on every backend, also through JAX's `SparseTrainer`) is zero on
  that row and no optimizer moves it.
"""

import numbers

import keras
from keras import ops


def check_padding_idx(padding_idx, input_dim):
    """`padding_idx` as a row index in `[0, input_dim)`, or None."""
    if padding_idx is None:
        return None
    if (
        not isinstance(padding_idx, numbers.Integral)
        or isinstance(padding_idx, bool)
        or not -input_dim <= padding_idx < input_dim
    ):
        raise ValueError(
            "`padding_idx` must be None or an integer in "
            f"[-input_dim, input_dim) = [{-input_dim}, {input_dim}) (negative "
            "values count from the end, as in PyTorch). "
            f"Received: padding_idx={padding_idx!r} "
            f"(of type {type(padding_idx).__name__})."
        )
    return int(padding_idx) % input_dim


def initializer(base, padding_idx):
    """`base` (anything `keras.initializers.get` takes), with row `padding_idx`
    set to zeros."""
    base = keras.initializers.get(base)
    if padding_idx is None:
        return base

    def init(shape, dtype=None):
        value = base(shape, dtype=dtype)
        keep = ops.not_equal(ops.arange(shape[0]), padding_idx)
        keep = ops.reshape(keep, (shape[0],) + (1,) * (len(shape) - 1))
        return ops.where(keep, value, ops.zeros((), dtype=value.dtype))

    return init


class FrozenRow:
    """Row transform: no gradient flows into the rows of `padding_idx`."""

    def __init__(self, padding_idx):
        self.padding_idx = padding_idx

    def rows(self, rows, ids, valid, gather, training):
        frozen = ops.expand_dims(ops.equal(ids, self.padding_idx), -1)
        return ops.where(frozen, ops.stop_gradient(rows), rows)

    def table(self, table):
        return table
