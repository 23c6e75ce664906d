"""JAX: helpers every concern uses, and LoRA's fused `add_matmul`."""

import jax.numpy as jnp
from keras import ops


def value_of(variable):
    """The `jax.Array` of a `keras.Variable` (or `variable` itself)."""
    return getattr(variable, "value", variable)


def add_matmul(rows, a, b):
    return ops.add(rows, ops.matmul(a, b))


def smallest(values, k):
    """The indices (int32) of the `k` smallest of `values` (1-D), ascending by
    value. One sort for the k-th value, then a compaction and a small sort
    (XLA's top_k on CPU is several times slower than a full sort)."""
    threshold = jnp.sort(values)[k - 1]
    chosen = jnp.nonzero(values <= threshold, size=k, fill_value=0)[0]
    order = jnp.argsort(values[chosen], stable=True)
    return chosen[order].astype(jnp.int32)


def leading(x, n):
    """`x[:n]` where compiled steps take data-dependent shapes; JAX's do not:
    `x` whole."""
    del n
    return x
