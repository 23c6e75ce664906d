"""A `DynamicEmbedding` saved under TensorFlow, JAX and PyTorch loads on every
backend (issue 22): the same key map, the same outputs, and training resumed on
the reader moves the map as it moved on the writer.

`fixtures/<writer>/dynamic.keras` and `dynamic.npz` are written by
`scripts/make_fixtures.py` (`write_dynamic`): the map after 6 training steps,
the outputs of every key, and the map after 4 more steps on the same batches.
"""

from pathlib import Path

import keras
import numpy as np
import pytest

from keras_embedding_plus import DynamicEmbedding, load_model
from keras_embedding_plus.testing.saving import ATOL, BACKENDS

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _map(layer, pool):
    return {
        "keys": layer.keys(),
        "counts": layer.counts(),
        "rows": layer.rows_of(pool),
        "evictions": np.asarray(layer.evictions),
    }


@pytest.mark.parametrize("writer", BACKENDS)
def test_dynamic_fixture_loads_with_its_map_and_resumes(writer):
    data = np.load(FIXTURES / writer / "dynamic.npz")
    model = load_model(str(FIXTURES / writer / "dynamic.keras"))
    layer = model.get_layer("emb")
    assert isinstance(layer, DynamicEmbedding)
    pool = data["probe"].reshape(-1)
    for name, value in _map(layer, pool).items():
        np.testing.assert_array_equal(value, data[name], err_msg=name)
    outputs = model.predict(data["probe"], verbose=0)
    diff = float(np.max(np.abs(outputs - data["outputs"])))
    assert diff <= ATOL, f"{writer} -> {keras.backend.backend()}: {diff}"
    # The optimizer came with the file: training goes on where it stopped.
    for batch in data["batches"][6:]:
        model.train_on_batch(batch, data["targets"])
    for name, value in _map(layer, pool).items():
        np.testing.assert_array_equal(value, data[f"{name}_after"], err_msg=name)
