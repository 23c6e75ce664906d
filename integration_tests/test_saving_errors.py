"""Bad files and bad data never lose what the user had (item 8).

* Truncated or corrupted files: `keras_embedding_plus.load_model` raises
  `ValueError` naming the file. `keras.models.load_model` also refuses every one
  of them, but names the file only for a truncated archive (and calls it "File not
  found"): a damaged member is `BadZipFile: Bad CRC-32 for file
  'model.weights.h5'`, a missing one "Expected a model.weights.h5 ... file".
* Configs with an unknown key or an invalid value: the error names the key / value.
* Wrong-shape tables: `ValueError` naming both shapes; the layer keeps its weights.
"""

import io
import json
import zipfile

import keras
import numpy as np
import pytest

import keras_embedding_plus
from keras_embedding_plus.testing.saving import Embedding

# Depends on the installed Keras (tox env keras-min runs it with the oldest).
pytestmark = pytest.mark.keras_version


def _model(input_dim=10):
    inputs = keras.Input((3,), dtype="int32")
    x = Embedding(input_dim, 4, mask_zero=True, name="emb")(inputs)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(x))


def _rewrite(path, edit):
    """Rewrite the `.keras` zip at `path`, passing each member through `edit`."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(buffer, "w") as dst:
        for name in src.namelist():
            data = edit(name, src.read(name))
            if data is not None:
                dst.writestr(name, data)
    path.write_bytes(buffer.getvalue())


def _flip_member_bytes(data, member):
    """`data` (a zip) with 64 bytes in the middle of `member` overwritten."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        info = z.getinfo(member)
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    middle = start + info.compress_size // 2
    return data[:middle] + b"\xff" * 64 + data[middle + 64 :]


CORRUPTIONS = {
    "truncated_half": lambda d: d[: len(d) // 2],
    "truncated_tail": lambda d: d[:-16],
    "empty": lambda d: b"",
    "not_a_zip": lambda d: b"definitely not a model " * 20,
    "weights_bytes_flipped": lambda d: _flip_member_bytes(d, "model.weights.h5"),
    "config_bytes_flipped": lambda d: _flip_member_bytes(d, "config.json"),
}


@pytest.fixture(scope="module")
def saved_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "m.keras"
    _model().save(path)
    return path.read_bytes()


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_corrupted_keras_file_error_names_the_file(kind, saved_bytes, tmp_path):
    path = tmp_path / f"{kind}.keras"
    path.write_bytes(CORRUPTIONS[kind](saved_bytes))
    with pytest.raises(ValueError, match="Cannot load a model from") as info:
        keras_embedding_plus.load_model(path)
    assert str(path) in str(info.value)
    # Keras's own loader refuses it too (never a half-loaded model).
    with pytest.raises((ValueError, zipfile.BadZipFile)):
        keras.models.load_model(path)


def test_keras_file_missing_its_weights_names_the_file(saved_bytes, tmp_path):
    path = tmp_path / "no_weights.keras"
    path.write_bytes(saved_bytes)
    _rewrite(path, lambda n, d: None if n == "model.weights.h5" else d)
    with pytest.raises(ValueError, match="model.weights.h5") as info:
        keras_embedding_plus.load_model(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("kind", ["truncated_half", "not_a_file"])
def test_bad_legacy_h5_error_names_the_file(kind, tmp_path):
    path = tmp_path / "m.h5"
    if kind == "truncated_half":
        _model().save(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="Cannot load a model from") as info:
        keras_embedding_plus.load_model(path)
    assert str(path) in str(info.value)


def test_load_model_loads_a_good_file(saved_bytes, tmp_path):
    path = tmp_path / "m.keras"
    path.write_bytes(saved_bytes)
    model = keras_embedding_plus.load_model(path)
    assert type(model.get_layer("emb")) is Embedding


def _edit_embedding_config(path, edit):
    def rewrite(name, data):
        if name != "config.json":
            return data
        config = json.loads(data)
        for layer in config["config"]["layers"]:
            if layer["config"]["name"] == "emb":
                edit(layer["config"])
        return json.dumps(config)

    _rewrite(path, rewrite)


BAD_CONFIGS = {
    "unknown_key": (lambda c: c.update(colour="blue"), "colour"),
    "negative_input_dim": (lambda c: c.update(input_dim=-3), "input_dim=-3"),
    "float_output_dim": (lambda c: c.update(output_dim=2.5), "output_dim=2.5"),
    "mask_zero_string": (lambda c: c.update(mask_zero="yes"), "mask_zero='yes'"),
}


@pytest.mark.parametrize("kind", list(BAD_CONFIGS))
def test_bad_config_in_file_names_the_key_or_value(kind, saved_bytes, tmp_path):
    edit, named = BAD_CONFIGS[kind]
    path = tmp_path / "m.keras"
    path.write_bytes(saved_bytes)
    _edit_embedding_config(path, edit)
    for load in (keras.models.load_model, keras_embedding_plus.load_model):
        with pytest.raises((TypeError, ValueError)) as info:
            load(path)
        assert named in str(info.value)


@pytest.mark.parametrize("kind", list(BAD_CONFIGS))
def test_bad_config_dict_names_the_key_or_value(kind):
    edit, named = BAD_CONFIGS[kind]
    config = Embedding(10, 4, name="emb").get_config()
    edit(config)
    # `from_config` re-raises constructor errors as `TypeError`, as Keras does.
    with pytest.raises(TypeError, match=named.replace("(", r"\(")):
        Embedding.from_config(config)


def _table(layer):
    return keras.ops.convert_to_numpy(layer.embeddings).copy()


@pytest.mark.parametrize(
    "values,shown",
    [
        ([np.zeros((11, 4), "float32")], "(11, 4)"),
        ([np.zeros((10, 5), "float32")], "(10, 5)"),
        ([np.zeros(40, "float32")], "(40,)"),
        ([np.zeros((10, 4), "float32")] * 2, "2 weight(s)"),
        ([], "0 weight(s)"),
    ],
    ids=["rows", "columns", "flat", "two_tables", "none"],
)
def test_set_weights_wrong_shape_keeps_the_weights(values, shown):
    layer = Embedding(10, 4, name="emb")
    layer.build()
    before = _table(layer)
    with pytest.raises(ValueError) as info:
        layer.set_weights(values)
    assert shown in str(info.value)
    if "weight(s)" not in shown:
        assert "(10, 4)" in str(info.value)
    np.testing.assert_array_equal(_table(layer), before)


# Keras warns about its own containers whenever a `.weights.h5` load fails.
@pytest.mark.filterwarnings("ignore:Skipping nested container:UserWarning")
def test_load_weights_wrong_shape_keeps_the_table(tmp_path):
    _model(input_dim=11).save_weights(tmp_path / "big.weights.h5")
    model = _model(input_dim=10)
    before = _table(model.get_layer("emb"))
    with pytest.raises(ValueError) as info:
        model.load_weights(tmp_path / "big.weights.h5")
    assert "(10, 4)" in str(info.value) and "(11, 4)" in str(info.value)
    np.testing.assert_array_equal(_table(model.get_layer("emb")), before)


def test_legacy_h5_load_weights_wrong_shape_keeps_the_table(tmp_path):
    _model(input_dim=11).save(tmp_path / "big.h5")
    model = _model(input_dim=10)
    before = _table(model.get_layer("emb"))
    with pytest.raises(ValueError) as info:
        model.load_weights(tmp_path / "big.h5")
    assert "(10, 4)" in str(info.value) and "(11, 4)" in str(info.value)
    np.testing.assert_array_equal(_table(model.get_layer("emb")), before)
