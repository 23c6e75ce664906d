"""JAX: row-sparse gradients and the optimizers' row ops (deduplicate, gather,
scatter).

JAX gradients are dense arrays, one per differentiated input. `RowCapture` (used
by `keras_embedding_plus.training.SparseTrainer`) differentiates with respect to
the looked-up rows instead and hands the optimizer an `IndexedRows`.
"""

import threading

import jax
import jax.numpy as jnp
from keras import ops

from keras_embedding_plus.backends.jax.core import value_of

SPARSE_WITH_MIXED_POLICY = True


_local = threading.local()


def _current_capture():
    return getattr(_local, "capture", None)


def sparse_take(table, ids):
    capture = _current_capture()
    if capture is not None:
        return capture.lookup(table, ids)
    return ops.take(table, ids, axis=0)


def trains_densely(table):
    """Whether a training step is differentiating `table` whole: traced (by
    `jax.grad` / `jit`, as Keras's JAX trainer does) with no `RowCapture`
    active, i.e. a model without `SparseTrainer`."""
    return isinstance(value_of(table), jax.core.Tracer) and _current_capture() is None


def capturing(table):
    """Whether a `RowCapture` is reading `table`'s rows now (JAX training)."""
    capture = _current_capture()
    return capture is not None and capture.reads(table)


class RowCapture:
    """Context: the sparse lookups of `tables` read their rows through it.

    Two modes, used in this order while one training step is traced:

    * `RowCapture(tables)` records the shape and dtype of every lookup's rows
      (call `jax.eval_shape` on the forward pass inside it): `shapes`, and the
      table of each lookup: `tables`.
    * `RowCapture(tables, deltas)` adds `deltas[i]`, a zero array of the `i`-th
      recorded shape, to the rows of the `i`-th lookup, and records its ids in
      `ids`. The gradient with respect to `deltas[i]` is the gradient with
      respect to those rows, and the table itself need not be differentiated.
    """

    def __init__(self, tables, deltas=None):
        self._tables = {id(t): t for t in tables}
        self.deltas = deltas
        self.shapes = []
        self.ids = []
        self.tables = []

    def __enter__(self):
        self._previous = _current_capture()
        _local.capture = self
        return self

    def __exit__(self, *exc_info):
        _local.capture = self._previous

    def reads(self, table):
        """Whether the lookups of `table` go through this capture."""
        return id(table) in self._tables

    def lookup(self, table, ids):
        if not self.reads(table):
            return ops.take(table, ids, axis=0)
        rows = jnp.take(value_of(table), ids, axis=0, mode="clip")
        self.tables.append(table)
        if self.deltas is None:
            self.shapes.append((rows.shape, rows.dtype))
            return rows
        self.ids.append(ids)
        return rows + self.deltas[len(self.ids) - 1]


class IndexedRows:
    """A row-sparse gradient on JAX: `dense[indices[i]] += values[i]`.

    `indices` may repeat; duplicates are summed. Arithmetic with a dense array
    densifies (gradient accumulation, for instance, keeps a dense sum).
    """

    def __init__(self, indices, values, dense_shape):
        self.indices = indices
        self.values = values
        self.shape = tuple(dense_shape)
        self.dtype = values.dtype

    def to_dense(self):
        zeros = jnp.zeros(self.shape, self.dtype)
        return zeros.at[self.indices].add(self.values, mode="drop")

    def _with_values(self, values):
        return IndexedRows(self.indices, values, self.shape)

    def __mul__(self, other):
        return self._with_values(self.values * other)

    __rmul__ = __mul__

    def __truediv__(self, other):
        return self._with_values(self.values / other)

    def __neg__(self):
        return self._with_values(-self.values)

    def __add__(self, other):
        if isinstance(other, IndexedRows):
            return self.to_dense() + other.to_dense()
        return self.to_dense() + value_of(other)

    __radd__ = __add__


def is_row_sparse(gradient):
    return isinstance(gradient, IndexedRows)


def densify_gradient(gradient):
    return gradient.to_dense() if isinstance(gradient, IndexedRows) else gradient


def unique_rows(gradient):
    """`ids` keeps the static length of the gradient: the unused tail holds the
    out-of-range id `dense_shape[0]` with zero values, which `gather_rows`
    reads as zeros and `scatter` drops."""
    indices = gradient.indices.reshape(-1)
    values = gradient.values.reshape((indices.shape[0], -1))
    size = indices.shape[0]
    ids, inverse = jnp.unique(
        indices, size=size, fill_value=gradient.shape[0], return_inverse=True
    )
    summed = jax.ops.segment_sum(values, inverse.reshape(-1), num_segments=size)
    return ids, summed


def gather_rows(variable, ids):
    return jnp.take(value_of(variable), ids, axis=0, mode="fill", fill_value=0)


def scatter(optimizer, variable, ids, rows, how):
    del optimizer
    value = value_of(variable)
    at = value.at[ids]
    rows = rows.astype(value.dtype)
    if how == "update":
        variable.assign(at.set(rows, mode="drop"))
    else:
        variable.assign(at.add(-rows, mode="drop"))


def subtract_scaled(optimizer, variable, gradient, factor):
    del optimizer
    value = value_of(variable)
    rows = gradient.values.reshape((gradient.indices.size, -1))
    rows = (rows * factor).astype(value.dtype)
    variable.assign(value.at[gradient.indices.reshape(-1)].add(-rows, mode="drop"))


def scale_gradient(gradient, factor):
    return gradient * factor


def with_rows(gradient, ids, values):
    return IndexedRows(ids, values, gradient.shape)


def set_rows(variable, ids, rows):
    """`variable[ids] = rows` (`ids` unique; out-of-range ids, the padding of
    `unique_rows`, are dropped)."""
    value = value_of(variable)
    variable.assign(value.at[ids].set(rows.astype(value.dtype), mode="drop"))


def fused_take(table, ids, anchor, update):
    """`table[ids]`. JAX's gradients are values, not side effects: the rows'
    gradient reaches the table's `update` through `SparseTrainer`, which
    captures the rows (`RowCapture`) and calls the owner's update; `anchor`
    and `update` are not used here."""
    del anchor, update
    return sparse_take(table, ids)


# No fused kernel of bags (`pooling.embedding_bag` is None): a stack with its
# own optimizer gathers its rows with `fused_take`, then pools them.
fused_bag = None


def row_chunks(ids, rows):
    """`(ids, rows)` whole: a compiled step's shapes are fixed."""
    yield ids, rows
