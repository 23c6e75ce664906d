"""Keras's Embedding tests with Keras's layers replaced by ours.

The only module of the project that touches `keras.src`: Keras's tests import
`keras.src.layers` and call `layers.Embedding` / `layers.ReversibleEmbedding`, so the
attributes are replaced there before the test modules are imported.

`DIFFERENCES` lists the tests that fail on purpose, where our documented contract
differs from Keras's; README's "Differences from `keras.layers.Embedding`" table
lists the same. They are strict xfails: a test that starts passing fails the run.
"""

import keras
import pytest
from keras.src import layers as keras_layers

import keras_embedding_plus

keras_layers.Embedding = keras_embedding_plus.Embedding
if hasattr(keras_embedding_plus, "ReversibleEmbedding"):
    keras_layers.ReversibleEmbedding = keras_embedding_plus.ReversibleEmbedding

_FRACTIONAL_IDS = (
    "fractional float ids are refused by our index policy (ValueError in eager, "
    "zero rows when compiled); Keras truncates them. On TensorFlow this test "
    "calls the layer on `tf.random.normal` ids to export it"
)
# test id (file::class::name, parameters included) -> (backends, reason).
DIFFERENCES = {
    "embedding_test.py::EmbeddingTest::test_invalid_output_dim": (
        ("tensorflow", "jax", "torch"),
        "output_dim=0 is accepted (an empty last axis), as the Keras 1 / 2 docs "
        "say; every other bad value is refused with Keras's text",
    ),
    "embedding_test.py::EmbeddingTest::test_quantize_lora_integration_int8": (
        ("tensorflow",),
        _FRACTIONAL_IDS,
    ),
    "embedding_test.py::EmbeddingTest::test_quantize_lora_integration_int4": (
        ("tensorflow",),
        _FRACTIONAL_IDS,
    ),
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        key = f"{item.path.name}::{item.cls.__name__}::{item.name}"
        backends, reason = DIFFERENCES.get(key, ((), None))
        if keras.backend.backend() in backends:
            item.add_marker(pytest.mark.xfail(reason=reason, strict=True))
