"""`Embedding(padding_idx=...)`, with PyTorch's meaning.

The padding row starts at zeros and gets no gradient, so it stays zero through
training with every optimizer, dense or row-sparse, on every backend.
"""

import keras
import numpy as np
import pytest

from keras_embedding_plus import Embedding, EmbeddingBag, to_keras
from keras_embedding_plus.optimizers import LazyAdagrad, LazyAdam, LazySGD
from keras_embedding_plus.testing import compiled
from keras_embedding_plus.training import SparseTrainer

BACKEND = keras.backend.backend()

VOCAB, DIM, LENGTH, PAD = 10, 3, 4, 2


def test_argument_is_checked():
    for bad in (True, 1.0, "2", VOCAB, -VOCAB - 1):
        with pytest.raises(ValueError, match=r"`padding_idx` must be None or an int"):
            Embedding(VOCAB, DIM, padding_idx=bad)
    assert Embedding(VOCAB, DIM, padding_idx=-1).padding_idx == VOCAB - 1
    assert Embedding(VOCAB, DIM, padding_idx=np.int64(3)).padding_idx == 3
    assert Embedding(VOCAB, DIM).padding_idx is None


def test_config_round_trip():
    layer = Embedding(VOCAB, DIM, padding_idx=-3)
    config = layer.get_config()
    assert config["padding_idx"] == VOCAB - 3
    assert Embedding.from_config(config).padding_idx == VOCAB - 3
    with pytest.raises(TypeError, match=r"`padding_idx` must be None"):
        Embedding.from_config({**config, "padding_idx": 99})


def test_to_keras_refuses_padding_idx():
    model = keras.Sequential(
        [keras.Input((LENGTH,), dtype="int32"), Embedding(VOCAB, DIM, padding_idx=0)]
    )
    with pytest.raises(ValueError, match=r"no `padding_idx` option"):
        to_keras(model)


def test_row_starts_at_zeros():
    layer = Embedding(VOCAB, DIM, padding_idx=PAD, embeddings_initializer="ones")
    layer.build()
    table = keras.ops.convert_to_numpy(layer.embeddings)
    expected = np.ones((VOCAB, DIM))
    expected[PAD] = 0
    np.testing.assert_array_equal(table, expected)
    out = keras.ops.convert_to_numpy(layer(np.array([[PAD, 1]], "int32")))
    np.testing.assert_array_equal(out[0], expected[[PAD, 1]])


def test_given_weights_keep_their_values():
    """As PyTorch's `_weight`: a table given explicitly is taken as it is."""
    value = np.arange(VOCAB * DIM, dtype="float32").reshape(VOCAB, DIM)
    layer = Embedding(VOCAB, DIM, padding_idx=PAD, weights=value)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.embeddings), value)


def _table_grad(layer, ids, upstream, compile_):
    upstream = keras.ops.convert_to_tensor(upstream)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        def step(ids):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(layer(ids) * upstream)
            return tf.convert_to_tensor(tape.gradient(loss, layer.embeddings.value))

        return keras.ops.convert_to_numpy((compiled(step) if compile_ else step)(ids))
    if BACKEND == "jax":
        import jax
        import jax.numpy as jnp

        def loss(table, ids):
            out, _ = layer.stateless_call([table], [], ids)
            return jnp.sum(out * upstream)

        step = jax.grad(loss)
        return np.asarray(
            (compiled(step) if compile_ else step)(layer._embeddings.value, ids)
        )
    table = layer.embeddings.value
    table.grad = None
    out = (compiled(lambda i: layer(i)) if compile_ else layer)(ids)
    (out * upstream).sum().backward()
    grad = table.grad
    return (grad.to_dense() if grad.is_sparse else grad).numpy()


@pytest.mark.parametrize("compile_", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_gradient_is_zero_on_the_padding_row(sparse, compile_):
    layer = Embedding(VOCAB, DIM, padding_idx=PAD, sparse=sparse)
    layer.build()
    ids = np.array([[1, PAD, 1, 5], [PAD, PAD, 7, 1]], "int32")
    upstream = np.random.default_rng(0).normal(size=(2, LENGTH, DIM)).astype("float32")
    grad = _table_grad(layer, keras.ops.convert_to_tensor(ids), upstream, compile_)
    expected = np.zeros((VOCAB, DIM))
    np.add.at(expected, ids.reshape(-1), upstream.reshape(-1, DIM))
    expected[PAD] = 0
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-6)


@keras.saving.register_keras_serializable(package="test_padding_idx")
class SparseSequential(SparseTrainer, keras.Sequential):
    pass


OPTIMIZERS = {
    "adam": (False, lambda: keras.optimizers.Adam(0.1)),
    "sgd_momentum": (False, lambda: keras.optimizers.SGD(0.1, momentum=0.9)),
    "adagrad": (False, lambda: keras.optimizers.Adagrad(0.1)),
    "rmsprop": (False, lambda: keras.optimizers.RMSprop(0.1)),
    "lazy_adam_sparse": (True, lambda: LazyAdam(0.1)),
    "lazy_sgd_sparse": (True, lambda: LazySGD(0.1, momentum=0.9)),
    "lazy_adagrad_sparse": (True, lambda: LazyAdagrad(0.1)),
}


@pytest.mark.parametrize("layer_cls", [Embedding, EmbeddingBag])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_row_stays_zero_through_training(name, layer_cls):
    sparse, make_optimizer = OPTIMIZERS[name]
    layers = [
        keras.Input((LENGTH,), dtype="int32"),
        layer_cls(VOCAB, DIM, padding_idx=PAD, sparse=sparse, name="emb"),
    ]
    if layer_cls is Embedding:
        layers.append(keras.layers.GlobalAveragePooling1D())
    layers.append(keras.layers.Dense(1))
    model = (SparseSequential if sparse else keras.Sequential)(layers)
    model.compile(optimizer=make_optimizer(), loss="mse")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 5, size=(4, 8, LENGTH)).astype("int32")
    ids[:, :, 0] = PAD
    before = keras.ops.convert_to_numpy(model.get_layer("emb").embeddings).copy()
    for step in range(4):
        model.train_on_batch(ids[step], rng.normal(size=(8, 1)))
    after = keras.ops.convert_to_numpy(model.get_layer("emb").embeddings)
    np.testing.assert_array_equal(after[PAD], 0)
    moved = np.abs(after - before).max(axis=1)
    assert (moved[[0, 1, 3, 4]] > 0).all() and (moved[5:] == 0).all()


def test_lora_keeps_the_padding_row_zero():
    layer = Embedding(VOCAB, DIM, padding_idx=PAD, lora_rank=2)
    model = keras.Sequential(
        [keras.Input((LENGTH,), dtype="int32"), layer, keras.layers.Flatten()]
    )
    model.add(keras.layers.Dense(1))
    model.compile(optimizer=keras.optimizers.Adam(0.1), loss="mse")
    ids = np.array([[PAD, 1, 3, PAD]] * 4, "int32")
    for _ in range(3):
        model.train_on_batch(ids, np.ones((4, 1)))
    out = keras.ops.convert_to_numpy(layer(np.array([[PAD, 1]], "int32")))
    np.testing.assert_array_equal(out[0, 0], 0)
    assert np.abs(out[0, 1]).max() > 0
