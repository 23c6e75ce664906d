"""Fault injection, run in a subprocess by `test_fault_injection.py`.

`python _fault_worker.py FORMAT DIRECTORY SEED CASES` saves a small model (or a
word-vector file) in FORMAT, then for CASES seeded random faults of each kind
(truncation at a random offset; 1 to 8 random bytes flipped) loads the damaged
copy the way a user would, and prints one JSON list of outcomes:

* `{"fault", "outcome": "error", "type", "names_file", "unchanged"}`: the load
  raised; `unchanged`: every variable of the model and its optimizer (or, for
  vectors, nothing to keep) equals what it was before;
* `{"fault", "outcome": "loaded", "equal"}`: the load succeeded; `equal`: the
  values read equal the saved ones (the damage hit bytes the reader ignores);
* `{"fault", "outcome": "partial"}` (word vectors): a file cut at the end of a
  line is a valid shorter file; its missing tokens read as not found.

For `saved_model` (TensorFlow backend), the model is exported as a TF SavedModel
directory; each case damages one of its files, drawn at random, and loads the
directory with `keras_embedding_plus.load_saved_model`. `equal` compares the
reloaded layer's outputs with the model's. A load builds a new layer, so there
is no model to keep unchanged.

A subprocess, so that a reader that crashes or hangs on a damaged file shows up
as the worker's exit status or timeout instead of taking pytest with it.
"""

import json
import os
import shutil
import sys

import keras
import numpy as np

import keras_embedding_plus
from keras_embedding_plus import Embedding


def make_model():
    keras.utils.set_random_seed(7)
    inputs = keras.Input((5,), dtype="int32")
    x = Embedding(50, 8, mask_zero=True, name="emb")(inputs)
    x = keras.layers.GlobalAveragePooling1D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    model.compile(optimizer="adam", loss="mse")
    ids = np.random.default_rng(0).integers(0, 50, (16, 5)).astype("int32")
    model.fit(ids, np.zeros((16, 2), "float32"), epochs=1, verbose=0)
    return model


def variables(model):
    return list(model.variables) + list(model.optimizer.variables)


def values(model):
    return [np.array(keras.ops.convert_to_numpy(v.value)) for v in variables(model)]


def restore(model, saved_values):
    for variable, value in zip(variables(model), saved_values, strict=True):
        variable.assign(value)


def same(a, b):
    return len(a) == len(b) and all(
        x.shape == y.shape and np.array_equal(x, y, equal_nan=True)
        for x, y in zip(a, b, strict=True)
    )


def damaged(data, rng):
    """(fault name, damaged bytes) pairs: truncations and byte flips."""
    offset = int(rng.integers(0, len(data)))
    yield f"truncated_at_{offset}", data[:offset]
    flipped = bytearray(data)
    positions = rng.integers(0, len(data), int(rng.integers(1, 9)))
    for position in positions:
        flipped[position] ^= int(rng.integers(1, 256))
    yield f"flipped_{sorted(int(p) for p in positions)}", bytes(flipped)


def save(model, fmt, directory):
    if fmt == "keras":
        path = os.path.join(directory, "model.keras")
        model.save(path)
    elif fmt == "weights_h5":
        path = os.path.join(directory, "model.weights.h5")
        model.save_weights(path)
    elif fmt == "legacy_h5":
        path = os.path.join(directory, "model.h5")
        model.save(path)
    return path


def error_outcome(fault, error, target, unchanged):
    """The record of a load that raised `error`."""
    return {
        "fault": fault,
        "outcome": "error",
        "type": type(error).__name__,
        "names_file": target in str(error),
        "unchanged": unchanged,
        "message": str(error)[:300],
    }


IDS = np.random.default_rng(1).integers(0, 50, (4, 5)).astype("int32")


def saved_model_case(directory, rng, cases):
    """The `saved_model` format's outcomes (see the module docstring)."""
    model = make_model()
    source = os.path.join(directory, "exported")
    model.export(source, format="tf_saved_model", verbose=False)
    expected = keras.ops.convert_to_numpy(model(IDS))
    members = sorted(
        os.path.relpath(os.path.join(root, f), source)
        for root, _, files in os.walk(source)
        for f in files
    )
    target = os.path.join(directory, "damaged")
    results = []
    for _ in range(cases):
        member = members[int(rng.integers(0, len(members)))]
        data = open(os.path.join(source, member), "rb").read()
        for fault, content in damaged(data, rng):
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target)
            with open(os.path.join(target, member), "wb") as f:
                f.write(content)
            fault = f"{fault}_in_{member}"
            try:
                layer = keras_embedding_plus.load_saved_model(target)
                got = keras.ops.convert_to_numpy(layer(IDS))
            except Exception as e:  # noqa: BLE001 - every failure is recorded
                results.append(error_outcome(fault, e, target, unchanged=True))
                continue
            equal = got.shape == expected.shape and np.array_equal(got, expected)
            results.append({"fault": fault, "outcome": "loaded", "equal": equal})
    return results


def vectors_file(fmt, directory):
    rng = np.random.default_rng(3)
    table = rng.normal(size=(20, 6)).astype("float32")
    tokens = [f"w{i}" for i in range(20)]
    if fmt == "vectors_text":
        path = os.path.join(directory, "vectors.txt")
        with open(path, "w", encoding="utf-8") as f:
            for token, row in zip(tokens, table, strict=True):
                f.write(token + " " + " ".join(f"{v:.6f}" for v in row) + "\n")
    else:
        path = os.path.join(directory, "vectors.bin")
        with open(path, "wb") as f:
            f.write(b"20 6\n")
            for token, row in zip(tokens, table, strict=True):
                f.write(token.encode() + b" " + row.tobytes() + b"\n")
    return path, tokens


def main():
    fmt, directory, seed, cases = sys.argv[1:5]
    rng = np.random.default_rng(int(seed))
    results = []
    if fmt == "saved_model":
        print("RESULTS " + json.dumps(saved_model_case(directory, rng, int(cases))))
        return
    if fmt.startswith("vectors"):
        path, tokens = vectors_file(fmt, directory)
        saved = keras_embedding_plus.load_vectors(path, tokens, verbose=0).matrix
    else:
        model = make_model()
        path = save(model, fmt, directory)
        saved = values(model)
        # Start every load from other weights, so that a load shows.
        model.set_weights([w + 1.0 for w in model.get_weights()])
        before = values(model)
    data = open(path, "rb").read()
    target = path + ".damaged" + os.path.splitext(path)[1]
    if fmt == "weights_h5":
        target = path.replace(".weights.h5", "_damaged.weights.h5")
    for _ in range(int(cases)):
        for fault, content in damaged(data, rng):
            with open(target, "wb") as f:
                f.write(content)
            try:
                if fmt.startswith("vectors"):
                    got = keras_embedding_plus.load_vectors(target, tokens, verbose=0)
                else:
                    keras_embedding_plus.load_weights(model, target)
                    got = values(model)
            except Exception as e:  # noqa: BLE001 - every failure is recorded
                unchanged = (
                    True if fmt.startswith("vectors") else same(values(model), before)
                )
                results.append(error_outcome(fault, e, target, unchanged))
                continue
            if fmt.startswith("vectors"):
                # A line-based file cut at a line's end is a valid, shorter
                # file: its tokens read as missing ("partial").
                found = got.found
                if np.array_equal(got.matrix[found], saved[found]) and not found.all():
                    results.append({"fault": fault, "outcome": "partial"})
                    continue
                equal = bool(found.all()) and np.array_equal(got.matrix, saved)
            else:
                equal = same(got, saved)
                restore(model, before)
            results.append({"fault": fault, "outcome": "loaded", "equal": equal})
    print("RESULTS " + json.dumps(results))


if __name__ == "__main__":
    main()
