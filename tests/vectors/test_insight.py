"""Looking inside a table: nearest, export_projector, plot_embeddings."""

import re
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_embedding_plus import (
    Embedding,
    export_projector,
    nearest,
    plot_embeddings,
)
from keras_embedding_plus.vectors.insight import pca_2d

RNG = np.random.default_rng(7)
TABLE = RNG.standard_normal((50, 8)).astype("float32")
TOKENS = [f"w{i}" for i in range(50)]


def _layer(table=TABLE, **kwargs):
    return Embedding(table.shape[0], table.shape[1], weights=table, **kwargs)


def _reference(table, vectors, k, exclude=None):
    """Brute-force cosine neighbours in NumPy float64."""
    t = table / np.maximum(np.linalg.norm(table, axis=1, keepdims=True), 1e-12)
    q = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = q.astype("float64") @ t.T.astype("float64")
    if exclude is not None:
        scores[np.arange(len(exclude)), exclude] = -np.inf
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(scores, ids, axis=1)


def test_nearest_ids_match_brute_force():
    layer = _layer()
    ids, scores = nearest(layer, [3, 17], k=5)
    ref_ids, ref_scores = _reference(TABLE, TABLE[[3, 17]], 5, exclude=[3, 17])
    assert ids.shape == (2, 5) and scores.shape == (2, 5)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    one_ids, one_scores = nearest(layer, 3, k=5)  # one id: 1-D answers
    np.testing.assert_array_equal(one_ids, ref_ids[0])
    np.testing.assert_allclose(one_scores, ref_scores[0], atol=1e-5)


def test_nearest_vectors_tokens_and_zero_rows():
    table = TABLE.copy()
    table[0] = 0  # a padding row scores 0, never NaN
    layer = _layer(table, mask_zero=True)
    query = table[9] * 3.0  # a vector: its own row is allowed and comes first
    ids, scores = nearest(layer, query, k=3)
    assert ids[0] == 9 and abs(scores[0] - 1.0) < 1e-5
    _, all_scores = nearest(layer, -table[9], k=50)
    assert np.isfinite(all_scores).all() and 0.0 in all_scores
    by_token = nearest(layer, "w9", k=3, vocabulary=TOKENS)
    np.testing.assert_array_equal(by_token[0], nearest(layer, 9, k=3)[0])
    batch_ids, _ = nearest(layer, table[[4, 5]], k=2)
    np.testing.assert_array_equal(batch_ids[:, 0], [4, 5])


def test_nearest_on_keras_layer_and_many_queries():
    layer = keras.layers.Embedding(50, 8, weights=[TABLE])
    queries = np.arange(50)  # more than one block of queries
    ids, _ = nearest(layer, queries, k=1)
    ref_ids, _ = _reference(TABLE, TABLE, 1, exclude=queries)
    np.testing.assert_array_equal(ids, ref_ids)
    assert nearest(TABLE[:3], 0, k=10)[0].shape == (2,)  # k capped at rows - 1


@pytest.mark.parametrize(
    "query,kwargs,message",
    [
        (50, {}, r"`query` ids must be in \[0, 50\). Received: query id 50"),
        ([-1], {}, "Received: query id -1"),
        (np.zeros(3, "float32"), {}, "dimension 8"),
        ("w1", {}, "`vocabulary` is needed"),
        ("nope", {"vocabulary": TOKENS}, r"not in it: \['nope'\]"),
        (1, {"k": 0}, "`k` must be a positive integer"),
        (np.zeros((2, 2, 8)), {}, "`query` must be an id"),
    ],
    ids=["too-large", "negative", "dim", "no-vocab", "unknown", "k", "rank"],
)
def test_nearest_errors(query, kwargs, message):
    with pytest.raises(ValueError, match=message):
        nearest(_layer(), query, **kwargs)


def _parse_pbtxt(text):
    """The `key: "value"` pairs of each `embeddings { ... }` block."""
    blocks = re.findall(r"embeddings\s*\{(.*?)\}", text, re.S)
    return [dict(re.findall(r'(\w+):\s*"((?:[^"\\]|\\.)*)"', b)) for b in blocks]


def _unescape(cell):
    if cell == '""':
        return ""
    return re.sub(
        r"\\(.)", lambda m: {"t": "\t", "n": "\n", "r": "\r"}.get(m[1], m[1]), cell
    )


def test_export_projector_parses_back(tmp_path):
    table = TABLE[:6].copy()
    table[1] = [1e-30, -3.4028235e38, 1 / 3, 0, -0.0, 7, 1e7 + 1, 2**-20]
    tokens = ["", "tab\there", "new\nline", 'quote"', "back\\slash", "ünï"]
    layer = _layer(table, name="words")
    config = export_projector(layer, tmp_path / "logs", tokens)
    entries = _parse_pbtxt(Path(config).read_text(encoding="utf-8"))
    assert entries == [
        {
            "tensor_name": "words",
            "tensor_path": "vectors.tsv",
            "metadata_path": "metadata.tsv",
        }
    ]
    logs = tmp_path / "logs"
    vectors = np.loadtxt(logs / entries[0]["tensor_path"], delimiter="\t")
    np.testing.assert_array_equal(vectors.astype("float32"), table)  # exact
    lines = (logs / "metadata.tsv").read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and len(lines) == 7  # one line per row
    assert [_unescape(c) for c in lines[:-1]] == tokens


def test_export_projector_token_count():
    with pytest.raises(ValueError, match=r"\(50 rows\). Received: 3 tokens"):
        export_projector(_layer(), "unused", ["a", "b", "c"])


def test_pca_2d_matches_covariance_eigenvectors():
    points = TABLE[:20]
    coords = pca_2d(points)
    centered = points - points.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(centered.T))
    top = eigenvectors[:, np.argsort(eigenvalues)[::-1][:2]]
    expected = centered @ top
    # Same up to each axis's sign; the variance along each axis is ordered.
    np.testing.assert_allclose(np.abs(coords), np.abs(expected), atol=1e-4)
    assert coords[:, 0].var() >= coords[:, 1].var()


def _numpy_pca(points):
    """2-D PCA coordinates by NumPy's SVD, each axis up to its sign."""
    centered = points - points.mean(axis=0)
    _, _, vt = np.linalg.svd(centered.astype("float64"), full_matrices=False)
    return np.abs(centered @ vt[:2].T)


def test_plot_embeddings_writes_labelled_png(tmp_path):
    image = pytest.importorskip("matplotlib.image", reason="needs the plot extra")
    layer = _layer()
    path = tmp_path / "plot.png"
    coords = plot_embeddings(layer, TOKENS, path, select=["w1", "w2", "w3", "w40"])
    np.testing.assert_allclose(
        np.abs(coords), _numpy_pca(TABLE[[1, 2, 3, 40]]), atol=1e-5
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert image.imread(path).shape[:2] == (600, 700)
    default = plot_embeddings(layer, TOKENS, tmp_path / "all.png")
    assert default.shape == (50, 2)
    chosen = plot_embeddings(layer, {"a": 5, "b": 6, "c": 7}, tmp_path / "d.png")
    np.testing.assert_allclose(np.abs(chosen), _numpy_pca(TABLE[5:8]), atol=1e-5)
    with pytest.raises(ValueError, match="at least 2 rows"):
        plot_embeddings(layer, TOKENS, tmp_path / "x.png", select=["w1"])
    with pytest.raises(ValueError, match="not in it"):
        plot_embeddings(layer, TOKENS, tmp_path / "x.png", select=["w1", "zz"])


def test_demo_saves_the_plot(tmp_path):
    pytest.importorskip("matplotlib", reason="needs the plot extra")
    from keras_embedding_plus.__main__ import save_embedding_plot

    layer = Embedding(500, 4)
    layer.build()
    path = tmp_path / "demo.png"
    assert save_embedding_plot(layer, path) is True
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
