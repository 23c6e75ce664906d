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
import struct
import time
import zipfile
import zlib

import h5py
import keras
import numpy as np
import pytest

import keras_embedding_plus
from keras_embedding_plus.saving import limits
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


# ---- what a file declares, checked before it costs anything (issue 20) --------
#
# Each case is refused from what the file declares (a zip member's size, a
# layer's `input_dim`, an HDF5 dataset's shape), before anything is inflated,
# built or read: measured here (time, peak memory) with generous bounds.

MiB = 2**20
WEIGHTS = "model.weights.h5"


def _zip_bomb(data, declared_mib):
    """`data` (a `.keras` archive) with its weights member replaced by a DEFLATE
    stream of `declared_mib` MiB of zeros: about 1 KB per MiB.

    The stream is built in a few ms: after a full flush, the compressed bytes
    of a MiB of zeros repeat. zipfile writes it as a stored member, then the
    member's method (8, DEFLATE) and inflated size are patched in its local
    header and central directory entry. Its CRC-32 is the stored bytes', not
    the zeros': only inflating all of it would tell.
    """
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    one_mib = compressor.compress(bytes(MiB)) + compressor.flush(zlib.Z_FULL_FLUSH)
    stream = one_mib * declared_mib + compressor.flush(zlib.Z_FINISH)
    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(buffer, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, stream if name == WEIGHTS else src.read(name))
    patched = bytearray(buffer.getvalue())
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as z:
        local = z.getinfo(WEIGHTS).header_offset
    central = patched.rindex(b"PK\x01\x02", 0, patched.rindex(WEIGHTS.encode()))
    for method_at, size_at in ((local + 8, local + 22), (central + 10, central + 24)):
        struct.pack_into("<H", patched, method_at, zipfile.ZIP_DEFLATED)
        struct.pack_into("<I", patched, size_at, declared_mib * MiB)
    return bytes(patched)


def _load_and_time(load, path):
    start = time.perf_counter()
    with pytest.raises(ValueError) as info:
        load(path)
    return str(info.value), time.perf_counter() - start


@pytest.mark.parametrize("loader", ["load_model", "load_weights"])
def test_zip_bomb_is_refused_before_inflating(loader, saved_bytes, tmp_path):
    # 4 MB on disk, 4095 MiB once inflated (under Keras's own 4 GiB floor):
    # the CRC pass used to inflate all of it (8 s), Keras reads it whole (29 s).
    start = time.perf_counter()
    data = _zip_bomb(saved_bytes, 4095)
    made = time.perf_counter() - start
    path = tmp_path / "bomb.keras"
    path.write_bytes(data)
    model = _model()
    before = _table(model.get_layer("emb"))
    load = {
        "load_model": keras_embedding_plus.load_model,
        "load_weights": lambda p: keras_embedding_plus.load_weights(model, p),
    }[loader]
    message, took = _load_and_time(load, path)
    print(f"bomb of {len(data)} bytes made in {made:.3f} s, refused in {took:.4f} s")
    assert str(path) in message and f"'{WEIGHTS}'" in message
    assert f"declares {4095 * MiB} bytes" in message and "decompression bomb" in message
    assert made < 1.0 and took < 1.0  # About 1 ms: nothing was inflated.
    np.testing.assert_array_equal(_table(model.get_layer("emb")), before)


def test_weights_member_larger_than_the_model_is_refused(tmp_path):
    # Loading into a known model, a weights member may hold that model's
    # variables (optimizer slots included), not 60 times more.
    path = tmp_path / "bigger.keras"
    _model(input_dim=100_000).save(path)
    model = _model()
    before = _table(model.get_layer("emb"))
    message, took = _load_and_time(
        lambda p: keras_embedding_plus.load_weights(model, p), path
    )
    assert str(path) in message and f"'{WEIGHTS}'" in message
    assert "more than the weights of this model can take up" in message
    assert took < 1.0
    np.testing.assert_array_equal(_table(model.get_layer("emb")), before)


def _nested_model():
    inner = _model()
    inputs = keras.Input((3,), dtype="int32")
    return keras.Model(inputs, inner(inputs))


def _set_in_config(config, layer_name, **entries):
    """Set `entries` in the config of every layer named `layer_name`, however
    deep (nested models)."""
    if isinstance(config, dict):
        inner = config.get("config")
        if isinstance(inner, dict) and inner.get("name") == layer_name:
            inner.update(entries)
        for value in config.values():
            _set_in_config(value, layer_name, **entries)
    elif isinstance(config, list):
        for value in config:
            _set_in_config(value, layer_name, **entries)


needs_memory_size = pytest.mark.skipif(
    limits.physical_memory() is None,
    reason="this platform has no os.sysconf('SC_PHYS_PAGES'): memory unknown",
)


@needs_memory_size
@pytest.mark.parametrize(
    "kind", ["input_dim", "output_dim", "nested_model", "legacy_h5"]
)
def test_config_table_larger_than_memory_is_refused(kind, tmp_path):
    # Before: JaxRuntimeError, TensorFlow's ResourceExhaustedError after 10 s,
    # torch's RuntimeError. Now a ValueError naming the file, on every backend,
    # before any layer is built.
    entries = {"output_dim": 10**12} if kind == "output_dim" else {"input_dim": 10**12}
    model = _nested_model() if kind == "nested_model" else _model()
    if kind == "legacy_h5":
        path = tmp_path / "m.h5"
        model.save(path)
        with h5py.File(path, "r+") as f:
            config = json.loads(f.attrs["model_config"])
            _set_in_config(config, "emb", **entries)
            f.attrs["model_config"] = json.dumps(config)
    else:
        path = tmp_path / "m.keras"
        model.save(path)

        def edit(name, data):
            if name != "config.json":
                return data
            config = json.loads(data)
            _set_in_config(config, "emb", **entries)
            return json.dumps(config)

        _rewrite(path, edit)
    message, took = _load_and_time(keras_embedding_plus.load_model, path)
    # Named by the config check, before Keras builds any layer.
    assert str(path) in message and "its layer 'emb' (Embedding)" in message
    dims = (10**12, 4) if kind != "output_dim" else (10, 10**12)
    assert f"input_dim={dims[0]}, output_dim={dims[1]}" in message
    assert "more than this machine's memory" in message
    assert took < 1.0


def _peak_memory_growth(fn):
    """`(error raised by fn(), its peak resident memory growth in bytes)`.

    Linux resets this process's peak RSS (VmHWM) on writing 5 to
    `/proc/self/clear_refs`; NumPy, h5py and the backends' allocations all
    count (tracemalloc would see NumPy's only).
    """

    def status(key):
        with open("/proc/self/status") as f:
            line = next(x for x in f if x.startswith(key + ":"))
        return int(line.split()[1]) * 1024

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    start = status("VmRSS")
    with pytest.raises(ValueError) as info:
        fn()
    return str(info.value), status("VmHWM") - start


def _can_reset_peak_memory():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


# Keras warns about its own containers whenever a `.weights.h5` load fails.
@pytest.mark.filterwarnings("ignore:Skipping nested container:UserWarning")
@pytest.mark.skipif(
    not _can_reset_peak_memory(),
    reason="the peak memory of a process is reset only on Linux (clear_refs)",
)
@pytest.mark.parametrize(
    "declared",
    [(2**25, 4), (2**22, 7)],
    ids=["512MiB_read_by_blocks", "112MiB_read_whole"],
)
def test_shape_lying_dataset_is_refused_unread(declared, tmp_path):
    # A 20 KB `.weights.h5` whose table dataset declares `declared` (chunked,
    # never written: no bytes stored). Before: read whole, then refused (JAX:
    # +1.1 GB and 2.6 s for the first; every backend: +240 MB for the second,
    # below the size read by blocks). Now refused from the declared shape.
    path = tmp_path / "lying.weights.h5"
    model = _model_with_table_dataset(
        path, shape=declared, dtype="f4", chunks=(1024, declared[1])
    )
    assert path.stat().st_size < 100_000
    model.set_weights([w + 1.0 for w in model.get_weights()])
    before = model.get_weights()
    start = time.perf_counter()
    message, growth = _peak_memory_growth(
        lambda: keras_embedding_plus.load_weights(model, path)
    )
    took = time.perf_counter() - start
    print(f"refused in {took:.4f} s, peak memory +{growth / MiB:.1f} MiB")
    assert str(path) in message and "weight 'emb/embeddings'" in message
    assert f"declares shape {declared}" in message and "(10, 4)" in message
    assert growth < 64 * MiB and took < 1.0
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)


# Keras warns about its own containers whenever a `.weights.h5` load fails.
@pytest.mark.filterwarnings("ignore:Skipping nested container:UserWarning")
@pytest.mark.parametrize("stored", ["int32", "S1", "complex64"])
def test_dataset_of_another_kind_is_refused_unread(stored, tmp_path):
    # The table's dataset has the right shape but holds integers, strings or
    # complex numbers: refused from its declared dtype, nothing assigned.
    path = tmp_path / "kind.weights.h5"
    model = _model_with_table_dataset(path, shape=(10, 4), dtype=stored)
    before = model.get_weights()
    with pytest.raises(ValueError) as info:
        keras_embedding_plus.load_weights(model, path)
    message = str(info.value)
    assert str(path) in message and f"declares {np.dtype(stored)} values" in message
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)


# Keras warns about its own containers whenever a `.weights.h5` load fails.
@pytest.mark.filterwarnings("ignore:Skipping nested container:UserWarning")
def test_narrower_float_dataset_still_loads(tmp_path):
    # Floats of another width load as Keras loads them (cast).
    path = tmp_path / "half.weights.h5"
    table = np.random.default_rng(0).normal(size=(10, 4)).astype("float16")
    model = _model_with_table_dataset(path, data=table)
    keras_embedding_plus.load_weights(model, path)
    np.testing.assert_array_equal(_table(model.get_layer("emb")), table)


def _model_with_table_dataset(path, **dataset):
    """`_model()`, its weights saved to `path` with the table's dataset replaced
    by `h5py`'s `create_dataset(name, **dataset)`."""
    model = _model()
    model.save_weights(path)
    with h5py.File(path, "r+") as f:
        name = _table_dataset(f)
        del f[name]
        f.create_dataset(name, **dataset)
    return model


def _table_dataset(f):
    """The path of the `(10, 4)` dataset: the embedding table (Keras names the
    groups by class, not by layer name)."""
    found = []
    f.visititems(
        lambda name, obj: (
            found.append(name)
            if isinstance(obj, h5py.Dataset) and obj.shape == (10, 4)
            else None
        )
    )
    (name,) = found
    return name
