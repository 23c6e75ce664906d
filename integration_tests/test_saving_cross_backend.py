"""Fixtures written under TensorFlow, JAX and PyTorch load on every backend (item 3).

`fixtures/<writer>/` holds `.keras` files (and a legacy `.h5`) written by
`scripts/make_fixtures.py` under each backend, with the input ids, the expected
mask and the outputs the writing backend computed with a `keras.layers.Embedding`
twin. Every backend must reproduce them (float32, max abs difference <= 1e-6).
"""

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_embedding_plus.testing.saving import (
    ATOL,
    BACKENDS,
    Embedding,
    max_abs_diff,
    outputs,
)

# Depends on the installed Keras (tox env keras-min runs it with the oldest).
pytestmark = pytest.mark.keras_version

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def read_manifest(writer):
    return json.loads((FIXTURES / writer / "manifest.json").read_text())


KERAS_VERSION = tuple(int(p) for p in keras.__version__.split(".")[:2])

# (fixture name, file suffix): what every writer ships.
FILES = [
    ("masked_lstm", "keras"),
    ("masked_lstm", "h5"),
    ("sequential_input_length", "keras"),
    ("regularized", "keras"),
]


@pytest.mark.parametrize("name,suffix", FILES, ids=[f"{n}.{s}" for n, s in FILES])
@pytest.mark.parametrize("writer", BACKENDS)
def test_fixture_loads_and_reproduces(writer, name, suffix):
    if KERAS_VERSION < (3, 15) and name != "regularized":
        pytest.skip(
            "needs Keras 3.15: the fixture was saved by Keras 3.15, whose "
            "GlorotUniform config (input_axes, output_axes) older Keras cannot read"
        )
    path = FIXTURES / writer / f"{name}.{suffix}"
    assert path.is_file(), f"missing fixture {path}: run scripts/make_fixtures.py"
    data = np.load(FIXTURES / writer / f"{name}.npz")
    manifest = read_manifest(writer)
    assert manifest["backend"] == writer
    entry = manifest["fixtures"][name]
    expected = [data[f"output_{i}"] for i in range(entry["outputs"])]

    model = keras.models.load_model(path)
    layer = model.get_layer("emb")
    assert type(layer) is Embedding
    config = layer.get_config()
    for key, value in entry["embedding_config"].items():
        assert config[key] == value, (key, config[key], value)

    ids = data["ids"]
    diff = max_abs_diff(expected, outputs(model, ids))
    assert diff <= ATOL, f"{writer} -> {keras.backend.backend()}: {diff}"
    mask = layer.compute_mask(ids)
    if entry["embedding_config"]["mask_zero"]:
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(mask), data["mask"])
        # Padding matters here: the masked outputs differ from unmasked ones.
        assert not data["mask"].all()
    else:
        assert mask is None
