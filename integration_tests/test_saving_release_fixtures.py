"""Files saved by keras_embedding_plus 0.1.0 load with the same outputs (regression).

`fixtures/0.1.0/<writer>/` holds, for each writer backend, small models saved by
release 0.1.0 (`scripts/make_release_fixtures.py`) in three formats: `.keras`,
`.weights.h5` with the architecture in `.json`, and the legacy `.h5`; with the input
ids and the outputs 0.1.0 computed on the writer from each file loaded back. Every
file must load through the public API on the current backend with those outputs,
within `CROSS_BACKEND_ATOL` (float32 rounding), on the writer's backend too (its
CPU kernels may round otherwise on another machine). The
model saved with its optimizer must also bring back the optimizer's variables
exactly where 0.1.0 did.
"""

import json
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_embedding_plus as kep

# Depends on the installed Keras (tox env keras-min runs it with the oldest).
pytestmark = pytest.mark.keras_version

BACKEND = keras.backend.backend()
WRITERS = ("tensorflow", "jax", "torch")
RELEASE = Path(__file__).resolve().parent / "fixtures" / "0.1.0"
MANIFESTS = {
    w: json.loads((RELEASE / w / "manifest.json").read_text()) for w in WRITERS
}
MODELS = list(MANIFESTS["tensorflow"]["models"])
KERAS_VERSION = tuple(int(p) for p in keras.__version__.split(".")[:2])
# Measured over all 9 writer x reader pairs (`make_release_fixtures.py --measure`,
# Keras 3.15.1, CPU): 0 on the writer's backend on the writer's machine; across
# backends at most 1.1920929e-07 = 2**-23 (float32 rounding of the Dense and
# pooling sums, of the dequantized rows, of the reverse logits). The smallest
# bound covering that. It holds on the writer's backend too: on a CPU with
# other vector units (AVX-512 / AMX here), PyTorch's CPU matmul picks other
# kernels and its own outputs move by 2**-23.
CROSS_BACKEND_ATOL = 2.0**-23


def _outputs(model, ids):
    out = model(ids, training=False)
    if not isinstance(out, (list, tuple)):
        out = [out]
    return [np.asarray(keras.ops.convert_to_numpy(o), dtype=np.float32) for o in out]


def _load(directory, name, fmt):
    if fmt == "weights.h5":
        model = keras.models.model_from_json((directory / f"{name}.json").read_text())
        kep.load_weights(model, directory / f"{name}.weights.h5")
        return model
    return kep.load_model(directory / f"{name}.{fmt}")


def test_manifests_cover_every_model_and_format():
    for writer, manifest in MANIFESTS.items():
        assert manifest["writer_backend"] == writer
        assert manifest["keras_embedding_plus"] == "0.1.0"
        assert list(manifest["models"]) == MODELS, writer
        for name, entry in manifest["models"].items():
            # 0.1.0 saved and loaded every model in every format: nothing refused.
            assert set(entry["formats"]) == {"keras", "weights.h5", "h5"}, name
            for fmt, info in entry["formats"].items():
                assert "outputs" in info, (writer, name, fmt, info)
                for file in info["files"]:
                    assert (RELEASE / writer / file).is_file(), file


@pytest.mark.parametrize("name", MODELS)
def test_release_fixture_loads_with_the_same_outputs(name):
    if KERAS_VERSION < (3, 15) and any(
        "input_axes" in (RELEASE / w / f"{name}.json").read_text() for w in WRITERS
    ):
        pytest.skip(
            "needs Keras 3.15: the fixture was saved by Keras 3.15, whose "
            "GlorotUniform config (input_axes, output_axes) older Keras cannot read"
        )
    for writer in WRITERS:
        directory = RELEASE / writer
        entry = MANIFESTS[writer]["models"][name]
        data = np.load(directory / f"{name}.npz")
        for fmt, info in entry["formats"].items():
            where = f"{writer}/{name}.{fmt} on {BACKEND}"
            model = _load(directory, name, fmt)
            for layer_name, saved in entry["layers"].items():
                layer = model.get_layer(layer_name)
                assert isinstance(layer, kep.Embedding), where
                assert type(layer).__name__ == saved["class"], where
                assert layer.dtype_policy.name == saved["dtype_policy"], where
                assert layer.lora_enabled == saved["lora_enabled"], where
            expected = [data[f"{info['outputs']}_{i}"] for i in range(entry["outputs"])]
            received = _outputs(model, data["ids"])
            assert len(received) == len(expected), where
            for i, (want, got) in enumerate(zip(expected, received, strict=True)):
                message = f"{where}, output {i}"
                np.testing.assert_allclose(
                    got, want, rtol=0, atol=CROSS_BACKEND_ATOL, err_msg=message
                )
            if entry["optimizer_variables"] is not None:
                _check_optimizer(model, entry, info, data, where)


def _check_optimizer(model, entry, info, data, where):
    assert isinstance(model.optimizer, kep.optimizers.LazyAdam), where
    if not info["optimizer_state"]:
        return  # The legacy `.h5`: 0.1.0 (Keras 3.15) does not restore it.
    paths = entry["optimizer_variables"]
    variables = model.optimizer.variables
    assert [v.path for v in variables] == paths, where
    for i, variable in enumerate(variables):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(variable),
            data[f"optimizer_{i}"],
            err_msg=f"{where}: optimizer variable {paths[i]}",
        )
