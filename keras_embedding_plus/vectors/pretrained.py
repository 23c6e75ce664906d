"""Pretrained word vectors in: GloVe, fastText `.vec`, word2vec text and binary.

`load_vectors` streams the file once: memory stays O(vocabulary x dim) whatever the
file's size, lines of tokens outside the vocabulary are only counted, never parsed,
and reading stops as soon as every token of the vocabulary has been found.
"""

from __future__ import annotations

import dataclasses
import logging
import numbers
import os
from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

from keras_embedding_plus.vectors import readers

logger = logging.getLogger("keras_embedding_plus")


@dataclasses.dataclass(frozen=True, eq=False)
class Vectors:
    """What `load_vectors` returns. Unpacks as `matrix, found = load_vectors(...)`.

    Attributes:
        matrix: NumPy array of shape `(len(tokens), dim)`: row i is the vector of
            `tokens[i]`.
        found: NumPy boolean array of shape `(len(tokens),)`: which rows were read
            from the file (the others hold the OOV initializer's values, or zeros
            for the padding row).
        tokens: List of strings, the token of each row.
        coverage: Float. Tokens found / tokens looked up (the vocabulary less its
            padding and OOV rows, which are never looked up).
        path: String. The file read.
    """

    matrix: np.ndarray
    found: np.ndarray
    tokens: list
    coverage: float
    path: str

    def __iter__(self):
        return iter((self.matrix, self.found))

    @property
    def dim(self):
        """Integer. The vectors' dimension."""
        return self.matrix.shape[1]


def _token_str(token):
    if isinstance(token, bytes):
        return token.decode("utf-8")
    if isinstance(token, str):
        return str(token)
    raise ValueError(
        "`vocabulary` must hold strings. "
        f"Received: a token {token!r} (of type {type(token).__name__})."
    )


def vocabulary_rows(vocabulary):
    """`(tokens, padding_row, oov_rows)` of a token list or a lookup layer.

    Rows follow the layer's own index conventions (Keras 3): `TextVectorization`
    pads with '' at 0 and has one OOV token '[UNK]' at 1; `StringLookup` has its
    `mask_token` at 0 when it has one, then `num_oov_indices` OOV rows.
    """
    if hasattr(vocabulary, "get_vocabulary"):
        tokens = [_token_str(t) for t in vocabulary.get_vocabulary()]
        if isinstance(vocabulary, keras.layers.TextVectorization):
            return tokens, 0, (1,)
        has_mask = getattr(vocabulary, "mask_token", None) is not None
        start = 1 if has_mask else 0
        num_oov = int(getattr(vocabulary, "num_oov_indices", 0))
        return tokens, (0 if has_mask else None), tuple(range(start, start + num_oov))
    if isinstance(vocabulary, (str, bytes)) or not hasattr(vocabulary, "__iter__"):
        raise ValueError(
            "`vocabulary` must be a list of tokens, or a `StringLookup` / "
            "`TextVectorization` layer. "
            f"Received: vocabulary={vocabulary!r} (of type "
            f"{type(vocabulary).__name__})."
        )
    return [_token_str(t) for t in np.asarray(vocabulary).tolist()], None, ()


def _check_positive_int(name, value):
    if value is None:
        return None
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(
            f"`{name}` must be None or a positive integer. "
            f"Received: {name}={value!r} (of type {type(value).__name__})."
        )
    return int(value)


def load_vectors(
    path: str | os.PathLike,
    vocabulary: Sequence[str] | keras.layers.Layer | None = None,
    *,
    output_dim: int | None = None,
    mask_zero: bool = False,
    oov_initializer: str | keras.initializers.Initializer = "uniform",
    dtype: str = "float32",
    binary: bool | None = None,
    encoding: str = "utf-8",
    verbose: int = 1,
) -> Vectors:
    """Reads pretrained word vectors into a table whose row i is token i's vector.

    Reads GloVe, fastText `.vec` and word2vec text files (`token v1 ... vdim` per
    line, with or without a `<count> <dim>` header line) and word2vec binary files;
    gzip-compressed files are read directly. The file is streamed: memory stays
    O(len(vocabulary) x dim), lines of other tokens are never parsed, and reading
    stops once every token has been found. Slow reads show a progress bar. The
    coverage (tokens found / tokens looked up) is returned and logged at INFO
    level on the `keras_embedding_plus` logger.

    Args:
        path: String or path-like. The vector file (`.txt`, `.vec`, `.bin`,
            optionally `.gz`; the format is read from the content).
        vocabulary: Optional. A list of tokens, or a `keras.layers.StringLookup` /
            `keras.layers.TextVectorization` layer (whose padding and OOV rows,
            as the layer numbers them, are not looked up: the padding row is
            zero, the OOV rows get `oov_initializer`). `None` reads every vector
            of the file in file order.
        output_dim: Optional integer. The dimension the vectors must have.
        mask_zero: Boolean. Whether row 0 is padding: it is set to zeros. With
            `vocabulary=None`, a zero row for the token `''` is put before the
            file's vectors.
        oov_initializer: Initializer (any `keras.initializers.get` argument) for
            the rows of tokens not in the file and the OOV rows.
        dtype: String. The matrix's NumPy dtype.
        binary: Optional boolean. Whether the file is word2vec binary; `None`
            detects it.
        encoding: String. The tokens' text encoding.
        verbose: 0 or 1. Whether to show a progress bar on slow files.

    Returns:
        A `Vectors` result that unpacks as `matrix, found`: the
        `(len(vocabulary), dim)` NumPy matrix and a boolean array saying which
        rows came from the file; it also has `tokens`, `coverage` and `path`.

    Raises:
        ValueError: naming the file and line, for an empty file, a line whose
            number of values differs from the first line's (or the header's), a
            non-numeric or non-finite value, or vectors whose dimension is not
            `output_dim`. Nothing is returned half-built.

    Example:

    >>> vectors = load_vectors("glove.6B.100d.txt", ["", "the", "cat"],
    ...                        mask_zero=True)
    >>> matrix, found = vectors
    >>> matrix.shape, vectors.coverage
    ((3, 100), 1.0)
    """
    output_dim = _check_positive_int("output_dim", output_dim)
    if not isinstance(mask_zero, (bool, np.bool_)):
        raise ValueError(
            f"`mask_zero` must be a boolean. Received: mask_zero={mask_zero!r}."
        )
    initializer = keras.initializers.get(oov_initializer)
    if vocabulary is not None:
        tokens, padding, oov = vocabulary_rows(vocabulary)
        if mask_zero:
            padding = 0
        special = set(oov) | ({padding} if padding is not None else set())
        # '' is the padding token (as `TextVectorization`'s row 0): never looked
        # up, its row is zeros, with or without `mask_zero`.
        empty = {i for i, token in enumerate(tokens) if token == ""} - special
        special |= empty
        rows = {}
        for i, token in enumerate(tokens):
            if i not in special:
                rows.setdefault(token, []).append(i)
    with readers.Reader(path, binary, encoding, verbose) as reader:
        if vocabulary is None:
            matrix, tokens = readers.read_all(reader, output_dim, dtype)
            found = np.ones(len(tokens), bool)
            padding, special = None, set()
        else:
            matrix, found = readers.read_wanted(
                reader, output_dim, rows, len(tokens), dtype
            )
    if not reader.records:
        raise ValueError(
            f"Cannot read vectors from '{reader.path}': the file "
            + ("holds only a header." if reader.has_header else "is empty.")
        )
    if vocabulary is None and mask_zero:
        matrix = np.concatenate([np.zeros((1, reader.dim), dtype), matrix])
        tokens, found = [""] + tokens, np.concatenate([[False], found])
        padding, special = 0, {0}
    fill = ~found
    zero_rows = ({padding} if padding is not None else set()) | (
        empty if vocabulary is not None else set()
    )
    for row in zero_rows:
        fill[row] = False
        matrix[row] = 0
    if fill.any():
        values = initializer(shape=(int(fill.sum()), reader.dim), dtype="float32")
        matrix[fill] = ops.convert_to_numpy(values)
    looked_up = len(tokens) - len(special)
    coverage = float(found.sum() / looked_up) if looked_up else 1.0
    # Below half, most rows are random: likely the wrong file or tokenization.
    log = logger.warning if coverage < 0.5 else logger.info
    log(
        "Loaded vectors of dimension %d for %d of %d tokens (%.1f%%) from %s.%s",
        reader.dim,
        int(found.sum()),
        looked_up,
        100 * coverage,
        reader.path,
        ""
        if coverage >= 0.5
        else " The other rows hold the OOV initializer's random values: check "
        "that the file and the vocabulary share a tokenization (case, language).",
    )
    return Vectors(matrix, found, tokens, coverage, reader.path)


def from_pretrained(
    cls, vectors_or_path, vocabulary, trainable, mask_zero, oov_initializer, kwargs
):
    """`Embedding.from_pretrained`: a layer of class `cls` holding the vectors."""
    coverage = None
    if isinstance(vectors_or_path, (str, os.PathLike)):
        loaded = load_vectors(
            vectors_or_path,
            vocabulary,
            output_dim=kwargs.get("output_dim"),
            mask_zero=mask_zero,
            oov_initializer=oov_initializer,
        )
        matrix, coverage = loaded.matrix, loaded.coverage
    else:
        if vocabulary is not None:
            raise ValueError(
                "`vocabulary` is only used with a path to a vector file; the rows "
                "of an array are already in vocabulary order. "
                f"Received: vocabulary={vocabulary!r} with an array."
            )
        matrix = np.asarray(ops.convert_to_numpy(vectors_or_path))
        if matrix.ndim != 2:
            raise ValueError(
                "`vectors_or_path` must be a path or a 2-D (input_dim, output_dim) "
                f"array. Received: an array of shape {matrix.shape}."
            )
    for axis, name in enumerate(("input_dim", "output_dim")):
        value = kwargs.pop(name, matrix.shape[axis])
        if value != matrix.shape[axis]:
            raise ValueError(
                f"`{name}` must equal the vectors' {matrix.shape} shape on axis "
                f"{axis}. Received: {name}={value!r}."
            )
    layer = cls(
        matrix.shape[0],
        matrix.shape[1],
        mask_zero=mask_zero,
        trainable=trainable,
        weights=matrix,
        **kwargs,
    )
    layer.coverage = coverage
    return layer
