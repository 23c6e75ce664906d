"""Low-rank adaptation (LoRA) of the embedding table.

The adapted table is ``table + (lora_alpha / lora_rank) * A @ B`` with ``A`` of shape
``(input_dim, rank)`` and ``B`` of shape ``(rank, output_dim)``. Lookups gather the
rows of ``A`` for the ids first (``take(A, ids) @ B``), so the cost grows with the
number of ids, never with the vocabulary; the full ``A @ B`` is only formed when the
adapter is merged into the table (on saving).
"""

import numbers

import keras
from keras import ops

from keras_embedding_plus import backends


def check_rank(rank, name="lora_rank", allow_none=True):
    if rank is None and allow_none:
        return None
    if isinstance(rank, numbers.Integral) and not isinstance(rank, bool) and rank > 0:
        return int(rank)
    allowed = "None or a positive integer" if allow_none else "a positive integer"
    raise ValueError(
        f"`{name}` must be {allowed}. "
        f"Received: {name}={rank!r} (of type {type(rank).__name__})."
    )


def check_alpha(alpha):
    if alpha is None:
        return None
    if isinstance(alpha, numbers.Real) and not isinstance(alpha, bool) and alpha > 0:
        return alpha
    raise ValueError(
        "`lora_alpha` must be None (meaning `lora_rank`) or a positive number. "
        f"Received: lora_alpha={alpha!r} (of type {type(alpha).__name__})."
    )


def check_constraint(constraint):
    if constraint is not None:
        raise ValueError(
            "Lora is incompatible with embedding constraints. In order to enable "
            "lora on this layer, remove the `embeddings_constraint` argument "
            "(LoRA freezes the table and trains two factors, which a table "
            "constraint cannot bound; `max_norm` bounds looked-up rows instead). "
            f"Received: embeddings_constraint={constraint!r}"
        )


def check_enable(rank, alpha, *, constraint, built, enabled_rank, name):
    """`(rank, alpha)` for `enable_lora`, or Keras's error texts.

    `constraint`: the layer's table constraint; `built`: whether the layer is
    built; `enabled_rank`: the rank of its adapter, `None` when it has none;
    `name`: the layer's name, for the messages.
    """
    rank = check_rank(rank, "rank", allow_none=False)
    alpha = check_alpha(alpha)
    check_constraint(constraint)
    if not built:
        raise ValueError(
            "Cannot enable lora on a layer that isn't yet built. "
            f"Layer '{name}': call `layer.build()` first, or pass "
            "`lora_rank` to the constructor."
        )
    if enabled_rank is not None:
        raise ValueError(
            "lora is already enabled. This can only be done once per layer. "
            f"Layer '{name}' has lora_rank={enabled_rank}. "
            f"Received: rank={rank}"
        )
    return rank, alpha


def add_factor(add_weight, name, shape, initializer, regularizer=None):
    """A trainable float32 LoRA factor (`A` or `B`), as Keras makes them.

    float32 whatever the layer's dtype policy, as in Keras, to keep small updates
    from underflowing, and read in float32 under mixed policies too.
    """
    return add_weight(
        name=name,
        shape=shape,
        initializer=keras.initializers.get(initializer),
        dtype="float32",
        autocast=False,
        regularizer=regularizer,
    )


def add_delta(rows, a_rows, b, scale):
    """`rows` plus the adapter's rows (`a_rows`: the rows of A for the same ids).

    One 2-D `(ids, rank) @ (rank, output_dim)` product (a broadcast batched product
    is several times slower on TensorFlow), added in float32 (on PyTorch fused
    with the addition, in place where it can: `backends.core.add_matmul`).
    """
    shape = ops.shape(rows)
    a_rows = ops.reshape(a_rows, (-1, a_rows.shape[-1]))
    rows = ops.reshape(ops.cast(rows, "float32"), (-1, shape[-1]))
    b = ops.multiply(b, scale)
    return ops.reshape(backends.core.add_matmul(rows, a_rows, b), shape)


def delta_table(a, b, scale):
    """The full `(input_dim, output_dim)` float32 delta (merging only)."""
    return ops.multiply(ops.matmul(a, b), scale)


def merged_rows(table, a, b, scale, start, stop):
    """Rows `start:stop` of `table + scale * A @ B` (added in float32), in the
    table's dtype: a big table is merged block by block (saving, `_chunks`)."""
    rows = ops.cast(backends.blocks.read_rows(table, start, stop), "float32")
    delta = delta_table(backends.blocks.read_rows(a, start, stop), b, scale)
    return ops.cast(ops.add(rows, delta), table.dtype)


def delta_logits(x, a, b, scale):
    """`x @ (scale * A @ B).T` without forming `A @ B`: `(x @ B.T) @ A.T`."""
    x = ops.cast(x, "float32")
    return ops.matmul(
        ops.matmul(x, ops.transpose(ops.multiply(b, scale))), ops.transpose(a)
    )
