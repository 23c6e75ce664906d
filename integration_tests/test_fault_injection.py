"""Fault injection on every format we read: nothing hangs, crashes or
is lost, and every error names the file.

* Random faults, in a subprocess (`_fault_worker.py`): truncation at a random
  offset and 1 to 8 random bytes flipped, `FAULT_CASES` of each per format,
  loaded with `keras_embedding_plus.load_weights` (`.keras`, `.weights.h5`,
  legacy `.h5`), `load_vectors` (word2vec / GloVe text, word2vec binary) or
  `load_saved_model` (an exported TF SavedModel: one of its files damaged).
* Structured faults, here: an array of the wrong shape or dtype, a missing key,
  and a directory, a FIFO or an unreadable file in place of the file (for a
  SavedModel: a file in place of the directory, a directory without
  `saved_model.pb`, a FIFO or an unreadable file inside it).

Every failure must be a `ValueError` naming the file, with every variable of the
model and its optimizer as before. What the formats cannot detect is checked to
be only that: `.keras` archives carry CRC-32 checksums, so any damage there is
an error; HDF5 and word-vector files have none, so a flip inside an array's
bytes (or a text number) loads as another number. A SavedModel's variables
carry CRC-32C checksums; its `saved_model.pb` (a protocol buffer) has none, and
TensorFlow ignores a damaged `fingerprint.pb` (it logs an error and loads).

Exporting a SavedModel needs TensorFlow, and `TFSMLayer` runs on the TensorFlow
backend only: those cases run there.
"""

import collections
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

import keras_embedding_plus

# The slowest tests: run them alone with `-m slow`, or skip them with
# `-m "not slow"` (CONTRIBUTING.md).
pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent


def _load_worker():
    """`_fault_worker.py`, a script run by path, loaded as a module for its helpers."""
    spec = importlib.util.spec_from_file_location(
        "_fault_worker", HERE / "_fault_worker.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_worker = _load_worker()
make_model, values = _worker.make_model, _worker.values
FAULT_CASES = int(os.environ.get("KEP_FAULT_CASES", "10"))
BACKEND = keras.backend.backend()
ONLY_TENSORFLOW = pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="a TF SavedModel is exported with TensorFlow and read by `TFSMLayer`, "
    f"which runs on the TensorFlow backend only (this is {BACKEND})",
)
FORMATS = (
    "keras",
    "weights_h5",
    "legacy_h5",
    "vectors_text",
    "vectors_bin",
    pytest.param("saved_model", marks=ONLY_TENSORFLOW),
)
# What each format can tell: `.keras` is checksummed (CRC-32 per member).
CHECKSUMMED = {"keras"}


def _run_worker(fmt, tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    result = subprocess.run(
        [sys.executable, str(HERE / "_fault_worker.py"), fmt, str(tmp_path), "0"]
        + [str(FAULT_CASES)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=str(tmp_path),
    )
    # A negative status is a signal: the reader crashed the interpreter.
    assert result.returncode == 0, result.stderr[-3000:]
    line = [x for x in result.stdout.splitlines() if x.startswith("RESULTS ")]
    return json.loads(line[-1][len("RESULTS ") :])


@pytest.mark.parametrize("fmt", FORMATS)
def test_random_faults(fmt, tmp_path):
    results = _run_worker(fmt, tmp_path)
    assert len(results) == 2 * FAULT_CASES
    counts = collections.Counter(r["outcome"] for r in results)
    print(f"{fmt}: {dict(counts)}")
    for r in results:
        if r["outcome"] == "error":
            assert r["type"] == "ValueError", r
            assert r["names_file"], r
            assert r["unchanged"], r
        elif r["outcome"] == "loaded" and not r["equal"]:
            # Only a format without checksums may read damage as other numbers,
            # and for binary files only where bytes were flipped: a truncated
            # binary file is always an error.
            assert fmt not in CHECKSUMMED, r
            assert r["fault"].startswith("flipped") or fmt == "vectors_text", r
            # A SavedModel's variables are checksummed: only its graph may
            # read flipped bytes as another model.
            assert fmt != "saved_model" or "saved_model.pb" in r["fault"], r
        elif r["outcome"] == "partial":
            assert fmt == "vectors_text", r


# ---- structured faults ---------------------------------------------------------


def _saved(tmp_path, fmt):
    model = make_model()
    path = str(
        tmp_path / {"keras": "m.keras", "weights_h5": "m.weights.h5"}.get(fmt, "m.h5")
    )
    if fmt == "weights_h5":
        model.save_weights(path)
    else:
        model.save(path)
    model.set_weights([w + 1.0 for w in model.get_weights()])
    return model, path


def _dataset_of_shape(f, shape):
    """The h5 path of the first array of `shape`: `(50, 8)` is the embedding
    table, `(8, 2)` the head's kernel."""
    found = []
    f.visititems(
        lambda name, obj: (
            found.append(name)
            if isinstance(obj, h5py.Dataset) and obj.shape == shape
            else None
        )
    )
    return found[0]


def _table_dataset(f):
    return _dataset_of_shape(f, (50, 8))


def _kernel_dataset(f):
    return _dataset_of_shape(f, (8, 2))


EDITS = {
    "wrong_shape": lambda f: _replace(f, _table_dataset(f), np.zeros((49, 8), "f4")),
    "wrong_dtype": lambda f: _replace(
        f, _table_dataset(f), np.full((50, 8), b"x", dtype="S1")
    ),
    "missing_key": lambda f: f.__delitem__(_kernel_dataset(f)),
}


def _replace(f, name, value):
    del f[name]
    f[name] = value


def _edit(path, fmt, edit):
    if fmt != "keras":
        with h5py.File(path, "r+") as f:
            edit(f)
        return
    # A `.keras` archive: edit its weights member, write a consistent archive.
    with zipfile.ZipFile(path) as archive:
        members = {n: archive.read(n) for n in archive.namelist()}
    inner = Path(path).with_suffix(".inner.h5")
    inner.write_bytes(members["model.weights.h5"])
    with h5py.File(inner, "r+") as f:
        edit(f)
    members["model.weights.h5"] = inner.read_bytes()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _check_refused(model, path):
    before = values(model)
    with pytest.raises(ValueError) as info:
        keras_embedding_plus.load_weights(model, path)
    assert path in str(info.value), str(info.value)
    after = values(model)
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)
    return str(info.value)


@pytest.mark.parametrize("edit", sorted(EDITS))
@pytest.mark.parametrize("fmt", ("keras", "weights_h5", "legacy_h5"))
def test_structured_faults_keep_the_weights(fmt, edit, tmp_path):
    model, path = _saved(tmp_path, fmt)
    _edit(path, fmt, EDITS[edit])
    _check_refused(model, path)


def test_a_good_file_loads(tmp_path):
    model, path = _saved(tmp_path, "weights_h5")
    saved = make_model()
    keras_embedding_plus.load_weights(model, path)
    for a, b in zip(model.get_weights(), saved.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", ("directory", "fifo", "missing", "unreadable"))
def test_not_a_readable_file(kind, tmp_path):
    model = make_model()
    path = str(tmp_path / "m.weights.h5")
    if kind == "directory":
        os.mkdir(path)
    elif kind == "fifo":
        os.mkfifo(path)  # Opening it to read would block: refused unopened.
    elif kind == "unreadable":
        if os.geteuid() == 0:
            pytest.skip("root reads files whatever their permissions")
        model.save_weights(path)
        os.chmod(path, 0)
    message = _check_refused(model, path)
    expected = {
        "directory": "is a directory",
        "fifo": "not a regular file",
        "missing": "no such file",
        "unreadable": "not readable",
    }[kind]
    assert expected in message
    # `load_model` says the same.
    with pytest.raises(ValueError, match=expected):
        keras_embedding_plus.load_model(path)


def test_keras_load_weights_is_not_transactional(tmp_path):
    # Why `load_weights` exists: Keras's own assigns layer by layer. A file whose
    # head kernel is missing leaves Keras's model with the file's table.
    model, path = _saved(tmp_path, "weights_h5")
    _edit(path, "weights_h5", EDITS["missing_key"])
    before = model.get_weights()
    with pytest.raises(Exception):  # noqa: B017 - Keras's own error, any type
        model.load_weights(path)
    changed = [
        not np.array_equal(a, b)
        for a, b in zip(before, model.get_weights(), strict=True)
    ]
    assert any(changed), "Keras's load_weights became transactional"


# ---- SavedModel: structured and file-type faults -------------------------------


def _exported(tmp_path):
    """(model, SavedModel directory, the model's outputs for `_IDS`)."""
    model = make_model()
    path = str(tmp_path / "exported")
    model.export(path, format="tf_saved_model", verbose=False)
    return model, path, keras.ops.convert_to_numpy(model(_IDS))


_IDS = np.arange(10, dtype="int32").reshape(2, 5)


def _rewrite_variables(path, edit):
    """Rewrite the SavedModel's variables checkpoint with `edit(tensors)` applied,
    as TensorFlow writes it (`SaveV2`): a consistent file with other contents."""
    import tensorflow as tf

    prefix = os.path.join(path, "variables", "variables")
    reader = tf.train.load_checkpoint(prefix)
    tensors = {k: reader.get_tensor(k) for k in reader.get_variable_to_dtype_map()}
    edit(tensors)
    for name in os.listdir(os.path.join(path, "variables")):
        os.remove(os.path.join(path, "variables", name))
    names = sorted(tensors)
    tf.raw_ops.SaveV2(
        prefix=prefix,
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(tensors[n]) for n in names],
    )


def _keys_of_shape(tensors, shape):
    # A Keras export records each variable twice (`variables/i`, `_all_variables/j`).
    return [k for k, v in tensors.items() if np.shape(v) == shape]


def _set_all(tensors, shape, value):
    for key in _keys_of_shape(tensors, shape):
        tensors[key] = value


CHECKPOINT_EDITS = {
    "wrong_shape": lambda t: _set_all(t, (50, 8), np.zeros((49, 8), "f4")),
    "wrong_dtype": lambda t: _set_all(t, (50, 8), np.zeros((50, 8), "f8")),
    "missing_key": lambda t: [t.pop(k) for k in _keys_of_shape(t, (8, 2))],
}


@ONLY_TENSORFLOW
def test_saved_model_loads_and_matches(tmp_path):
    _, path, expected = _exported(tmp_path)
    layer = keras_embedding_plus.load_saved_model(path)
    assert isinstance(layer, keras.layers.TFSMLayer)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(_IDS)), expected)


@ONLY_TENSORFLOW
@pytest.mark.parametrize("edit", sorted(CHECKPOINT_EDITS))
def test_saved_model_structured_faults(edit, tmp_path):
    _, path, _ = _exported(tmp_path)
    _rewrite_variables(path, CHECKPOINT_EDITS[edit])
    with pytest.raises(ValueError) as info:
        keras_embedding_plus.load_saved_model(path)
    assert path in str(info.value)
    what = {"wrong_shape": "shape", "wrong_dtype": "dtype", "missing_key": "not found"}
    assert what[edit] in str(info.value)


@pytest.mark.parametrize(
    "kind", ("file", "missing", "no_saved_model_pb", "fifo", "unreadable")
)
def test_saved_model_not_a_readable_directory(kind, tmp_path):
    # Checked before TensorFlow reads anything: the same on every backend.
    path = str(tmp_path / "exported")
    if kind != "missing":
        os.makedirs(os.path.join(path, "variables"))
        Path(path, "saved_model.pb").write_bytes(b"")
    if kind == "file":
        path = str(tmp_path / "m.keras")
        Path(path).write_bytes(b"PK")
    elif kind == "no_saved_model_pb":
        os.remove(os.path.join(path, "saved_model.pb"))
    elif kind == "fifo":
        os.mkfifo(os.path.join(path, "variables", "variables.index"))
    elif kind == "unreadable":
        if os.geteuid() == 0:
            pytest.skip("root reads files whatever their permissions")
        os.chmod(os.path.join(path, "saved_model.pb"), 0)
    expected = {
        "file": "it is a file, not a SavedModel directory",
        "missing": "no such directory",
        "no_saved_model_pb": "has no `saved_model.pb`",
        "fifo": "is not a regular file",
        "unreadable": "is not readable",
    }[kind]
    with pytest.raises(ValueError, match=expected) as info:
        keras_embedding_plus.load_saved_model(path)
    assert path in str(info.value)


@pytest.mark.skipif(
    BACKEND == "tensorflow", reason="on TensorFlow the directory loads (tested above)"
)
def test_saved_model_on_another_backend_says_tensorflow(tmp_path):
    # As `keras.layers.TFSMLayer` does, after the directory passed its checks.
    path = str(tmp_path / "exported")
    os.makedirs(path)
    Path(path, "saved_model.pb").write_bytes(b"")
    with pytest.raises(NotImplementedError, match="TensorFlow backend only"):
        keras_embedding_plus.load_saved_model(path)
