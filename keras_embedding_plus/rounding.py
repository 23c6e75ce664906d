"""Stochastic rounding of float32 values to a half-precision table's dtype.

Round-to-nearest loses every update smaller than half the spacing of the
stored values (for a bfloat16 row near 1.0, any step under 2**-8): a table
stored in half precision and trained with small learning rates stops moving.
Stochastic rounding rounds `x` up to the next representable value with
probability `(x - down) / (up - down)` and down otherwise, so the stored value
is right on average: `E[round(x)] = x`, and many small updates add up (FBGEMM's
`stochastic_rounding=True` for its fp16 tables does the same).

Exact on every backend: the spacing is read from the float32 bits
(`keras.ops.view`), not from a logarithm.
"""

import keras
from keras import ops

HALF = ("float16", "bfloat16")


def is_half(dtype):
    """Whether `dtype` (a name or a tensor's dtype) is float16 or bfloat16."""
    return keras.backend.standardize_dtype(dtype) in HALF


def stochastic_round(x, dtype, seed):
    """`x` rounded to `dtype` (`"float16"` or `"bfloat16"`), up with
    probability its distance from the value below over the spacing.

    Args:
        x: A float tensor (computed in float32).
        dtype: `"float16"` or `"bfloat16"`.
        seed: A `keras.random.SeedGenerator` (or an int).

    Returns:
        A tensor of `dtype`, the shape of `x`. Values are exact where `x` is
        representable in `dtype`.
    """
    dtype = keras.backend.standardize_dtype(dtype)
    x = ops.cast(x, "float32")
    if dtype == "bfloat16":
        # bfloat16 is float32's upper 16 bits: add 16 random low bits, then
        # drop them (rounds the magnitude down after a uniform nudge up).
        bits = ops.view(x, "int32")
        noise = keras.random.randint(ops.shape(x), 0, 1 << 16, dtype="int32", seed=seed)
        bits = ops.bitwise_and(ops.add(bits, noise), ops.convert_to_tensor(-(1 << 16)))
        return ops.cast(ops.view(bits, "float32"), dtype)
    if dtype != "float16":
        raise ValueError(
            f"Stochastic rounding is to 'float16' or 'bfloat16'. Received: {dtype!r}."
        )
    # float16: 10 mantissa bits, exponents from -14 (below: subnormal, with
    # the spacing of the smallest exponent).
    exponent = ops.subtract(
        ops.bitwise_and(ops.right_shift(ops.view(x, "int32"), 23), 255), 127
    )
    exponent = ops.maximum(exponent, -14)
    spacing = ops.view(ops.left_shift(ops.add(exponent, 127 - 10), 23), "float32")
    down = ops.multiply(ops.floor(ops.divide(x, spacing)), spacing)
    fraction = ops.divide(ops.subtract(x, down), spacing)
    uniform = keras.random.uniform(ops.shape(x), dtype="float32", seed=seed)
    up = ops.cast(ops.less(uniform, fraction), "float32")
    return ops.cast(ops.add(down, ops.multiply(up, spacing)), dtype)
