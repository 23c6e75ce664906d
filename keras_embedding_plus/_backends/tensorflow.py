"""TensorFlow: ragged ids, `tf.IndexedSlices` gradients, `tf.device` placement."""

import contextlib
import warnings

import tensorflow as tf
from keras import ops

DEVICE_TYPES = ("cpu", "gpu", "cuda", "tpu", "host")
SPARSE_WITH_MIXED_POLICY = True


def _native(variable):
    """The `tf.Variable` of a `keras.Variable` (or `variable` itself)."""
    return getattr(variable, "value", variable)


# ---- the index policy ----------------------------------------------------------


def is_concrete(x):
    if isinstance(x, tf.RaggedTensor):
        x = x.flat_values
    return tf.executing_eagerly() and not tf.is_symbolic_tensor(x)


def flat_values(ids):
    return ids.flat_values if isinstance(ids, tf.RaggedTensor) else ids


def with_flat_values(ids, values):
    return ids.with_flat_values(values) if isinstance(ids, tf.RaggedTensor) else values


def ids_all_valid(values, input_dim):
    del values, input_dim
    return None  # No faster check than the generic one.


def take(table, ids, valid):
    if isinstance(ids, tf.Tensor):  # `tf.gather`: what `ops.take` ends with.
        return tf.gather(ops.convert_to_tensor(table), ids), valid
    return ops.take(table, ids, axis=0), valid


def zero_invalid(outputs, valid):
    if isinstance(outputs, tf.RaggedTensor):
        return outputs.with_flat_values(zero_invalid(outputs.flat_values, valid))
    mask = ops.expand_dims(valid, -1)
    # A `tf.cond`: the pass over the outputs runs only when some id is invalid.
    return ops.cond(
        ops.all(valid),
        lambda: outputs,
        lambda: ops.where(mask, outputs, ops.zeros((), dtype=outputs.dtype)),
    )


# ---- row-sparse gradients: `tf.IndexedSlices` ----------------------------------


def sparse_take(table, ids):
    if isinstance(ids, tf.RaggedTensor):
        return ops.take(table, ids, axis=0)
    # On the variable itself: a ResourceGather, which never reads the whole
    # table, and whose gradient is an `IndexedSlices`.
    return tf.gather(_native(table), ids)


def capturing(table):
    del table
    return False


def is_row_sparse(gradient):
    return isinstance(gradient, tf.IndexedSlices)


def densify_gradient(gradient):
    if isinstance(gradient, tf.IndexedSlices):
        return tf.convert_to_tensor(gradient)
    return gradient


def unique_rows(gradient):
    ids, position = tf.unique(tf.reshape(gradient.indices, [-1]))
    values = tf.reshape(gradient.values, [-1, *gradient.values.shape[1:]])
    summed = tf.math.unsorted_segment_sum(values, position, tf.shape(ids)[0])
    return ids, summed


def gather_rows(variable, ids):
    return tf.gather(_native(variable), ids)


def scatter(optimizer, variable, ids, rows, how):
    slices = tf.IndexedSlices(rows, ids)
    if how == "update":
        optimizer.assign(variable, slices)
    else:
        optimizer.assign_sub(variable, slices)


def subtract_scaled(optimizer, variable, gradient, factor):
    # A resource scatter-sub adds the rows of duplicate ids.
    values = tf.reshape(gradient.values, [-1, *gradient.values.shape[1:]])
    values = tf.cast(values, variable.dtype) * tf.cast(factor, variable.dtype)
    indices = tf.reshape(gradient.indices, [-1])
    optimizer.assign_sub(variable, tf.IndexedSlices(values, indices))


def scale_gradient(gradient, factor):
    if isinstance(gradient, tf.IndexedSlices):
        return tf.IndexedSlices(
            gradient.values * factor, gradient.indices, gradient.dense_shape
        )
    return gradient * factor


def with_rows(gradient, ids, values):
    return tf.IndexedSlices(values, ids, gradient.dense_shape)


# ---- placement: `tf.device` ------------------------------------------------------


def visible_devices():
    return [
        f"{d.device_type.lower()}:{d.name.rsplit(':', 1)[-1]}"
        for d in tf.config.list_logical_devices()
    ]


def resolve_device(device):
    if device == "host":
        return "/device:CPU:0"
    kind, _, index = device.partition(":")
    kind = "gpu" if kind == "cuda" else kind
    devices = tf.config.list_logical_devices(kind.upper())
    if not devices or (index and int(index) >= len(devices)):
        return None
    return devices[int(index) if index else 0].name


def build_placement(placement):
    if placement is not None and tf.distribute.has_strategy():
        warnings.warn(
            "Embedding `device` is ignored under a `tf.distribute` strategy: "
            "the strategy places the table.",
            stacklevel=4,
        )
        return None
    return placement


def build_scope(placement, shape):
    del shape
    return contextlib.nullcontext() if placement is None else tf.device(placement)


def pin(variable, placement):
    del variable
    return placement


def placed_take(table, ids, placement, sparse):
    # A variable's `value` is the `tf.Variable`: a ResourceGather, whose gradient
    # is row-sparse (`IndexedSlices`) with or without `sparse`.
    del sparse
    with tf.device(placement):
        rows = tf.gather(_native(table), ids)
    # Outside the scope: the rows alone move to where the model runs.
    if isinstance(rows, tf.RaggedTensor):
        return rows.with_flat_values(tf.identity(rows.flat_values))
    return tf.identity(rows)


def fetch(table, placement):
    del placement  # TensorFlow copies between devices by itself.
    return _native(table)


def add_matmul(rows, a, b):
    # `tf.add`, not `ops.add`: Keras turns an add whose second operand looks
    # like a bias (one dimension > 1) into `BiasAdd`, which fails on an empty
    # batch of rows (found by tests/test_properties.py).
    return tf.add(rows, tf.matmul(a, b))


def snapshot(variable):
    """A copy, where the variable lives (`assign` writes in place)."""
    return tf.identity(variable.value)


def writes_rows_in_place():
    """Eagerly, outside a `tf.distribute` strategy (whose variables have a copy
    per replica)."""
    return tf.executing_eagerly() and not tf.distribute.has_strategy()


def builds_by_blocks():
    return writes_rows_in_place()


def write_rows(variable, start, rows):
    """Rows `start ...` of the variable set to `rows`, in place.

    The raw strided-slice assign: `variable[a:b].assign(...)` first reads the
    variable, and the slice it reads shares the variable's buffer, so the
    assign copies the whole table (copy on write).
    """
    value = _native(variable)
    rows = tf.cast(rows, value.dtype)
    tf.raw_ops.ResourceStridedSliceAssign(
        ref=value.handle,
        begin=[start],
        end=[start + rows.shape[0]],
        strides=[1],
        value=rows,
    )
    _dense_reads(value)


def read_rows(variable, start, stop):
    """Rows `start:stop` of a variable: a gather, which copies those rows only.

    A dense read of a variable that a sparse op touched (a gather, a
    scatter, `write_rows`) copies the whole table first (TensorFlow's
    copy-on-read mode).
    """
    rows = tf.gather(_native(variable), tf.range(start, stop))
    _dense_reads(_native(variable))
    return rows


def _dense_reads(value):
    """Copy-on-read mode off again, after `write_rows` / `read_rows`.

    A sparse access (the strided-slice assign, a gather) switches a variable
    to copy-on-read mode, which it keeps: every dense read (the default
    lookup, the optimizer's update) then copies the whole table. A big table
    built by blocks read at 0.47x Keras's speed. Turning the mode off copies
    nothing (no other tensor shares the buffer in that mode).
    """
    tf.raw_ops.DisableCopyOnRead(resource=value.handle)


def fill_rows(variable, start, rows):
    """`write_rows` into a table being built (`_chunks.initialize`)."""
    write_rows(variable, start, rows)


# ---- pooled lookups (EmbeddingBag) ----------------------------------------------


def sparse_bags(ids, weights):
    """`(values, segments, num_segments, outer_shape, weights)` of a
    `tf.SparseTensor` `(batch, ..., L)`: each stored id with its bag's flat
    index."""
    if not isinstance(ids, tf.SparseTensor):
        raise ValueError(
            "Sparse ids on TensorFlow must be a `tf.SparseTensor`. Received: "
            f"{type(ids).__name__}."
        )
    if weights is not None:
        weights = weights.values
    dense_shape = ids.dense_shape
    strides = tf.math.cumprod(dense_shape[:-1], exclusive=True, reverse=True)
    segments = tf.reduce_sum(ids.indices[:, :-1] * strides, axis=1)
    count = tf.reduce_prod(dense_shape[:-1])
    return ids.values, segments, count, tuple(ids.shape[:-1]), weights


def segment(data, segments, num_segments, how, sorted=False):
    """Per-segment sums or maxima; sorted segments take TensorFlow's sorted
    kernels (about 2x faster on CPU), padded to `num_segments` rows."""
    if not sorted:
        if how == "sum":
            return ops.segment_sum(data, segments, num_segments=num_segments)
        return ops.segment_max(data, segments, num_segments=num_segments)
    reduce = tf.math.segment_sum if how == "sum" else tf.math.segment_max
    out = reduce(data, segments)
    missing = tf.cast(num_segments, tf.int32) - tf.shape(out)[0]
    return tf.pad(out, [[0, missing]] + [[0, 0]] * (len(data.shape) - 1))


embedding_bag = None  # No fused kernel: rows are gathered, then pooled.
