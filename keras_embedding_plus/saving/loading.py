"""Saving support: all-or-nothing weight loading, and loaders that name the file.

(The padding-mask op legacy `.h5` files need is `layers.masking.PaddingMask`.)

* `check_weight_values(layer, values, source)` checks every value against the layer's
  weights before anything is assigned, so that a wrong-shape table never leaves
  the layer half-loaded.
* `load_weights(model, filepath)` is `model.load_weights` made all or nothing.
* `load_model(filepath, ...)` is `keras.models.load_model` with errors that name
  the file: Keras reports a truncated `.keras` file as "File not found" and a
  corrupted one as `BadZipFile: Bad CRC-32 for file 'model.weights.h5'`, without
  saying which file. What the file declares (its members' sizes, its layers'
  table sizes) is checked first, before anything is inflated or built
  (`limits`).
* `load_saved_model(dirpath, ...)` is `keras.layers.TFSMLayer` (Keras 3's reader
  of an exported TF SavedModel) with one error type: TensorFlow raises `OSError`,
  `IndexError`, `ValueError`, `FileNotFoundError` or one of its own `OpError`s,
  depending on which file is damaged and how.
"""

from __future__ import annotations

import json
import os
import re
import types
import zipfile
import zlib

import keras
import numpy as np

from keras_embedding_plus import backends, compat
from keras_embedding_plus.saving import blocks as _chunks
from keras_embedding_plus.saving import limits


def _shape(value):
    shape = getattr(value, "shape", None)
    if shape is None:
        shape = np.shape(value)
    return tuple(shape)


def check_weight_values(layer, values, source):
    """Raise `ValueError` unless `values` fit `layer.weights` one for one.

    `source` names what is being loaded (`set_weights`, `load_weights`), for the
    message. Nothing is assigned here: callers assign only after this passes.
    """
    values = list(values)
    weights = layer.weights
    if len(values) != len(weights):
        raise ValueError(
            f"`{source}` on layer '{layer.name}' expects {len(weights)} weight(s) "
            f"({', '.join(w.path for w in weights)}). "
            f"Received: {len(values)} weight(s)."
        )
    for weight, value in zip(weights, values, strict=True):
        shape = _shape(value)
        if shape != tuple(weight.shape):
            raise ValueError(
                f"`{source}` on layer '{layer.name}': weight '{weight.path}' has "
                f"shape {tuple(weight.shape)}, but the value given for it has "
                f"shape {shape}; the layer's weights were left unchanged. "
                f"Received: value.shape={shape}."
            )


def store_values(store):
    """The values of a Keras weights store (`"0"`, `"1"`, ...), in order.

    A big table that the backend writes by blocks is left in the file (its
    h5py dataset, read block by block by `_chunks.assign`) rather than read
    whole into memory first.
    """
    values = []
    for i in range(len(store.keys())):
        dataset = compat.stored_rows(store, str(i))
        by_blocks = dataset is not None and _chunks.is_big(dataset.shape)
        if by_blocks and backends.blocks.writes_rows_in_place():
            values.append(dataset)
        else:
            values.append(store[str(i)])
    return values


def load_model(
    filepath: str | os.PathLike,
    custom_objects: dict | None = None,
    compile: bool = True,
    safe_mode: bool = True,
) -> keras.Model:
    """`keras.models.load_model`, with errors that name the file.

    Loads any model Keras loads (`.keras`, legacy `.h5`), with the same arguments.
    A missing, truncated or corrupted file raises `ValueError` naming `filepath`
    and what is wrong with it; the original error is chained (`__cause__`).
    Errors in the model's config (an unknown key, an invalid value) are raised as
    Keras raises them, naming the key or the value. What the file declares is
    checked before anything is inflated or built: a `.keras` member declaring
    over 100 times the bytes it stores (a decompression bomb), or a layer of
    this package whose table could not fit in this machine's memory, raises
    `ValueError` naming the file and the member or layer.

    Args:
        filepath: String or `pathlib.Path`. The file to load.
        custom_objects: Optional dict mapping names to custom classes or
            functions (as in `keras.models.load_model`).
        compile: Boolean. Whether to compile the model after loading.
        safe_mode: Boolean. Whether to disallow unsafe `lambda` deserialization.

    Returns:
        The loaded Keras model.
    """
    path = os.fspath(filepath)

    def check_config(config, prefix):
        limits.check_config_tables(config, prefix, custom_objects)

    check_file(path, "a model", check_config=check_config)
    try:
        # Big tables are not drawn before the file's values replace them.
        with _chunks.values_come_from_a_file():
            return keras.models.load_model(
                path,
                custom_objects=custom_objects,
                compile=compile,
                safe_mode=safe_mode,
            )
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as e:
        raise ValueError(
            f"Cannot load a model from '{path}': the file is truncated or "
            f"corrupted ({type(e).__name__}: {e})."
        ) from e
    except ValueError as e:
        if path in str(e):
            raise
        raise ValueError(f"Cannot load a model from '{path}': {e}") from e


def check_file(path, what, most_bytes=None, check_config=None):
    """Raise `ValueError` naming `path` unless it is a readable regular file
    (and, for `.keras`, a zip archive whose members' CRCs match, holding a
    `config.json`).

    What a `.keras` archive declares is checked before any member is
    inflated: every member's size against its stored size, the weights'
    against `most_bytes` (the most the loading model's weights file can hold,
    if known); then `check_config(config, prefix)`, if given, sees the parsed
    model config (of a `.keras` or legacy `.h5` file) before the CRC pass,
    which inflates what passed, each member up to its declared size.
    """
    prefix = f"Cannot load {what} from '{path}'"
    if os.path.isdir(path):
        raise ValueError(f"{prefix}: it is a directory, not a file.")
    if not os.path.exists(path):
        raise ValueError(f"{prefix}: there is no such file.")
    if not os.path.isfile(path):  # A FIFO or a device would block or stream.
        raise ValueError(f"{prefix}: it is not a regular file.")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{prefix}: the file is not readable (permissions).")
    if path.endswith(".keras"):
        _check_archive(path, prefix, most_bytes, check_config)
    elif path.endswith(".h5") and check_config is not None:
        config = _legacy_h5_config(path)
        if config is not None:
            check_config(config, prefix)


# What a damaged zip archive raises while it is read.
_DAMAGED = (
    zipfile.BadZipFile,
    EOFError,
    OSError,
    ValueError,
    zlib.error,  # A damaged DEFLATE stream.
    NotImplementedError,  # A damaged compression method field.
    RuntimeError,  # A damaged flag says "encrypted".
)


def _damaged(prefix, error):
    return ValueError(
        f"{prefix}: the file is truncated or corrupted "
        f"({type(error).__name__}: {error})."
    )


def _check_archive(path, prefix, most_bytes, check_config):
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{prefix}: it is not a valid `.keras` file (not a zip archive; "
            f"{os.path.getsize(path)} bytes), so it is truncated or corrupted."
        )
    try:
        archive = zipfile.ZipFile(path)
    except _DAMAGED as e:
        raise _damaged(prefix, e) from e
    with archive:
        # The directory's declared sizes first: nothing inflated yet.
        limits.check_members(archive, prefix, most_bytes)
        if check_config is not None:
            config = _archive_config(archive, prefix)
            if config is not None:
                check_config(config, prefix)
        try:
            bad = archive.testzip()  # Each member up to its declared size.
            names = archive.namelist()
        except _DAMAGED as e:
            raise _damaged(prefix, e) from e
    if bad is not None:
        raise ValueError(
            f"{prefix}: the file is corrupted: its member '{bad}' does not "
            "match its CRC-32 checksum."
        )
    if "config.json" not in names:
        raise ValueError(
            f"{prefix}: it is a zip archive but not a `.keras` file (it has "
            "no `config.json`, which every `.keras` file holds)."
        )


def _archive_config(archive, prefix):
    """The parsed `config.json` of a `.keras` archive, or None if it has none or
    it is not JSON (Keras says so next). Its size passed `check_members`."""
    try:
        data = archive.read("config.json")
    except KeyError:
        return None
    except _DAMAGED as e:
        raise _damaged(prefix, e) from e
    try:
        return json.loads(data)
    except ValueError:
        return None


def _legacy_h5_config(path):
    """The parsed model config of a legacy `.h5` file (an attribute: no array
    is read), or None if there is none or it cannot be read (Keras says why)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            config = f.attrs.get("model_config")
            if isinstance(config, bytes):
                config = config.decode("utf-8")
            return json.loads(config) if isinstance(config, str) else None
    except (OSError, ValueError):
        return None


def _model_variables(model):
    """Every variable a weights file can write into: the model's and its
    optimizer's, each once."""
    variables, seen = [], set()
    optimizer = getattr(model, "optimizer", None)
    extra = list(getattr(optimizer, "variables", None) or [])
    for variable in [*model.variables, *extra]:
        if id(variable) not in seen:
            seen.add(id(variable))
            variables.append(variable)
    return variables


def load_weights(
    model: keras.Model | keras.layers.Layer,
    filepath: str | os.PathLike,
    skip_mismatch: bool = False,
) -> None:
    """`model.load_weights(filepath)`, all or nothing, with errors that name the file.

    Keras's `load_weights` assigns layer by layer: a file that fails half-way
    (a truncated or corrupted `.weights.h5`, a missing key, a wrong shape) leaves
    the model half old, half new. Here, on any failure every variable of the
    model and of its optimizer is put back as it was, and a `ValueError` names
    the file and what is wrong (the original error is chained, `__cause__`).
    What the file declares is checked before it is read: a `.keras` member
    declaring more bytes than the model's weights can take up (or a
    decompression bomb), a dataset of another shape or kind than the layer's
    variable (in this package's layers) are refused without reading them.

    Args:
        model: A built Keras model (or layer).
        filepath: String or `pathlib.Path`: a `.weights.h5`, `.keras` or legacy
            `.h5` file, as `model.load_weights` takes.
        skip_mismatch: Boolean, as in `model.load_weights`.

    The old values are kept while loading, where each variable lives: a copy
    of the model's size on TensorFlow and PyTorch, nothing on JAX (whose
    arrays are immutable).
    """
    path = os.fspath(filepath)
    variables = _model_variables(model)
    most_bytes = None
    if model.built and not skip_mismatch:
        objects = len(variables) + len(compat.flatten_layers(model)) + 1
        most_bytes = limits.weights_bytes(variables, objects)
    check_file(path, f"weights into model '{model.name}'", most_bytes)
    snapshot = [backends.blocks.snapshot(v) for v in variables]
    try:
        model.load_weights(path, skip_mismatch=skip_mismatch)
    except Exception as e:
        for variable, value in zip(variables, snapshot, strict=True):
            variable.assign(value)
        raise ValueError(
            f"Cannot load weights from '{path}' into model '{model.name}': "
            f"{type(e).__name__}: {e}. The model's weights are unchanged."
        ) from e


def check_stored(name, variables, store):
    """Raise `ValueError` unless what `store` declares fits `variables`, before
    any value is read.

    The number of values, and for an HDF5 store (`.weights.h5`, `.keras`) each
    dataset's shape and dtype, as the file declares them: a file whose dataset
    declares a 512 MiB table for a 10 x 4 variable is refused without reading
    it. Other stores are checked once read (`check_weight_values`).
    """
    count = len(store.keys())
    if count != len(variables):
        raise ValueError(
            f"`load_weights` on layer '{name}' expects {len(variables)} "
            f"weight(s) ({', '.join(v.path for v in variables)}). "
            f"Received: {count} weight(s) in the file."
        )
    for i, variable in enumerate(variables):
        dataset = compat.stored_dataset(store, str(i))
        if dataset is None:
            continue
        expected, stored = tuple(variable.shape), tuple(dataset.shape)
        if stored != expected:
            raise ValueError(
                f"`load_weights` on layer '{name}': weight '{variable.path}' "
                f"has shape {expected}, but the file declares shape {stored} "
                "for it; nothing was read and the layer's weights were left "
                f"unchanged. Received: stored shape={stored}."
            )
        stored_kind = compat.stored_kind(dataset)
        expected_kind = np.dtype(limits.numpy_dtype(variable.dtype)).kind
        if not _same_kind(stored_kind, expected_kind):
            raise ValueError(
                f"`load_weights` on layer '{name}': weight '{variable.path}' "
                f"holds {variable.dtype} values, but the file declares "
                f"{dataset.dtype} values for it; nothing was read and the "
                "layer's weights were left unchanged. "
                f"Received: stored dtype={dataset.dtype}."
            )


def _same_kind(stored, expected):
    """Whether values of NumPy kind `stored` load into a variable of kind
    `expected`: floats into floats, integers (signed or not) into integers."""
    groups = ("f", "iu", "b")
    return any(stored in group and expected in group for group in groups)


def assign_checked(name, variables, store):
    """Assign a store's values to `variables`, all checked first.

    What the file declares (how many values, their shapes and dtypes) is
    checked before anything is read (`check_stored`), and nothing is assigned
    unless every value fits (a failed load keeps the old weights). A big
    table read from the file block by block (`store_values`) can still fail
    half-way if the file is corrupted there; `load_weights` puts the old
    values back then.
    """
    check_stored(name, variables, store)
    values = store_values(store)
    check_weight_values(
        types.SimpleNamespace(name=name, weights=variables), values, "load_weights"
    )
    for variable, value in zip(variables, values, strict=True):
        _chunks.assign(variable, value)  # By blocks for a big table.


_SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


def check_saved_model(path):
    """Raise `ValueError` naming `path` unless it is a SavedModel directory whose
    files are all regular, readable files (a FIFO would block the reader)."""
    prefix = f"Cannot load a SavedModel from '{path}'"
    if not os.path.exists(path):
        raise ValueError(f"{prefix}: there is no such directory.")
    if not os.path.isdir(path):
        raise ValueError(
            f"{prefix}: it is a file, not a SavedModel directory (a `.keras` or "
            "`.h5` file loads with `keras_embedding_plus.load_model`)."
        )
    if not any(os.path.exists(os.path.join(path, f)) for f in _SAVED_MODEL_FILES):
        raise ValueError(
            f"{prefix}: the directory has no `saved_model.pb`, so it is not a "
            "SavedModel (or the file was deleted)."
        )
    for root, directories, files in os.walk(path):
        for name in [*directories, *files]:
            entry = os.path.join(root, name)
            if name in directories:
                readable = os.access(entry, os.R_OK | os.X_OK)
            elif not os.path.isfile(entry):
                raise ValueError(f"{prefix}: '{entry}' is not a regular file.")
            else:
                readable = os.access(entry, os.R_OK)
            if not readable:
                raise ValueError(f"{prefix}: '{entry}' is not readable (permissions).")


# TensorFlow prefixes its op errors with the graph function they ran in.
_FUNCTION_NODE = re.compile(r"\{\{function_node [^}]*\}\}\s*")


def load_saved_model(
    filepath: str | os.PathLike,
    call_endpoint: str = "serve",
    call_training_endpoint: str | None = None,
    trainable: bool = True,
    name: str | None = None,
) -> keras.layers.Layer:
    """`keras.layers.TFSMLayer(filepath, ...)`, with errors that name the directory.

    Reloads a model exported with `model.export(path, format="tf_saved_model")`
    as a Keras layer, as `keras.layers.TFSMLayer` does (TensorFlow backend only,
    as there). A missing or damaged SavedModel (a truncated or corrupted
    `saved_model.pb` or variables file, a variable of the wrong shape or dtype,
    a missing variable, a file in place of the directory, an unreadable or
    non-regular file inside it) raises `ValueError` naming `filepath` and what
    is wrong; the original error is chained (`__cause__`). Loading builds a new
    layer: nothing that exists is changed, whatever the outcome.

    Args:
        filepath: String or `pathlib.Path`. The SavedModel directory.
        call_endpoint: Name of the endpoint to call (as in `TFSMLayer`).
        call_training_endpoint: Optional endpoint for training calls.
        trainable: Boolean. Whether the reloaded variables are trainable.
        name: Optional name of the layer.

    Returns:
        A `keras.layers.TFSMLayer`.
    """
    path = os.fspath(filepath)
    check_saved_model(path)
    if keras.backend.backend() != "tensorflow":
        raise NotImplementedError(
            "`load_saved_model` reads a TF SavedModel through "
            "`keras.layers.TFSMLayer`, which runs on the TensorFlow backend only. "
            f"Received: backend={keras.backend.backend()!r}."
        )
    try:
        return keras.layers.TFSMLayer(
            path,
            call_endpoint=call_endpoint,
            call_training_endpoint=call_training_endpoint,
            trainable=trainable,
            name=name,
        )
    except (TypeError, NotImplementedError):
        raise
    except Exception as e:  # noqa: BLE001 - TensorFlow's errors have no common base
        message = _FUNCTION_NODE.sub("", str(e)).strip()
        raise ValueError(
            f"Cannot load a SavedModel from '{path}': it is damaged or incomplete "
            f"({type(e).__name__}: {message})"
        ) from e
