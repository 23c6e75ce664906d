"""Looking inside a table: nearest neighbours, TensorBoard projector files, a plot."""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping, Sequence

import keras
import numpy as np
from keras import ops

from keras_embedding_plus.vectors.pretrained import vocabulary_rows

# Queries scored at once by `nearest` (bounds the (queries, rows) score matrix).
_QUERY_BLOCK = 64
_EPSILON = 1e-12
# Rows `plot_embeddings` draws when no tokens are selected.
_PLOT_DEFAULT_ROWS = 100


def _table(layer):
    """The table of a layer (anything with `embeddings`), a variable or an array."""
    if isinstance(layer, keras.layers.Layer):
        if not layer.built:
            raise ValueError(
                f"Layer '{layer.name}' is not built yet: call `layer.build()` (or "
                "call the layer on some ids) before reading its table."
            )
        # Ours: the dequantized / LoRA-adapted float table; Keras's: `embeddings`.
        float_table = getattr(layer, "float_table", None)
        table = float_table() if callable(float_table) else layer.embeddings
    else:
        table = layer
    table = ops.convert_to_tensor(table)
    if len(table.shape) != 2:
        raise ValueError(
            "`layer` must be an embedding layer or a 2-D table. "
            f"Received: a table of shape {tuple(table.shape)}."
        )
    return table


def _numpy_table(layer):
    return np.asarray(ops.convert_to_numpy(_table(layer)), dtype=np.float32)


def _tokens(tokens, rows):
    """The `rows` labels from a token list or a lookup layer."""
    labels = vocabulary_rows(tokens)[0]
    if len(labels) != rows:
        raise ValueError(
            f"`tokens` must name every row of the table ({rows} rows). "
            f"Received: {len(labels)} tokens."
        )
    return labels


def _query(query, table_rows, vocabulary):
    """`(ids or None, vectors or None, single)` from the forms `nearest` accepts."""
    if isinstance(query, str) or (
        isinstance(query, (list, tuple)) and query and isinstance(query[0], str)
    ):
        if vocabulary is None:
            raise ValueError(
                "`vocabulary` is needed to look up tokens. "
                f"Received: query={query!r} and vocabulary=None."
            )
        index = {}
        for i, token in enumerate(vocabulary_rows(vocabulary)[0]):
            index.setdefault(token, i)
        words = [query] if isinstance(query, str) else list(query)
        unknown = [w for w in words if w not in index]
        if unknown:
            raise ValueError(
                "`query` tokens must be in `vocabulary`. "
                f"Received: query={query!r}; not in it: {unknown!r}."
            )
        return np.array([index[w] for w in words]), None, isinstance(query, str)
    value = np.asarray(ops.convert_to_numpy(query))
    if value.dtype.kind in "iu" and value.ndim <= 1:
        bad = (value < 0) | (value >= table_rows)
        if bad.any():
            raise ValueError(
                f"`query` ids must be in [0, {table_rows}). "
                f"Received: query id {value.reshape(-1)[bad.reshape(-1)][0]}."
            )
        return value.reshape(-1).astype("int64"), None, value.ndim == 0
    if value.dtype.kind == "f" and value.ndim in (1, 2):
        return None, value.astype("float32"), value.ndim == 1
    raise ValueError(
        "`query` must be an id, a 1-D array of ids, a vector, a 2-D array of "
        "vectors, or tokens with `vocabulary`. "
        f"Received: query of dtype {value.dtype} and shape {value.shape}."
    )


def nearest(
    layer: keras.layers.Layer | np.ndarray,
    query: int | str | Sequence | np.ndarray,
    k: int = 10,
    vocabulary: Sequence[str] | keras.layers.Layer | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The `k` rows of an embedding table nearest to a query by cosine similarity.

    Computed in `keras.ops` on the active backend: scores are divided by the row
    norms; no normalized copy of the table is made.

    Args:
        layer: An `Embedding` layer (ours or Keras's), or a 2-D table.
        query: An id or a 1-D array of ids (rows of the table; the row itself is
            left out of its answer), a vector of the table's dimension or a 2-D
            array of vectors, or with `vocabulary` a token or a list of tokens.
        k: Positive integer. How many neighbours (fewer if the table has fewer
            rows).
        vocabulary: Optional. A list of tokens or a `StringLookup` /
            `TextVectorization` layer naming the rows, for token queries.

    Returns:
        `(ids, scores)`: NumPy arrays of shape `(k,)` for one query, or
        `(queries, k)`, best first; `scores` are cosine similarities (a zero row,
        such as the padding row, scores 0).

    Example:

    >>> ids, scores = nearest(layer, "king", k=5, vocabulary=vocab)
    >>> [vocab[i] for i in ids]
    """
    table = _table(layer)
    rows, dim = table.shape
    if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < 1:
        raise ValueError(f"`k` must be a positive integer. Received: k={k!r}.")
    ids, vectors, single = _query(query, rows, vocabulary)
    if vectors is None:
        vectors = ops.take(table, ops.convert_to_tensor(ids), axis=0)
    elif vectors.shape[-1] != dim:
        raise ValueError(
            f"`query` vectors must have the table's dimension {dim}. "
            f"Received: query of shape {vectors.shape}."
        )
    vectors = ops.reshape(ops.cast(vectors, "float32"), (-1, dim))
    k = min(int(k), rows - (ids is not None))
    if k < 1:
        raise ValueError(
            f"`k` leaves no row to return: the table has {rows} row(s). "
            f"Received: k={k}."
        )
    table = ops.cast(table, "float32")
    inverse_norms = 1.0 / ops.maximum(ops.norm(table, axis=1), _EPSILON)
    vectors = vectors / ops.maximum(ops.norm(vectors, axis=1, keepdims=True), _EPSILON)
    all_ids, all_scores = [], []
    for start in range(0, vectors.shape[0], _QUERY_BLOCK):
        block = vectors[start : start + _QUERY_BLOCK]
        # (q, rows) scores, contiguous for top_k; einsum reads the table as it
        # lies (no transposed copy of it).
        scores = ops.einsum("qd,nd->qn", block, table)
        scores = scores * inverse_norms[None, :]
        # One more than asked for query ids, whose own row is dropped below.
        top_scores, top_ids = ops.top_k(scores, k + (ids is not None))
        all_ids.append(ops.convert_to_numpy(top_ids))
        all_scores.append(ops.convert_to_numpy(top_scores))
    top_ids = np.concatenate(all_ids).astype("int64")
    top_scores = np.concatenate(all_scores).astype("float32")
    if ids is not None:
        keep = top_ids != ids[:, None]
        keep[keep.all(axis=1), -1] = False  # Own row not in the top k + 1.
        top_ids = top_ids[keep].reshape(-1, k)
        top_scores = top_scores[keep].reshape(-1, k)
    if single:
        return top_ids[0], top_scores[0]
    return top_ids, top_scores


def _metadata_cell(token):
    """A token as one TSV cell: tabs and newlines escaped, '' written `""`."""
    if token == "":
        return '""'
    return (
        token.replace("\\", "\\\\")
        .replace("\t", "\\t")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
    )


def export_projector(
    layer: keras.layers.Layer | np.ndarray,
    log_dir: str | os.PathLike,
    tokens: Sequence[str] | keras.layers.Layer,
) -> str:
    """Writes a table for TensorBoard's Embedding Projector.

    Writes `vectors.tsv` (one row per line, tab-separated, exact float32
    values), `metadata.tsv` (one token per line; tabs and newlines escaped as
    `\\t` / `\\n`, the empty token written `""`) and `projector_config.pbtxt`
    pointing at them, so that `tensorboard --logdir log_dir` shows the table in
    its Projector tab. TensorBoard itself is not needed to write them.

    Args:
        layer: An `Embedding` layer (ours or Keras's), or a 2-D table.
        log_dir: String or path-like. The directory (created if needed).
        tokens: The token of every row: a list of strings, or a `StringLookup`
            / `TextVectorization` layer.

    Returns:
        The path of `projector_config.pbtxt`.
    """
    table = _numpy_table(layer)
    labels = _tokens(tokens, table.shape[0])
    log_dir = os.fspath(log_dir)
    os.makedirs(log_dir, exist_ok=True)
    # "%.9g" writes every float32 so that it parses back to the same number.
    np.savetxt(os.path.join(log_dir, "vectors.tsv"), table, fmt="%.9g", delimiter="\t")
    with open(os.path.join(log_dir, "metadata.tsv"), "w", encoding="utf-8") as f:
        f.writelines(_metadata_cell(t) + "\n" for t in labels)
    name = getattr(layer, "name", None) or "embeddings"
    name = name.replace("\\", "\\\\").replace('"', '\\"')
    config = os.path.join(log_dir, "projector_config.pbtxt")
    with open(config, "w", encoding="utf-8") as f:
        f.write(
            "embeddings {\n"
            f'  tensor_name: "{name}"\n'
            '  tensor_path: "vectors.tsv"\n'
            '  metadata_path: "metadata.tsv"\n'
            "}\n"
        )
    return config


def pca_2d(vectors):
    """The first two principal-component coordinates of `vectors` (rows).

    Signs are fixed so that each component's largest loading is positive.
    """
    centered = vectors - vectors.mean(axis=0)
    _, _, components = np.linalg.svd(centered.astype("float64"), full_matrices=False)
    components = components[:2]
    signs = np.sign(
        components[np.arange(len(components)), np.abs(components).argmax(axis=1)]
    )
    coords = centered @ (components * signs[:, None]).T
    if coords.shape[1] < 2:  # One-dimensional vectors: a flat second axis.
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    return coords


def plot_embeddings(
    layer: keras.layers.Layer | np.ndarray,
    tokens: Sequence[str] | Mapping[str, int] | keras.layers.Layer,
    path: str | os.PathLike,
    select: Sequence[str] | None = None,
    title: str | None = None,
) -> np.ndarray:
    """Saves a labelled 2-D picture (PCA) of chosen rows of a table as a PNG.

    Needs matplotlib (`pip install "keras_embedding_plus[plot]"`).

    Args:
        layer: An `Embedding` layer (ours or Keras's), or a 2-D table.
        tokens: The token of every row (a list of strings or a `StringLookup` /
            `TextVectorization` layer), or a dict `{label: row id}` naming
            exactly the rows to draw.
        path: String or path-like. Where to write the PNG.
        select: Optional list of tokens to draw (from `tokens`). By default the
            first 100 rows, skipping empty tokens.
        title: Optional string. The figure's title.

    Returns:
        The `(points, 2)` NumPy array of plotted coordinates, in the order drawn.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(
            "`plot_embeddings` needs matplotlib: "
            'pip install "keras_embedding_plus[plot]"'
        ) from e
    table = _numpy_table(layer)
    if isinstance(tokens, dict):
        labels, ids = list(tokens), list(tokens.values())
        _query(np.asarray(ids, dtype="int64"), table.shape[0], None)  # checks ids
    else:
        names = _tokens(tokens, table.shape[0])
        if select is None:
            ids = [i for i, t in enumerate(names) if t][:_PLOT_DEFAULT_ROWS]
        else:
            ids = list(_query(list(select), table.shape[0], names)[0])
        labels = [names[i] for i in ids]
    if len(ids) < 2:
        raise ValueError(
            f"`plot_embeddings` needs at least 2 rows to draw. Received: {len(ids)}."
        )
    coords = pca_2d(table[np.asarray(ids)])
    figure = Figure(figsize=(7, 6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.scatter(coords[:, 0], coords[:, 1], s=12, color="tab:blue")
    for (x, y), label in zip(coords, labels, strict=True):
        axes.annotate(
            label, (x, y), xytext=(3, 3), textcoords="offset points", fontsize=8
        )
    axes.set_xlabel("principal component 1")
    axes.set_ylabel("principal component 2")
    axes.set_title(title or f"{getattr(layer, 'name', 'embeddings')}: PCA to 2-D")
    figure.tight_layout()
    figure.savefig(os.fspath(path), format="png")
    return coords
