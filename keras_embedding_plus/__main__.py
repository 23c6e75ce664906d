"""The demo: ``python -m keras_embedding_plus`` (any backend, via ``KERAS_BACKEND``).

1. Runs the Keras docs' Embedding example as written, with our `Embedding`.
2. Trains a small text classifier (`Embedding(mask_zero=True)` ->
   `GlobalAveragePooling1D` -> `Dense`) on synthetic "sentiment" sentences,
   reports its test accuracy, and checks that a `.keras` save / load round trip
   reproduces its predictions.

`make_sentiment_data` and `build_classifier` are reusable on their own.
"""

import os
import sys
import tempfile

import keras
import numpy as np

from keras_embedding_plus import Embedding, plot_embeddings

# Token ids of the synthetic language: 0 pads, then the sentiment words, then
# neutral filler words up to the vocabulary size.
PAD = 0
POSITIVE = tuple(range(1, 11))
NEGATIVE = tuple(range(11, 21))
VOCAB_SIZE = 500
SEQUENCE_LENGTH = 20


def documented_example():
    """The Keras docs' example, as written; returns the two shapes it checks."""
    model = keras.Sequential()
    model.add(Embedding(1000, 64, input_length=10))
    # `(None, 10, 64)` before any data has been seen.
    output_shape = model.output_shape
    input_array = np.random.randint(1000, size=(32, 10))
    model.compile("rmsprop", "mse")
    output_array = model.predict(input_array, verbose=0)
    if output_shape != (None, 10, 64) or output_array.shape != (32, 10, 64):
        raise RuntimeError(
            "The documented example gave the wrong shapes: output_shape "
            f"{output_shape} (expected (None, 10, 64)), predict "
            f"{output_array.shape} (expected (32, 10, 64))."
        )
    return output_shape, output_array.shape


def make_sentiment_data(n, seed=0, length=SEQUENCE_LENGTH, vocab_size=VOCAB_SIZE):
    """`n` padded sentences of token ids and their 0/1 labels.

    Each sentence has 4 to `length` tokens, zero-padded at the end: neutral
    filler words with 1 to 4 sentiment words among them. The label is 1 when
    positive words outnumber negative ones (ties are not generated), so it
    depends on which words occur, not on where.
    """
    rng = np.random.default_rng(seed)
    ids = np.zeros((n, length), dtype="int32")
    labels = np.zeros((n,), dtype="float32")
    for i in range(n):
        size = rng.integers(4, length + 1)
        sentence = rng.integers(NEGATIVE[-1] + 1, vocab_size, size=size)
        positives, negatives = 0, 0
        while positives == negatives:
            positives, negatives = rng.integers(0, 3, size=2)
        words = np.concatenate(
            [
                rng.choice(POSITIVE, size=positives),
                rng.choice(NEGATIVE, size=negatives),
            ]
        )
        slots = rng.choice(size, size=len(words), replace=False)
        sentence[slots] = words
        ids[i, :size] = sentence
        labels[i] = float(positives > negatives)
    return ids, labels


def build_classifier(vocab_size=VOCAB_SIZE, embedding_dim=16, length=None):
    """A compiled classifier: `Embedding(mask_zero=True)` -> mean over the unmasked
    tokens -> `Dense(1, sigmoid)`. The embedding layer is named `"embedding"`."""
    inputs = keras.Input((length,), dtype="int32", name="token_ids")
    x = Embedding(vocab_size, embedding_dim, mask_zero=True, name="embedding")(inputs)
    x = keras.layers.GlobalAveragePooling1D()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs, name="sentiment_classifier")
    model.compile(
        optimizer=keras.optimizers.Adam(0.02),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    return model


def save_load_max_diff(model, x):
    """Save `model` as `.keras`, load it back, return the max abs prediction diff."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "classifier.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
    if type(loaded.get_layer("embedding")) is not Embedding:
        raise TypeError("The loaded model does not hold a keras_embedding_plus layer.")
    before = model.predict(x, verbose=0)
    after = loaded.predict(x, verbose=0)
    return float(np.max(np.abs(before - after)))


def save_embedding_plot(layer, path):
    """Plot the sentiment words and some fillers; False when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    tokens = {f"pos{i}": i for i in POSITIVE}
    tokens.update({f"neg{i}": i for i in NEGATIVE})
    tokens.update({f"filler{i}": i for i in range(NEGATIVE[-1] + 1, NEGATIVE[-1] + 11)})
    plot_embeddings(layer, tokens, path, title="Learned embeddings (demo classifier)")
    return True


def main():
    keras.utils.set_random_seed(0)
    print(f"Keras {keras.__version__}, backend: {keras.backend.backend()}")

    output_shape, predict_shape = documented_example()
    print(
        "Documented example: model.output_shape before any data "
        f"{output_shape}, predict output shape {predict_shape}"
    )

    x_train, y_train = make_sentiment_data(4000, seed=1)
    x_test, y_test = make_sentiment_data(1000, seed=2)
    model = build_classifier(length=SEQUENCE_LENGTH)
    print(
        f"Training a sentiment classifier on {len(x_train)} synthetic sentences "
        f"(vocabulary {VOCAB_SIZE}, padded to {SEQUENCE_LENGTH} with zeros):"
    )
    model.fit(x_train, y_train, batch_size=64, epochs=3, verbose=1)
    accuracy = float(model.evaluate(x_test, y_test, verbose=0)[1])
    print(f"Test accuracy: {accuracy:.4f}")

    plot_path = os.path.join(tempfile.gettempdir(), "keras_embedding_plus.png")
    if save_embedding_plot(model.get_layer("embedding"), plot_path):
        print(f"Embedding plot (PCA to 2-D of learned vectors) saved to {plot_path}")
    else:
        print("No embedding plot: matplotlib is not installed ([plot] extra).")

    max_diff = save_load_max_diff(model, x_test)
    reproduced = max_diff <= 1e-6
    print(
        f"Save/load round trip (.keras): max abs diff of predictions {max_diff:.3g} "
        f"({'reproduced' if reproduced else 'NOT reproduced'})"
    )
    if accuracy < 0.9 or not reproduced:
        print("Demo FAILED.", file=sys.stderr)
        return 1
    print("Demo OK.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
