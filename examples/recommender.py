"""A small recommender with pooled multi-hot features (`EmbeddingBag`).

Generated data: (user, item) pairs, each item with 1-4 genres of weights in
(0, 1] (padded with id 0 to length 4). Whether the user clicks depends on the
user's taste for the item's weighted genres. The model embeds the user and the
item, pools the genres with `EmbeddingBag(combiner="mean", padding_idx=0)` and
per-genre weights, and is trained with `fit`, saved to `.keras`, then reloaded
in a fresh Python process, whose predictions must equal these.

    python examples/recommender.py [--epochs 3] [--out DIR]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import keras
import numpy as np

from keras_embedding_plus import Embedding, EmbeddingBag

USERS, ITEMS, GENRES, MAX_GENRES, DIM = 500, 2000, 30, 4, 16


def make_data(n=8192, seed=0):
    """`(inputs, clicks)`: user and item ids, padded genre ids and their weights."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, MAX_GENRES + 1, ITEMS)
    item_genres = np.zeros((ITEMS, MAX_GENRES), "int32")
    item_weights = np.zeros((ITEMS, MAX_GENRES), "float32")
    for item, count in enumerate(counts):
        item_genres[item, :count] = rng.choice(np.arange(1, GENRES), count, False)
        item_weights[item, :count] = rng.uniform(0.1, 1.0, count)
    taste = rng.normal(size=(USERS, GENRES))
    users = rng.integers(0, USERS, n).astype("int32")
    items = rng.integers(0, ITEMS, n).astype("int32")
    genres, weights = item_genres[items], item_weights[items]
    score = (taste[users[:, None], genres] * weights).sum(1) / weights.sum(1)
    clicks = (score + 0.3 * rng.normal(size=n) > 0).astype("float32")
    inputs = {"user": users, "item": items, "genres": genres, "weights": weights}
    return inputs, clicks[:, None]


def build_model():
    user = keras.Input((), dtype="int32", name="user")
    item = keras.Input((), dtype="int32", name="item")
    genres = keras.Input((MAX_GENRES,), dtype="int32", name="genres")
    weights = keras.Input((MAX_GENRES,), name="weights")
    pooled = EmbeddingBag(GENRES, DIM, combiner="mean", padding_idx=0, name="genre")(
        genres, weights=weights
    )
    x = keras.layers.Concatenate()(
        [Embedding(USERS, DIM, name="users")(user), Embedding(ITEMS, DIM)(item), pooled]
    )
    x = keras.layers.Dense(32, activation="relu")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model([user, item, genres, weights], outputs)
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    return model


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default=None, help="folder for the .keras file")
    parser.add_argument("--load", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    inputs, clicks = make_data()
    if args.load:  # The fresh process: load, predict, print.
        model = keras.models.load_model(args.load)
        print(json.dumps(model.predict(inputs, verbose=0)[:256, 0].tolist()))
        return
    keras.utils.set_random_seed(0)
    model = build_model()
    history = model.fit(inputs, clicks, epochs=args.epochs, batch_size=256, verbose=0)
    accuracy = history.history["accuracy"]
    print(
        f"backend {keras.backend.backend()}: accuracy {accuracy[0]:.3f} -> "
        f"{accuracy[-1]:.3f} over {args.epochs} epochs"
    )
    with tempfile.TemporaryDirectory() as scratch:  # removed unless --out given
        out = args.out or scratch
        path = os.path.join(out, "recommender.keras")
        model.save(path)
        expected = model.predict(inputs, verbose=0)[:256, 0]
        result = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--load", path],
            capture_output=True,
            text=True,
            check=True,
        )
    reloaded = np.array(json.loads(result.stdout.strip().splitlines()[-1]))
    difference = float(np.abs(reloaded - expected).max())
    kept = f"saved {path}" if args.out else "saved and deleted a temporary file"
    print(f"{kept}; reloaded in a fresh process: max difference {difference:.2e}")
    if difference > 1e-5:
        raise SystemExit("the reloaded model predicts differently")


if __name__ == "__main__":
    main()
