"""`max_norm`: looked-up rows longer than `max_norm` are used renormalised.

Only the outputs are renormalised, as TensorFlow's `embedding_lookup(max_norm=...)`
does; the stored table is never rewritten (PyTorch rewrites it in place, which
cannot be done the same way inside compiled JAX / TensorFlow functions). The
renormalisation is differentiated like any other op, and the norm is computed so
that its gradient stays finite for all-zero rows.
"""

import math
import numbers

from keras import ops

# PyTorch's `embedding_renorm_` constant: rows are scaled by max_norm / (norm + eps).
_EPSILON = 1e-7


def check_max_norm(max_norm, norm_type):
    if max_norm is not None and (
        not isinstance(max_norm, numbers.Real)
        or isinstance(max_norm, bool)
        or not max_norm > 0
        or math.isinf(max_norm)
    ):
        raise ValueError(
            "`max_norm` must be None or a positive finite number. "
            f"Received: max_norm={max_norm!r} (of type {type(max_norm).__name__})."
        )
    if (
        not isinstance(norm_type, numbers.Real)
        or isinstance(norm_type, bool)
        or not norm_type >= 1
    ):
        raise ValueError(
            "`norm_type` must be a number >= 1 (the p of the p-norm; "
            "float('inf') for the max norm). "
            f"Received: norm_type={norm_type!r} (of type {type(norm_type).__name__})."
        )
    return (None if max_norm is None else float(max_norm)), float(norm_type)


def _norm(rows, p):
    magnitude = ops.abs(rows)
    if math.isinf(p):
        if rows.shape[-1] == 0:  # The norm of an empty row is 0.
            return ops.sum(magnitude, axis=-1, keepdims=True)
        # Keras's `max` / `amax` (TensorFlow, PyTorch) refuse any tensor with a 0
        # in its shape (no ids), even when the reduced axis is not empty: reduce
        # the rows with one more row, of zeros, then drop its norm. `amax`, not
        # `max`: under `torch.compile`, Keras's PyTorch `max` reads `.values` of
        # its result, and Dynamo warns of a non-leaf tensor's `.grad`.
        dim = rows.shape[-1]
        flat = ops.reshape(magnitude, (-1, dim))
        flat = ops.concatenate([flat, ops.zeros((1, dim), flat.dtype)], axis=0)
        norm = ops.amax(flat, axis=-1, keepdims=True)[:-1]
        return ops.reshape(norm, (*ops.shape(magnitude)[:-1], 1))
    if p == 1:
        return ops.sum(magnitude, axis=-1, keepdims=True)
    total = ops.sum(
        magnitude**p if p != 2 else ops.square(rows), axis=-1, keepdims=True
    )
    # d(total ** (1/p)) is infinite at 0: differentiate a safe value there instead.
    nonzero = ops.greater(total, 0)
    safe = ops.where(nonzero, total, ops.ones_like(total))
    root = ops.sqrt(safe) if p == 2 else safe ** (1.0 / p)
    return ops.where(nonzero, root, ops.zeros_like(total))


def renormalize(rows, max_norm, norm_type):
    """`rows` with every row whose `norm_type`-norm exceeds `max_norm` scaled down."""
    norm = _norm(ops.cast(rows, "float32"), norm_type)
    factor = ops.where(
        ops.greater(norm, max_norm), max_norm / (norm + _EPSILON), ops.ones_like(norm)
    )
    return rows * ops.cast(factor, rows.dtype)
