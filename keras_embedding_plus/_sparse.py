"""Row-sparse gradients: the per-backend plumbing behind `Embedding(sparse=True)`.

A training step reads at most `batch x length` rows of an embedding table, so its
gradient has at most that many non-zero rows. Each backend can carry such a
row-sparse gradient, each in its own type:

* TensorFlow: `tf.IndexedSlices`, produced by `tf.gather` on the `tf.Variable`
  itself (a `ResourceGather`). `keras.ops.take` first reads the whole table into a
  tensor, which the optimizer's in-place update must then copy: a step costs
  O(vocabulary) although its gradient is sparse.
* PyTorch: a sparse COO tensor, produced by `F.embedding(..., sparse=True)`.
* JAX: gradients are dense arrays, one per differentiated input. `RowCapture`
  (used by `keras_embedding_plus.training.SparseTrainer`) differentiates with
  respect to the looked-up rows instead and hands the optimizer an `IndexedRows`.

Every function here takes the backend's own types and imports it lazily.
"""

import threading

from keras import backend, ops


def _native(variable):
    """The backend value of a `keras.Variable` (or `variable` itself)."""
    return getattr(variable, "value", variable)


# ---- the forward lookup -------------------------------------------------------


def lookup(table, ids):
    """`ops.take(table, ids, axis=0)` whose gradient stays row-sparse.

    `table` is the layer's `keras.Variable`; `ids` are valid integer ids.
    """
    name = backend.backend()
    if name == "tensorflow":
        import tensorflow as tf

        if not isinstance(ids, tf.RaggedTensor):
            # On the variable itself: a ResourceGather, which never reads the
            # whole table, and whose gradient is an `IndexedSlices`.
            return tf.gather(_native(table), ids)
    elif name == "torch":
        import torch

        return torch.nn.functional.embedding(ids, _native(table), sparse=True)
    elif name == "jax":
        capture = _current_capture()
        if capture is not None:
            return capture.lookup(table, ids)
    return ops.take(table, ids, axis=0)


# ---- JAX: differentiate with respect to the looked-up rows --------------------

_local = threading.local()


def _current_capture():
    return getattr(_local, "capture", None)


def capturing(table):
    """Whether a `RowCapture` is reading `table`'s rows now (JAX training)."""
    capture = _current_capture()
    return capture is not None and id(table) in capture._tables


class RowCapture:
    """Context: the sparse lookups of `tables` read their rows through it (JAX).

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

    def lookup(self, table, ids):
        if id(table) not in self._tables:
            return ops.take(table, ids, axis=0)
        import jax.numpy as jnp

        rows = jnp.take(_native(table), ids, axis=0, mode="clip")
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
        import jax.numpy as jnp

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
        return self.to_dense() + _native(other)

    __radd__ = __add__


def densify(gradient):
    """A dense version of any row-sparse `gradient` (or `gradient` itself)."""
    if isinstance(gradient, IndexedRows):
        return gradient.to_dense()
    name = backend.backend()
    if name == "tensorflow":
        import tensorflow as tf

        if isinstance(gradient, tf.IndexedSlices):
            return tf.convert_to_tensor(gradient)
    elif name == "torch":
        if getattr(gradient, "is_sparse", False):
            return gradient.to_dense()
    return gradient


# ---- the optimizers' side: deduplicate, gather, scatter ------------------------


def is_row_sparse(gradient):
    if isinstance(gradient, IndexedRows):
        return True
    name = backend.backend()
    if name == "tensorflow":
        import tensorflow as tf

        return isinstance(gradient, tf.IndexedSlices)
    if name == "torch":
        return bool(getattr(gradient, "is_sparse", False))
    return False


def unique_rows(gradient):
    """`(ids, values)`: the rows of a row-sparse `gradient`, duplicates summed.

    On JAX, `ids` keeps the static length of the gradient: the unused tail holds
    the out-of-range id `dense_shape[0]` with zero values, which `gather`
    reads as zeros and `scatter_*` drop.
    """
    if isinstance(gradient, IndexedRows):
        import jax
        import jax.numpy as jnp

        indices = gradient.indices.reshape(-1)
        values = gradient.values.reshape((indices.shape[0], -1))
        size = indices.shape[0]
        ids, inverse = jnp.unique(
            indices, size=size, fill_value=gradient.shape[0], return_inverse=True
        )
        summed = jax.ops.segment_sum(values, inverse.reshape(-1), num_segments=size)
        return ids, summed
    name = backend.backend()
    if name == "tensorflow":
        import tensorflow as tf

        ids, position = tf.unique(tf.reshape(gradient.indices, [-1]))
        values = tf.reshape(gradient.values, [-1, *gradient.values.shape[1:]])
        summed = tf.math.unsorted_segment_sum(values, position, tf.shape(ids)[0])
        return ids, summed
    # torch: a sparse COO tensor with one sparse dimension (the rows). Eager
    # even under `torch.compile`, which cannot trace sparse tensors; copies, so
    # that the compiled code after it receives plain tensors, not views.
    import torch

    return torch.compiler.disable(_coalesced_rows)(gradient)


def _coalesced_rows(gradient):
    gradient = gradient.coalesce()
    return gradient.indices()[0].clone(), gradient.values().clone()


def gather(variable, ids):
    """Rows `ids` of `variable` (zeros for JAX's out-of-range padding ids)."""
    value = _native(variable)
    name = backend.backend()
    if name == "jax":
        import jax.numpy as jnp

        return jnp.take(value, ids, axis=0, mode="fill", fill_value=0)
    if name == "tensorflow":
        import tensorflow as tf

        return tf.gather(value, ids)
    return value.index_select(0, ids)


def scatter_update(optimizer, variable, ids, rows):
    """`variable[ids] = rows` in place (`ids` unique)."""
    _scatter(optimizer, variable, ids, rows, "update")


def scatter_sub(optimizer, variable, ids, rows):
    """`variable[ids] -= rows` in place (`ids` unique)."""
    _scatter(optimizer, variable, ids, rows, "sub")


def _scatter(optimizer, variable, ids, rows, how):
    name = backend.backend()
    if name == "tensorflow":
        import tensorflow as tf

        slices = tf.IndexedSlices(rows, ids)
        if how == "update":
            optimizer.assign(variable, slices)
        else:
            optimizer.assign_sub(variable, slices)
    elif name == "torch":
        import torch

        with torch.no_grad():
            value = _native(variable)
            rows = rows.to(value.dtype)
            if how == "update":
                value.index_copy_(0, ids, rows)
            else:
                value.index_add_(0, ids, rows, alpha=-1)
    else:
        value = _native(variable)
        at = value.at[ids]
        rows = rows.astype(value.dtype)
        if how == "update":
            variable.assign(at.set(rows, mode="drop"))
        else:
            variable.assign(at.add(-rows, mode="drop"))


def norm_squared(gradient):
    """Squared L2 norm of a gradient, sparse (deduplicated) or dense."""
    if is_row_sparse(gradient):
        gradient = unique_rows(gradient)[1]
    return ops.sum(ops.square(gradient))


def scale(gradient, factor):
    """`gradient * factor`, keeping a row-sparse gradient row-sparse."""
    name = backend.backend()
    if name == "tensorflow":
        import tensorflow as tf

        if isinstance(gradient, tf.IndexedSlices):
            return tf.IndexedSlices(
                gradient.values * factor, gradient.indices, gradient.dense_shape
            )
    return gradient * factor


def with_rows(gradient, ids, values):
    """A row-sparse gradient of the same type as `gradient`, with unique rows."""
    if isinstance(gradient, IndexedRows):
        return IndexedRows(ids, values, gradient.shape)
    name = backend.backend()
    if name == "tensorflow":
        import tensorflow as tf

        return tf.IndexedSlices(values, ids, gradient.dense_shape)
    import torch

    return torch.sparse_coo_tensor(
        ids.unsqueeze(0),
        values,
        gradient.shape,
        is_coalesced=True,
        check_invariants=False,
    )


def check_sparse(sparse, policy=None):
    """Validate `Embedding`'s `sparse` argument (with the layer's dtype policy)."""
    if not isinstance(sparse, bool):
        raise ValueError(
            "`sparse` must be a boolean. "
            f"Received: sparse={sparse!r} (of type {type(sparse).__name__})."
        )
    mixed = policy is not None and policy.compute_dtype != policy.variable_dtype
    if sparse and mixed and backend.backend() == "torch":
        raise ValueError(
            "On PyTorch, `sparse=True` cannot be combined with the mixed dtype "
            f"policy '{policy.name}': torch cannot carry the sparse gradient of the "
            f"{policy.variable_dtype} table back through Keras's cast to "
            f"{policy.compute_dtype}. Use `sparse=False`, or a non-mixed policy "
            f"(e.g. 'float32' or '{policy.compute_dtype}'). Received: sparse=True, "
            f"dtype={policy.name!r}."
        )
    return sparse
