"""How one variable's rows are read by id: dense, row-sparse or placed.

One `gather(variable, ids, valid) -> (rows, valid)` is chosen for a layer
(`make_gather`) and reads every variable read by id (the table, its quantization
scales and zero points, LoRA's `A`), so that `sparse` and `device` hold on every
path. The ids are never negative here (the index policy made them so), so the
backends' own gathers skip `ops.take`'s wrap-around pass over them: JAX fills
invalid ids with zero rows in the gather itself; TensorFlow and torch call
`tf.gather` / `torch.nn.functional.embedding`, what `ops.take` ends with.

Row-sparse gradients, per backend (the code is in `backends/<name>/sparse.py`):

* TensorFlow: `tf.IndexedSlices`, produced by `tf.gather` on the `tf.Variable`
  itself (a `ResourceGather`). `keras.ops.take` first reads the whole table into a
  tensor, which the optimizer's in-place update must then copy: a step costs
  O(vocabulary) although its gradient is sparse.
* PyTorch: a sparse COO tensor, produced by `F.embedding(..., sparse=True)`.
* JAX: gradients are dense arrays, one per differentiated input. `RowCapture`
  (used by `keras_embedding_plus.training.SparseTrainer`) differentiates with
  respect to the looked-up rows instead and hands the optimizer an `IndexedRows`.
"""

import functools
import warnings

from keras import ops

from keras_embedding_plus import backends


def _sparse_gather(variable, ids, valid):
    """Rows whose gradient stays row-sparse."""
    return backends.sparse.sparse_take(variable, ids), valid


def _placed_gather(variable, ids, valid, placement, sparse):
    """Rows read where the variable lives; only the rows move."""
    return backends.placement.take(variable, ids, placement, sparse), valid


def make_gather(sparse, placement):
    """`gather(variable, ids, valid) -> (rows, valid)`, as `backends.ids.take`.

    `valid` comes back `None` where the rows of invalid ids already are zero.
    """
    if placement is not None:
        return functools.partial(_placed_gather, placement=placement, sparse=sparse)
    if sparse:
        return _sparse_gather
    return backends.ids.take


def gather_column(gather, variable, ids, valid):
    """`gather` of a 1-D variable (one value a row), as a column and back."""
    rows, valid = gather(ops.expand_dims(variable, -1), ids, valid)
    return rows[..., 0], valid


def warn_dense_training(name):
    """Warn that layer `name`'s sparse table is trained densely (JAX without
    `SparseTrainer`, see `backends.sparse.trains_densely`)."""
    warnings.warn(
        f"Layer '{name}' has `sparse=True`, but on JAX its table is trained "
        "densely here: the model lacks the `SparseTrainer` mixin, so Keras's "
        "JAX trainer builds an (input_dim, output_dim) gradient every step, as "
        "with `sparse=False`. Add the mixin (`class Model(SparseTrainer, "
        "keras.Model)`, from `keras_embedding_plus.training`), or call "
        "`sparse_train_step` from a custom `train_step`, and use a lazy "
        "optimizer (`LazyAdam`, `LazySGD`, `LazyAdagrad`). TensorFlow and "
        "PyTorch need no mixin. (Warned once per layer.)",
        UserWarning,
        stacklevel=2,
    )


def check_sparse(sparse, policy=None):
    """Validate `Embedding`'s `sparse` argument (with the layer's dtype policy)."""
    if not isinstance(sparse, bool):
        raise ValueError(
            "`sparse` must be a boolean. "
            f"Received: sparse={sparse!r} (of type {type(sparse).__name__})."
        )
    mixed = policy is not None and policy.compute_dtype != policy.variable_dtype
    if sparse and mixed and not backends.sparse.SPARSE_WITH_MIXED_POLICY:
        raise ValueError(
            "On PyTorch, `sparse=True` cannot be combined with the mixed dtype "
            f"policy '{policy.name}': torch cannot carry the sparse gradient of the "
            f"{policy.variable_dtype} table back through Keras's cast to "
            f"{policy.compute_dtype}. Use `sparse=False`, or a non-mixed policy "
            f"(e.g. 'float32' or '{policy.compute_dtype}'). Received: sparse=True, "
            f"dtype={policy.name!r}."
        )
    return sparse
