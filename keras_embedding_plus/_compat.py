"""Differences between the Keras versions we support (`keras>=3.14`, pyproject.toml).

Each entry says why it is here and what would replace it.
"""

import keras

KERAS_VERSION = tuple(int(part) for part in keras.__version__.split(".")[:2])


class _FunctionRegularizer(keras.regularizers.Regularizer):
    """A plain function as a `Regularizer` (for Keras < 3.15's variables)."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, x):
        return self.fn(x)


class _FunctionConstraint(keras.constraints.Constraint):
    """A plain function as a `Constraint` (for Keras < 3.15's variables)."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, w):
        return self.fn(w)


def variable_regularizer(fn):
    """`fn` as a `keras.Variable` takes it.

    Keras 3.15 takes any callable; 3.14's `Variable.regularizer` only
    `keras.regularizers.Regularizer` instances. Drop with `keras>=3.15`.
    """
    if fn is None or KERAS_VERSION >= (3, 15):
        return fn
    if isinstance(fn, keras.regularizers.Regularizer):
        return fn
    return _FunctionRegularizer(fn)


def variable_constraint(fn):
    """`fn` as a `keras.Variable` takes it (as `variable_regularizer`)."""
    if fn is None or KERAS_VERSION >= (3, 15):
        return fn
    if isinstance(fn, keras.constraints.Constraint):
        return fn
    return _FunctionConstraint(fn)
