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

The backend code lives in `_backends` (`native`); this module is what the layer
and the optimizers call.
"""

from keras import ops

from keras_embedding_plus.backends import native


def lookup(table, ids):
    """`ops.take(table, ids, axis=0)` whose gradient stays row-sparse.

    `table` is the layer's `keras.Variable`; `ids` are valid integer ids.
    """
    return native.sparse_take(table, ids)


def capturing(table):
    """Whether JAX's `SparseTrainer` is reading `table`'s rows now."""
    return native.capturing(table)


def densify(gradient):
    """A dense version of any row-sparse `gradient` (or `gradient` itself)."""
    return native.densify_gradient(gradient)


# ---- the optimizers' side: deduplicate, gather, scatter ------------------------


def is_row_sparse(gradient):
    return native.is_row_sparse(gradient)


def unique_rows(gradient):
    """`(ids, values)`: the rows of a row-sparse `gradient`, duplicates summed.

    On JAX, `ids` keeps the static length of the gradient, padded with the
    out-of-range id `dense_shape[0]` and zero rows, which `gather` reads as
    zeros and `scatter_*` drop.
    """
    return native.unique_rows(gradient)


def gather(variable, ids):
    """Rows `ids` of `variable` (zeros for JAX's out-of-range padding ids)."""
    return native.gather_rows(variable, ids)


def scatter_update(optimizer, variable, ids, rows):
    """`variable[ids] = rows` in place (`ids` unique)."""
    native.scatter(optimizer, variable, ids, rows, "update")


def scatter_sub(optimizer, variable, ids, rows):
    """`variable[ids] -= rows` in place (`ids` unique)."""
    native.scatter(optimizer, variable, ids, rows, "sub")


def subtract_scaled(optimizer, variable, gradient, factor):
    """`variable -= factor * gradient` for a row-sparse `gradient` (duplicate
    ids summed by the scatter-add itself)."""
    native.subtract_scaled(optimizer, variable, gradient, factor)


def norm_squared(gradient):
    """Squared L2 norm of a gradient, sparse (deduplicated) or dense."""
    if is_row_sparse(gradient):
        gradient = unique_rows(gradient)[1]
    return ops.sum(ops.square(gradient))


def scale(gradient, factor):
    """`gradient * factor`, keeping a row-sparse gradient row-sparse."""
    return native.scale_gradient(gradient, factor)


def with_rows(gradient, ids, values):
    """A row-sparse gradient of the same type as `gradient`, with unique rows."""
    return native.with_rows(gradient, ids, values)


def check_sparse(sparse, policy=None):
    """Validate `Embedding`'s `sparse` argument (with the layer's dtype policy)."""
    if not isinstance(sparse, bool):
        raise ValueError(
            "`sparse` must be a boolean. "
            f"Received: sparse={sparse!r} (of type {type(sparse).__name__})."
        )
    mixed = policy is not None and policy.compute_dtype != policy.variable_dtype
    if sparse and mixed and not native.SPARSE_WITH_MIXED_POLICY:
        raise ValueError(
            "On PyTorch, `sparse=True` cannot be combined with the mixed dtype "
            f"policy '{policy.name}': torch cannot carry the sparse gradient of the "
            f"{policy.variable_dtype} table back through Keras's cast to "
            f"{policy.compute_dtype}. Use `sparse=False`, or a non-mixed policy "
            f"(e.g. 'float32' or '{policy.compute_dtype}'). Received: sparse=True, "
            f"dtype={policy.name!r}."
        )
    return sparse
