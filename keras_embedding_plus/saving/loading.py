"""Saving support: all-or-nothing weight loading, and loaders that name the file.

(The padding-mask op legacy `.h5` files need is `layers.masking.PaddingMask`.)

* `check_weight_values(layer, values, source)` checks every value against the layer's
  weights before anything is assigned, so that a wrong-shape table never leaves
  the layer half-loaded.
* `load_weights(model, filepath)` is `model.load_weights` made all or nothing.
* `load_model(filepath, ...)` is `keras.models.load_model` with errors that name
  the file: Keras reports a truncated `.keras` file as "File not found" and a
  corrupted one as `BadZipFile: Bad CRC-32 for file 'model.weights.h5'`, without
  saying which file.
* `load_saved_model(dirpath, ...)` is `keras.layers.TFSMLayer` (Keras 3's reader
  of an exported TF SavedModel) with one error type: TensorFlow raises `OSError`,
  `IndexError`, `ValueError`, `FileNotFoundError` or one of its own `OpError`s,
  depending on which file is damaged and how.
"""

from __future__ import annotations

import os
import re
import types
import zipfile

import keras
import numpy as np

from keras_embedding_plus import backends, compat
from keras_embedding_plus.saving import blocks as _chunks


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
    Keras raises them, naming the key or the value.

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
    check_file(path, "a model")
    try:
        return keras.models.load_model(
            path, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode
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


def check_file(path, what):
    """Raise `ValueError` naming `path` unless it is a readable regular file
    (and, for `.keras`, a zip archive whose members' CRCs match, holding a
    `config.json`)."""
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
        if not zipfile.is_zipfile(path):
            raise ValueError(
                f"{prefix}: it is not a valid `.keras` file (not a zip archive; "
                f"{os.path.getsize(path)} bytes), so it is truncated or corrupted."
            )
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
                names = archive.namelist()
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
            raise ValueError(
                f"{prefix}: the file is truncated or corrupted "
                f"({type(e).__name__}: {e})."
            ) from e
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
    check_file(path, f"weights into model '{model.name}'")
    variables = _model_variables(model)
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


def assign_checked(name, variables, store):
    """Assign a store's values to `variables`, all shapes checked first.

    Nothing is assigned unless every value fits (a failed load keeps the old
    weights). A big table read from the file block by block (`store_values`)
    can still fail half-way if the file is corrupted there;
    `load_weights` puts the old values back then.
    """
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
