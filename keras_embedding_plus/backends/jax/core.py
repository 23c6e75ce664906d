"""JAX: helpers every concern uses, and LoRA's fused `add_matmul`."""

from keras import ops


def value_of(variable):
    """The `jax.Array` of a `keras.Variable` (or `variable` itself)."""
    return getattr(variable, "value", variable)


def add_matmul(rows, a, b):
    return ops.add(rows, ops.matmul(a, b))
