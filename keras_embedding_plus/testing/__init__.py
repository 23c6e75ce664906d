"""Utilities for this package's tests; not part of the public API.

As Keras ships `keras/src/testing` and keras-rs `keras_rs/src/testing`: the
shared layer test and backend helpers (`layers`), the option pairs and their
NumPy reference (`pairs`), and the helpers of the saving tests (`saving`). The
test modules import them from here, so that under pytest's importlib mode they
test the installed package with the helpers it ships.
"""

from keras_embedding_plus.testing.layers import (
    compiled,
    forward_and_gradients,
    full_width_ids,
    is_row_sparse,
    make_sparse,
    run_layer_test,
    to_numpy,
    to_tensor,
)

__all__ = [
    "compiled",
    "forward_and_gradients",
    "full_width_ids",
    "is_row_sparse",
    "make_sparse",
    "run_layer_test",
    "to_numpy",
    "to_tensor",
]
