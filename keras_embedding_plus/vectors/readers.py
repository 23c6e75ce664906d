"""Readers of vector files: GloVe, fastText `.vec`, word2vec text and binary.

One streaming pass per file (`Reader`): the dimension first, then the records,
whose values are parsed only for the wanted tokens; `read_all` and `read_wanted`
fill the matrix `load_vectors` returns.
"""

from __future__ import annotations

import gzip
import math
import os
import time

import keras
import numpy as np

# A progress bar appears once reading has taken this long.
_PROGRESS_AFTER_S = 1.0
# Lines (or binary records) between two looks at the clock.
_PROGRESS_EVERY = 8192
_CHUNK = 1 << 20
# Rows per block while reading a whole file.
_BLOCK_ROWS = 8192


def _is_number(text):
    try:
        float(text)
    except (ValueError, UnicodeDecodeError):
        return False
    return True


def _is_text_record(line):
    """Whether `line`, the first line after a `<count> <dim>` header (or its
    first MiB), is a text record: a token, then values most of which are numbers.

    The rule looks at the line's structure, not at its bytes, so one stray byte
    (a NUL, an 0xFF) in a text vector cannot make the file binary: the text
    reader then names the bad value. A word2vec binary record is a token, one
    space and `4 * dim` raw bytes, whose space-separated pieces are not numbers.
    """
    values = line.rstrip(b"\r\n ").split(b" ", 1001)[1:1001]
    numbers = sum(len(v) <= 64 and _is_number(v) for v in values)
    return numbers * 2 > len(values)


# DEFLATE cannot compress better than about 1032 to 1: a gzip file holds at most
# this many bytes per compressed byte.
_GZIP_MAX_RATIO = 1032


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


class Reader:
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
        self._pending = b""  # Bytes read past the header, not yet a record.
        self._raw = open(self.path, "rb")
        try:
            gzipped = self._raw.read(2) == b"\x1f\x8b"
            self._raw.seek(0)
            self._stream = (
                gzip.GzipFile(fileobj=self._raw, mode="rb") if gzipped else self._raw
            )
            self._gzipped = gzipped
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
                # The next line (at most 1 MiB of it), kept for the records.
                self._pending = self._stream.readline(_CHUNK)
                binary = bool(self._pending) and not _is_text_record(self._pending)
        if binary and not self.has_header:
            raise self._error(
                1,
                "a word2vec binary file starts with a header line "
                f"'<count> <dim>'. Received: {self._first[:80]!r}.",
            )
        self.binary = bool(binary)
        if self.binary:
            self._check_binary_size()

    def _check_binary_size(self):
        """Refuse a header that claims more than the file can hold, before
        reading a record: each vector takes a token, a space and `4 * dim` bytes."""
        least = self.count * (4 * self.dim + 2)
        size = os.fstat(self._raw.fileno()).st_size
        room = size * _GZIP_MAX_RATIO if self._gzipped else size - len(self._first)
        if least > room:
            held = "at most " if self._gzipped else ""
            raise self._error(
                1,
                f"the file ends early: the header announces {self.count} vectors "
                f"of dimension {self.dim} (at least {least} bytes), but the file "
                f"holds {held}{room} bytes after it.",
            )

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
        first = self._pending if self.has_header else self._first
        if first and not first.endswith(b"\n"):
            first += self._stream.readline()  # The rest of a line over 1 MiB.
        lines = _chain_first(first, self._stream)
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
        buf, pos = self._pending, 0
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
    if first:
        yield first
    yield from rest


def _check_dim(reader, output_dim):
    if output_dim is not None and reader.dim != output_dim:
        raise ValueError(
            f"`output_dim` must equal the dimension of the vectors in "
            f"'{reader.path}' ({reader.dim}, line {reader.dim_line}). "
            f"Received: output_dim={output_dim}."
        )


def read_all(reader, output_dim, dtype):
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


def read_wanted(reader, output_dim, rows, size, dtype):
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
