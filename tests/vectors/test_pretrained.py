"""Loading pretrained vectors: formats, vocabularies, OOV and padding rows, errors."""

import gzip
import logging

import keras
import numpy as np
import pytest

import keras_embedding_plus as kep
from keras_embedding_plus import Embedding, load_vectors

BACKEND = keras.backend.backend()

RNG = np.random.default_rng(0)
WORDS = ["the", "cat", "sat", "on", "mat", "dog"]
VECTORS = RNG.standard_normal((len(WORDS), 5)).astype("float32")


def _text(header=False, words=WORDS, vectors=VECTORS):
    lines = [f"{len(words)} {vectors.shape[1]}"] if header else []
    lines += [
        w + " " + " ".join(repr(float(x)) for x in v)
        for w, v in zip(words, vectors, strict=True)
    ]
    return "\n".join(lines) + "\n"


def _write(tmp_path, name, text):
    path = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _binary(tmp_path, name="vectors.bin", words=WORDS, vectors=VECTORS):
    data = f"{len(words)} {vectors.shape[1]}\n".encode()
    for w, v in zip(words, vectors, strict=True):
        data += w.encode() + b" " + v.astype("<f4").tobytes() + b"\n"
    path = tmp_path / name
    with (gzip.open if name.endswith(".gz") else open)(path, "wb") as f:
        f.write(data)
    return path


@pytest.mark.parametrize(
    "name,header",
    [
        ("glove.txt", False),
        ("fasttext.vec", True),
        ("glove.txt.gz", False),
        ("fasttext.vec.gz", True),
    ],
    ids=["text", "header", "gzip", "gzip-header"],
)
def test_text_formats_exact_rows(tmp_path, name, header):
    path = _write(tmp_path, name, _text(header))
    vocab = ["dog", "the", "mat"]
    matrix, found = load_vectors(path, vocab)
    np.testing.assert_array_equal(matrix, VECTORS[[5, 0, 4]])
    np.testing.assert_array_equal(found, [True, True, True])


@pytest.mark.parametrize("name", ["w2v.bin", "w2v.bin.gz", "no-extension"])
def test_word2vec_binary(tmp_path, name):
    path = _binary(tmp_path, name)
    vectors = load_vectors(path)
    assert vectors.tokens == WORDS
    np.testing.assert_array_equal(vectors.matrix, VECTORS)
    matrix, found = load_vectors(path, ["sat", "zebra"], oov_initializer="zeros")
    np.testing.assert_array_equal(matrix, [VECTORS[2], np.zeros(5)])
    np.testing.assert_array_equal(found, [True, False])


@pytest.mark.parametrize("block_rows", [8192, 4], ids=["one-block", "blocks"])
def test_whole_file_without_vocabulary(tmp_path, monkeypatch, block_rows):
    from keras_embedding_plus.vectors import readers

    monkeypatch.setattr(readers, "_BLOCK_ROWS", block_rows)
    path = _write(tmp_path, "v.txt", _text())
    vectors = load_vectors(path)
    assert vectors.tokens == WORDS and vectors.coverage == 1.0 and vectors.dim == 5
    np.testing.assert_array_equal(vectors.matrix, VECTORS)
    padded = load_vectors(path, mask_zero=True)
    assert padded.tokens == [""] + WORDS
    np.testing.assert_array_equal(padded.matrix[0], np.zeros(5))
    np.testing.assert_array_equal(padded.matrix[1:], VECTORS)


def test_oov_rows_use_initializer_and_coverage_is_logged(tmp_path, caplog):
    path = _write(tmp_path, "v.txt", _text())
    vocab = ["cat", "zebra", "on", "unicorn"]
    with caplog.at_level(logging.INFO, logger="keras_embedding_plus"):
        vectors = load_vectors(
            path, vocab, oov_initializer=keras.initializers.Constant(0.5)
        )
    np.testing.assert_array_equal(vectors.matrix[[0, 2]], VECTORS[[1, 3]])
    np.testing.assert_array_equal(vectors.matrix[[1, 3]], np.full((2, 5), 0.5))
    np.testing.assert_array_equal(vectors.found, [True, False, True, False])
    assert vectors.coverage == 0.5
    assert "2 of 4 tokens (50.0%)" in caplog.text and str(path) in caplog.text


def test_default_oov_initializer_is_small_uniform(tmp_path):
    path = _write(tmp_path, "v.txt", _text())
    matrix, found = load_vectors(path, ["zebra", "cat"])
    assert not found[0] and found[1]
    assert 0 < np.abs(matrix[0]).max() <= 0.05  # RandomUniform(-0.05, 0.05)


def test_mask_zero_zeroes_padding_row(tmp_path):
    path = _write(tmp_path, "v.txt", _text())
    # Row 0 is padding even if its token is in the file.
    vectors = load_vectors(path, ["the", "cat"], mask_zero=True)
    np.testing.assert_array_equal(vectors.matrix, [np.zeros(5), VECTORS[1]])
    np.testing.assert_array_equal(vectors.found, [False, True])
    assert vectors.coverage == 1.0  # The padding row is not looked up.


def test_first_vector_wins_and_duplicate_vocabulary_tokens(tmp_path):
    text = _text() + "cat " + " ".join(["9"] * 5) + "\n"
    path = _write(tmp_path, "v.txt", text)
    matrix, found = load_vectors(path, ["cat", "dog", "cat"])
    np.testing.assert_array_equal(matrix, VECTORS[[1, 5, 1]])
    assert found.all()


def test_tokens_with_spaces_and_crlf(tmp_path):
    text = "the 3 4 \r\nnew york 1 2\r\n\r\n"
    path = _write(tmp_path, "v.txt", text)
    vectors = load_vectors(path)
    assert vectors.tokens == ["the", "new york"]
    np.testing.assert_array_equal(vectors.matrix, [[3, 4], [1, 2]])


class _FakeLookup:
    """Stands in for `StringLookup` where it needs TensorFlow (same attributes)."""

    def __init__(self, vocabulary, mask_token=None, num_oov_indices=1):
        self.mask_token, self.num_oov_indices = mask_token, num_oov_indices
        head = ([mask_token] if mask_token is not None else []) + ["[UNK]"] * (
            num_oov_indices
        )
        self._vocabulary = head + list(vocabulary)

    def get_vocabulary(self):
        return self._vocabulary


@pytest.mark.parametrize(
    "mask_token,num_oov,padding,oov",
    [
        (None, 1, None, [0]),
        ("", 1, 0, [1]),
        ("[PAD]", 2, 0, [1, 2]),
        (None, 0, None, []),
    ],
    ids=["oov-at-0", "mask-then-oov", "two-oov", "no-oov"],
)
def test_lookup_conventions(tmp_path, mask_token, num_oov, padding, oov):
    path = _write(tmp_path, "v.txt", _text() + "[UNK] " + "1 " * 4 + "1\n")
    lookup = _FakeLookup(["cat", "dog"], mask_token, num_oov)
    vectors = load_vectors(path, lookup, oov_initializer="ones")
    offset = len(oov) + (padding is not None)
    np.testing.assert_array_equal(vectors.matrix[offset:], VECTORS[[1, 5]])
    for row in oov:  # OOV rows are never looked up, even when '[UNK]' is in the file.
        np.testing.assert_array_equal(vectors.matrix[row], np.ones(5))
        assert not vectors.found[row]
    if padding is not None:
        np.testing.assert_array_equal(vectors.matrix[padding], np.zeros(5))
    assert vectors.coverage == 1.0


@pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="keras.layers.StringLookup / TextVectorization need TensorFlow (Keras 3.15)",
)
def test_real_lookup_layers(tmp_path):
    path = _write(tmp_path, "v.txt", _text())
    lookup = keras.layers.StringLookup(vocabulary=["cat", "zebra"])  # 0 = [UNK]
    matrix, found = load_vectors(path, lookup, oov_initializer="ones")
    np.testing.assert_array_equal(matrix, [np.ones(5), VECTORS[1], np.ones(5)])
    np.testing.assert_array_equal(found, [False, True, False])
    ids = lookup(["cat"]).numpy()
    np.testing.assert_array_equal(matrix[ids[0]], VECTORS[1])

    vectorizer = keras.layers.TextVectorization()
    vectorizer.adapt(["the cat sat", "the dog"])
    layer = Embedding.from_pretrained(path, vectorizer, mask_zero=True)
    vocab = vectorizer.get_vocabulary()
    assert vocab[:2] == ["", "[UNK]"]
    table = keras.ops.convert_to_numpy(layer.embeddings)
    np.testing.assert_array_equal(table[0], np.zeros(5))  # '' pads
    ids = vectorizer(["dog the"]).numpy()[0]
    np.testing.assert_array_equal(table[ids], VECTORS[[5, 0]])
    assert layer.coverage == 1.0


def test_from_pretrained_path_and_array(tmp_path):
    path = _write(tmp_path, "v.txt", _text())
    layer = Embedding.from_pretrained(
        path, ["<pad>", "sat", "zebra"], mask_zero=True, oov_initializer="zeros"
    )
    assert (layer.input_dim, layer.output_dim, layer.mask_zero) == (3, 5, True)
    assert layer.coverage == 0.5
    out = keras.ops.convert_to_numpy(layer(np.array([[1, 0, 2]])))
    np.testing.assert_array_equal(out[0], [VECTORS[2], np.zeros(5), np.zeros(5)])
    mask = keras.ops.convert_to_numpy(layer.compute_mask(np.array([[1, 0]])))
    np.testing.assert_array_equal(mask, [[True, False]])

    frozen = Embedding.from_pretrained(VECTORS, trainable=False, name="glove")
    assert not frozen.trainable and frozen.trainable_weights == []
    assert frozen.name == "glove" and frozen.coverage is None
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(frozen.embeddings), VECTORS
    )


def test_from_pretrained_trains_and_round_trips(tmp_path):
    path = _write(tmp_path, "v.txt", _text())
    layer = Embedding.from_pretrained(path, WORDS, output_dim=5)
    model = keras.Sequential([keras.Input((2,), dtype="int32"), layer])
    model.compile("sgd", "mse")
    model.fit(np.array([[0, 1]]), np.zeros((1, 2, 5)), epochs=1, verbose=0)
    table = keras.ops.convert_to_numpy(layer.embeddings)
    assert not np.array_equal(table[:2], VECTORS[:2])  # trained rows moved
    np.testing.assert_array_equal(table[2:], VECTORS[2:])
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(
        loaded.predict(np.array([[3, 4]]), verbose=0),
        model.predict(np.array([[3, 4]]), verbose=0),
    )


def test_from_pretrained_errors(tmp_path):
    path = _write(tmp_path, "v.txt", _text())
    with pytest.raises(ValueError, match=r"`output_dim` must equal .* \(5, line 1\)"):
        Embedding.from_pretrained(path, WORDS, output_dim=7)
    with pytest.raises(ValueError, match="`input_dim` must equal"):
        Embedding.from_pretrained(VECTORS, input_dim=3)
    with pytest.raises(ValueError, match="`vocabulary` is only used with a path"):
        Embedding.from_pretrained(VECTORS, vocabulary=WORDS)
    with pytest.raises(ValueError, match="2-D"):
        Embedding.from_pretrained(np.zeros(3))


@pytest.mark.parametrize(
    "text,line,message",
    [
        (
            "the 1 2 3\ncat 4 5\n",
            2,
            r"expected 3 numbers .* \(as line 1 says\), received 2",
        ),
        ("the 1 2 3\ncat 4 5 6 7\n", 2, "expected 3 numbers"),
        ("2 3\nthe 1 2 3\ncat 4 5\n", 3, r"\(as the header says\), received 2"),
        ("the 1 2 3\ncat 4 x 6\n", 2, "non-numeric value for token 'cat'"),
        ("the 1 2 3\ncat 4 nan 6\n", 2, "non-finite value for token 'cat'"),
        ("lonely\n", 1, "a token with no values"),
    ],
    ids=["short", "long", "header-dim", "non-numeric", "nan", "no-values"],
)
def test_bad_lines_name_file_and_line(tmp_path, text, line, message):
    path = _write(tmp_path, "bad.txt", text)
    with pytest.raises(ValueError, match=f"'{path}', line {line}: .*{message}"):
        load_vectors(path, ["the", "cat"])


@pytest.mark.parametrize(
    "text,message",
    [("", "is empty"), ("\n\n", "is empty"), ("4 3\n", "holds only a header")],
)
def test_empty_files(tmp_path, text, message):
    path = _write(tmp_path, "empty.txt", text)
    with pytest.raises(ValueError, match=f"'{path}': the file {message}"):
        load_vectors(path)


def test_bad_binary_and_encoding(tmp_path):
    path = _binary(tmp_path)
    path.write_bytes(path.read_bytes()[:-10])  # truncated
    with pytest.raises(ValueError, match=r"vector 6: the file ends early"):
        load_vectors(path)
    text = tmp_path / "latin1.txt"
    text.write_bytes(b"caf\xe9 1 2\n")
    with pytest.raises(ValueError, match="line 1: not valid utf-8"):
        load_vectors(text)
    np.testing.assert_array_equal(
        load_vectors(text, encoding="latin-1").matrix, [[1, 2]]
    )


def test_argument_errors(tmp_path):
    path = _write(tmp_path, "v.txt", _text())
    with pytest.raises(ValueError, match=r"`output_dim` must be None or a positive"):
        load_vectors(path, output_dim=0)
    with pytest.raises(ValueError, match="`vocabulary` must be a list of tokens"):
        load_vectors(path, "the cat")
    with pytest.raises(ValueError, match="`vocabulary` must hold strings"):
        load_vectors(path, [1, 2])
    with pytest.raises(ValueError, match="`mask_zero` must be a boolean"):
        load_vectors(path, mask_zero="yes")
    with pytest.raises(FileNotFoundError):
        load_vectors(tmp_path / "missing.txt")


def test_stops_early_and_shows_progress(tmp_path, monkeypatch, capsys):
    from keras_embedding_plus.vectors import readers

    # A bad line after every wanted token is never reached.
    path = _write(tmp_path, "v.txt", _text() + "broken 1\n")
    np.testing.assert_array_equal(load_vectors(path, ["cat"]).matrix, VECTORS[[1]])
    monkeypatch.setattr(readers, "_PROGRESS_AFTER_S", 0.0)
    monkeypatch.setattr(readers, "_PROGRESS_EVERY", 1)
    path = _write(tmp_path, "v.txt", _text())
    load_vectors(path, ["dog", "zebra"])
    assert "MiB" in capsys.readouterr().out
    load_vectors(path, ["dog", "zebra"], verbose=0)
    assert capsys.readouterr().out == ""


def test_public_names(tmp_path):
    assert {"load_vectors", "Vectors"} <= set(kep.__all__)
    path = _write(tmp_path, "public.txt", _text())
    matrix, found = kep.load_vectors(path, WORDS[:2], verbose=0)
    np.testing.assert_allclose(matrix, VECTORS[:2], rtol=1e-6)
    assert isinstance(Embedding.from_pretrained(VECTORS), kep.Embedding)


@pytest.mark.parametrize("name", ["w2v.txt", "w2v.txt.gz"])
@pytest.mark.parametrize(
    "stray,message",
    [(b"\x00", "non-numeric value for token 'the'"), (b"\xff", "not valid utf-8")],
    ids=["nul", "0xff"],
)
def test_stray_byte_in_text_is_not_binary(tmp_path, name, stray, message):
    # A `<count> <dim>` header and one bad byte in the first vector: the file is
    # still text (a token and `dim` values), so the bad value is named, not
    # read as word2vec binary garbage.
    data = _text(header=True).encode()
    cut = data.index(b"\n") + len("the 0.1")
    path = tmp_path / name
    with (gzip.open if name.endswith(".gz") else open)(path, "wb") as f:
        f.write(data[:cut] + stray + data[cut:])
    with pytest.raises(ValueError, match=f"'{path}', line 2: .*{message}"):
        load_vectors(path)


@pytest.mark.parametrize("name", ["lying.bin", "lying.bin.gz"])
def test_binary_header_claims_checked_against_file_size(tmp_path, name):
    # The header claims two vectors of 10**8 floats (800 MB); the file holds
    # 4 MiB of float bytes with no newline. Refused after reading at most
    # 1 MiB past the header, before any record is buffered.
    import tracemalloc

    body = b"2 100000000\nthe " + np.ones(2**20, "<f4").tobytes()
    path = tmp_path / name
    with (gzip.open if name.endswith(".gz") else open)(path, "wb") as f:
        f.write(body)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="the file ends early: the header"):
            load_vectors(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * 2**20, peak


def test_header_then_text_line_longer_than_the_format_peek(tmp_path):
    # The format is decided on the first MiB of the line after the header; the
    # text reader still reads that line whole.
    dim = 120_000
    values = np.arange(dim, dtype="float32") % 7
    line = "tok " + " ".join(f"{v:.6f}" for v in values)
    assert len(line) > 2**20
    path = _write(tmp_path, "long.vec", f"1 {dim}\n{line}\n")
    vectors = load_vectors(path)
    assert vectors.tokens == ["tok"]
    np.testing.assert_array_equal(vectors.matrix, values[None])


@pytest.mark.parametrize("vocab,found", [(["cat", "zebra", "yak"], 1), (["x"], 0)])
def test_low_coverage_is_a_warning_with_the_counts(tmp_path, caplog, vocab, found):
    path = _write(tmp_path, "v.txt", _text())
    with caplog.at_level(logging.INFO, logger="keras_embedding_plus"):
        vectors = load_vectors(path, vocab)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, caplog.text
    assert f"{found} of {len(vocab)} tokens" in warnings[0].getMessage()
    assert str(path) in warnings[0].getMessage()
    assert vectors.coverage == found / len(vocab) < 0.5


def test_half_coverage_is_not_a_warning(tmp_path, caplog):
    path = _write(tmp_path, "v.txt", _text())
    with caplog.at_level(logging.INFO, logger="keras_embedding_plus"):
        load_vectors(path, ["cat", "zebra"])
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("mask_zero", [False, True])
def test_empty_token_pads_with_zeros_and_is_not_looked_up(tmp_path, mask_zero):
    # A file may hold an empty token (a line starting with a space): '' in a
    # list vocabulary is still the padding token, never looked up in the file.
    text = " " + " ".join(["9.0"] * 5) + "\n" + _text()
    path = _write(tmp_path, "v.txt", text)
    vectors = load_vectors(path, ["", "cat"], mask_zero=mask_zero)
    np.testing.assert_array_equal(vectors.matrix, [np.zeros(5), VECTORS[1]])
    np.testing.assert_array_equal(vectors.found, [False, True])
    assert vectors.coverage == 1.0
