"""The demo, `python -m keras_embedding_plus` (the README's first command).

It runs in a fresh interpreter, from another directory, against the package this
test imported (the installed one under tox).
"""

import re

import keras
import numpy as np
import pytest

from keras_embedding_plus import Embedding
from keras_embedding_plus.__main__ import (
    NEGATIVE,
    POSITIVE,
    build_classifier,
    make_sentiment_data,
)
from keras_embedding_plus.testing.saving import run_python

# The slowest tests: run them alone with `-m slow`, or skip them with
# `-m "not slow"` (CONTRIBUTING.md).
pytestmark = pytest.mark.slow

BACKEND = keras.backend.backend()

# What `python -m keras_embedding_plus` does.
_RUN_AS_MAIN = (
    "import runpy; "
    "runpy.run_module('keras_embedding_plus', run_name='__main__', alter_sys=True)"
)


def _number(pattern, text):
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in the demo's output:\n{text}"
    return float(match.group(1))


def test_demo_runs_in_a_fresh_process(tmp_path):
    result = run_python(_RUN_AS_MAIN, cwd=tmp_path, timeout=300)
    out = result.stdout
    assert f"backend: {BACKEND}" in out, out
    assert (
        "model.output_shape before any data (None, 10, 64), "
        "predict output shape (32, 10, 64)"
    ) in out, out
    # Keras's progress bar, one per epoch.
    assert re.search(r"Epoch 1/\d+", out) and "63/63" in out, out
    assert _number(r"Test accuracy: ([0-9.]+)", out) > 0.9
    assert _number(r"max abs diff of predictions ([0-9.e+-]+)", out) <= 1e-6
    assert "(reproduced)" in out and out.rstrip().endswith("Demo OK."), out


def test_sentiment_data_labels_follow_the_sentiment_words():
    ids, labels = make_sentiment_data(300, seed=3)
    assert ids.shape == (300, 20) and ids.dtype == np.int32
    positives = np.isin(ids, POSITIVE).sum(axis=1)
    negatives = np.isin(ids, NEGATIVE).sum(axis=1)
    np.testing.assert_array_equal(labels, (positives > negatives).astype("float32"))
    assert (positives != negatives).all()
    assert 0.3 < labels.mean() < 0.7
    # Zero padding only at the end of each sentence, at least 4 real tokens.
    lengths = (ids != 0).sum(axis=1)
    assert lengths.min() >= 4
    for row, length in zip(ids, lengths, strict=True):
        assert (row[:length] != 0).all() and (row[length:] == 0).all()
    again, _ = make_sentiment_data(300, seed=3)
    np.testing.assert_array_equal(ids, again)


def test_classifier_masks_the_padding():
    model = build_classifier(vocab_size=50, embedding_dim=4)
    layer = model.get_layer("embedding")
    assert isinstance(layer, Embedding) and layer.mask_zero
    # The mean runs over the unmasked tokens only: padding changes nothing
    # (row 0 of the table is not zero, so without the mask it would).
    assert np.abs(keras.ops.convert_to_numpy(layer.embeddings)[0]).max() > 0
    short = model.predict(np.array([[5, 7, 9]], "int32"), verbose=0)
    padded = model.predict(np.array([[5, 7, 9, 0, 0, 0]], "int32"), verbose=0)
    np.testing.assert_allclose(padded, short, rtol=1e-6, atol=1e-6)
