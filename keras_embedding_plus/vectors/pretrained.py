"""Pretrained word vectors in: GloVe, fastText `.vec`, word2vec text and binary.

`load_vectors` streams the file once: memory stays O(vocabulary x dim) whatever the
file's size, lines of tokens outside the vocabulary are only counted, never parsed,
and reading stops as soon as every token of the vocabulary has been found.
"""

from __future__ import annotations

import codecs
import dataclasses
import gzip
import logging
import math
import numbers
import os
import time
from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

logger = logging.getLogger("keras_embedding_plus")

# A progress bar appears once reading has taken this long.
_PROGRESS_AFTER_S = 1.0
# Lines (or binary records) between two looks at the clock.
_PROGRESS_EVERY = 8192
_CHUNK = 1 << 20
# Rows per block while reading a whole file.
_BLOCK_ROWS = 8192


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


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def _looks_binary(sample):
    """Whether the bytes after a header line are word2vec binary, not text."""
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
    except UnicodeDecodeError:
        return True
    return any(b < 32 and b not in (9, 10, 13) for b in sample)


class _Progress:
    """A `keras.utils.Progbar` over the bytes read, shown once reading is slow."""

    def __init__(self, raw, verbose):
        self._raw = raw
        self._verbose = verbose
        self._start = time.monotonic()
        self._total = max(os.fstat(raw.fileno()).st_size, 1)
        self._bar = None

    def update(self):
        if not self._verbose:
            return
        if self._bar is None:
            if time.monotonic() - self._start < _PROGRESS_AFTER_S:
                return
            self._bar = keras.utils.Progbar(
                math.ceil(self._total / 2**20), unit_name="MiB"
            )
        self._bar.update(self._raw.tell() / 2**20)

    def done(self):
        if self._bar is not None:
            self._bar.update(self._bar.target, finalize=True)


class _Reader:
    """One pass over a vector file: the dimension first, then the records.

    Records are `(line, token, values)` where `values` are still unparsed (text or
    bytes); `vector()` parses them, so unwanted lines cost a split, not a parse.
    """

    def __init__(self, path, binary, encoding, verbose):
        self.path = os.fspath(path)
        self.encoding = encoding
        self.count = None
        self.dim = None
        self.dim_line = None  # The line that set the dimension.
        self.binary = False
        self.records = 0
        self._raw = open(self.path, "rb")
        try:
            gzipped = self._raw.read(2) == b"\x1f\x8b"
            self._raw.seek(0)
            self._stream = (
                gzip.GzipFile(fileobj=self._raw, mode="rb") if gzipped else self._raw
            )
            self._progress = _Progress(self._raw, verbose)
            self._first = self._stream.readline()
            self._read_header(binary)
        except BaseException:
            self.close()
            raise

    def _error(self, line, what):
        unit = "vector" if self.binary else "line"
        return ValueError(
            f"Cannot read vectors from '{self.path}', {unit} {line}: {what}"
        )

    def _read_header(self, binary):
        fields = self._first.split()
        self.has_header = len(fields) == 2 and all(f.isdigit() for f in fields)
        if self.has_header:
            self.count, self.dim = (int(f) for f in fields)
            self.dim_line = 1
            if self.dim < 1:
                raise self._error(1, f"the header gives dimension {self.dim}.")
            if binary is None:
                sample = self._stream.peek(4 * self.dim + 64)[: 4 * self.dim + 64]
                binary = bool(sample) and _looks_binary(sample)
        if binary and not self.has_header:
            raise self._error(
                1,
                "a word2vec binary file starts with a header line "
                f"'<count> <dim>'. Received: {self._first[:80]!r}.",
            )
        self.binary = bool(binary)

    def close(self):
        self._raw.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __iter__(self):
        records = self._binary_records() if self.binary else self._text_records()
        for record in records:
            self.records += 1
            if self.records % _PROGRESS_EVERY == 0:
                self._progress.update()
            yield record
        self._progress.done()

    def _decode(self, line, raw):
        try:
            return raw.decode(self.encoding)
        except UnicodeDecodeError as e:
            raise self._error(line, f"not valid {self.encoding}: {e}.") from None

    def _text_records(self):
        lines = self._stream
        if not self.has_header:
            lines = _chain_first(self._first, lines)
        for lineno, raw in enumerate(lines, 2 if self.has_header else 1):
            text = self._decode(lineno, raw).rstrip("\r\n ")
            if not text:
                continue
            spaces = text.count(" ")
            if self.dim is None:
                if spaces == 0:
                    raise self._error(lineno, f"a token with no values: {text!r}.")
                self.dim, self.dim_line = spaces, lineno
            if spaces == self.dim:
                token, values = text.split(" ", 1)
            else:
                parts = text.rsplit(" ", self.dim)
                # More fields than the dimension: a token holding spaces (GloVe
                # 840B has some), unless what precedes the values is a number.
                if spaces < self.dim or _is_number(parts[0].rsplit(" ", 1)[-1]):
                    where = "the header" if self.has_header else f"line {self.dim_line}"
                    raise self._error(
                        lineno,
                        f"inconsistent dimensions: expected {self.dim} numbers "
                        f"after the token (as {where} says), received {spaces}.",
                    )
                token, values = parts[0], parts[1:]
            yield lineno, token, values

    def _binary_records(self):
        size = 4 * self.dim
        buf, pos = b"", 0
        for number in range(1, self.count + 1):
            while True:
                space = buf.find(b" ", pos)
                if space != -1 and len(buf) >= space + 1 + size:
                    break
                if len(buf) - pos > _CHUNK + size:
                    raise self._error(number, "no space after a token.")
                chunk = self._stream.read(_CHUNK)
                if not chunk:
                    raise self._error(
                        number,
                        f"the file ends early: the header announces {self.count} "
                        f"vectors of dimension {self.dim}.",
                    )
                buf, pos = buf[pos:] + chunk, 0
            token = self._decode(number, buf[pos:space].lstrip(b"\n"))
            pos = space + 1 + size
            yield number, token, buf[space + 1 : pos]

    def vector(self, line, token, values):
        """The parsed float32 vector of one record, or a `ValueError`."""
        if self.binary:
            vector = np.frombuffer(values, dtype="<f4")
        else:
            if isinstance(values, str):
                values = values.split(" ")
            try:
                vector = np.array(values, dtype=np.float32)
            except ValueError as e:
                raise self._error(
                    line, f"a non-numeric value for token {token!r}: {e}."
                ) from None
        if not np.isfinite(vector).all():
            raise self._error(line, f"a non-finite value for token {token!r}.")
        return vector


def _chain_first(first, rest):
    yield first
    yield from rest


def _check_dim(reader, output_dim):
    if output_dim is not None and reader.dim != output_dim:
        raise ValueError(
            f"`output_dim` must equal the dimension of the vectors in "
            f"'{reader.path}' ({reader.dim}, line {reader.dim_line}). "
            f"Received: output_dim={output_dim}."
        )


def _read_all(reader, output_dim, dtype):
    """Every vector of the file, in file order (vocabulary=None).

    Rows go into fixed-size blocks joined at the end: the peak is about twice
    the matrix, never the file.
    """
    tokens, blocks, filled = [], [], _BLOCK_ROWS
    for line, token, values in reader:
        if filled == _BLOCK_ROWS:
            if not blocks:
                _check_dim(reader, output_dim)
            blocks.append(np.empty((_BLOCK_ROWS, reader.dim), dtype))
            filled = 0
        blocks[-1][filled] = reader.vector(line, token, values)
        tokens.append(token)
        filled += 1
    if not blocks:
        return None, []
    blocks[-1] = blocks[-1][:filled]
    return np.concatenate(blocks), tokens


def _read_wanted(reader, output_dim, rows, size, dtype):
    """The vectors of the tokens in `rows` ({token: [row, ...]})."""
    matrix, found, missing = None, np.zeros(size, bool), len(rows)
    for line, token, values in reader:
        if matrix is None:
            _check_dim(reader, output_dim)
            matrix = np.zeros((size, reader.dim), dtype)
        if not missing:
            break
        where = rows.get(token)
        if where is None or found[where[0]]:
            continue  # Not wanted, or a repeat: the first vector wins.
        matrix[where] = reader.vector(line, token, values)
        found[where] = True
        missing -= 1
        if not missing:
            break
    return matrix, found


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
        rows = {}
        for i, token in enumerate(tokens):
            if i not in special:
                rows.setdefault(token, []).append(i)
    with _Reader(path, binary, encoding, verbose) as reader:
        if vocabulary is None:
            matrix, tokens = _read_all(reader, output_dim, dtype)
            found = np.ones(len(tokens), bool)
            padding, special = None, set()
        else:
            matrix, found = _read_wanted(reader, output_dim, rows, len(tokens), dtype)
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
    if padding is not None:
        fill[padding] = False
        matrix[padding] = 0
    if fill.any():
        values = initializer(shape=(int(fill.sum()), reader.dim), dtype="float32")
        matrix[fill] = ops.convert_to_numpy(values)
    looked_up = len(tokens) - len(special)
    coverage = float(found.sum() / looked_up) if looked_up else 1.0
    logger.info(
        "Loaded vectors of dimension %d for %d of %d tokens (%.1f%%) from %s.",
        reader.dim,
        int(found.sum()),
        looked_up,
        100 * coverage,
        reader.path,
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
