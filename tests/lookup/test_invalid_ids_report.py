"""Invalid ids in compiled calls: counted in `fit` / `evaluate` logs, warned about
once per epoch, or raised with `invalid_ids="raise"` (issue 21, item 1)."""

import warnings

import keras
import numpy as np
import pytest
from keras import ops

from keras_embedding_plus import Embedding, EmbeddingBag, ReversibleEmbedding
from keras_embedding_plus.optimizers import LazyAdam
from keras_embedding_plus.testing import compiled
from keras_embedding_plus.training import SparseTrainer

BACKEND = keras.backend.backend()
EAGER_FIT = "Keras's fit / evaluate on torch are eager: invalid ids raise ValueError"

# The data: ids 0 to 14 into `Embedding(10, 4)`, about 1/3 invalid.
IDS = np.random.default_rng(0).integers(0, 15, size=(48, 5)).astype("int32")
TARGETS = np.zeros((48, 5, 4), "float32")
INVALID = int((IDS >= 10).sum())  # NumPy's count, per pass over the data
RANGE = "0 to 9"


def _invalid_warnings(record, name):
    return [
        str(w.message)
        for w in record
        if "invalid embedding ids" in str(w.message) and f"'{name}'" in str(w.message)
    ]


@pytest.fixture(scope="module")
def trained():
    """Two epochs of compiled `fit`, then `evaluate`: logs and warnings."""
    if BACKEND == "torch":
        pytest.skip(EAGER_FIT)
    layer = Embedding(10, 4, name="counted")
    model = keras.Sequential([keras.Input((5,), dtype="int32"), layer])
    model.compile("sgd", "mse")
    with warnings.catch_warnings(record=True) as fit_record:
        warnings.simplefilter("default")  # what users get: repeats hidden
        history = model.fit(IDS, TARGETS, epochs=2, batch_size=16, verbose=0)
    with warnings.catch_warnings(record=True) as evaluate_record:
        warnings.simplefilter("default")
        logs = model.evaluate(IDS, TARGETS, batch_size=16, return_dict=True, verbose=0)
    return history.history, logs, fit_record, evaluate_record


def test_fit_history_counts_the_invalid_ids_of_each_epoch(trained):
    history, _, _, _ = trained
    assert 0 < INVALID < IDS.size
    assert history["counted_invalid_ids"] == [INVALID, INVALID]


def test_evaluate_logs_count_the_invalid_ids(trained):
    _, logs, _, _ = trained
    assert logs["counted_invalid_ids"] == INVALID


def test_one_warning_per_epoch_names_the_layer_count_and_range(trained):
    _, _, fit_record, evaluate_record = trained
    # Equal counts in both epochs: still one warning each.
    messages = _invalid_warnings(fit_record, "counted")
    assert len(messages) == 2
    for message in messages:
        assert f"met {INVALID} invalid embedding ids" in message
        assert RANGE in message
    assert len(_invalid_warnings(evaluate_record, "counted")) == 1


class Wrapper(keras.Model):
    def __init__(self, layer):
        super().__init__()
        self.inner = layer

    def call(self, inputs):
        return self.inner(inputs)


def _compiled_pass(layer, inputs):
    """A compiled pass of `inputs` through `layer`, where each backend
    counts: Keras's compiled test step on TensorFlow and JAX (JAX updates
    state only in Keras's steps, not in a bare `jax.jit`), `torch.compile` on
    torch (Keras's steps are eager there, and eager calls raise)."""
    if BACKEND == "torch":
        compiled(lambda x: layer(x))(inputs)
        return
    model = Wrapper(layer)
    model.compile(loss=lambda y_true, y_pred: ops.sum(y_pred) * 0.0)
    model.test_on_batch(inputs, np.zeros((48, 1), "float32"))


def test_valid_ids_neither_count_nor_warn():
    layer = Embedding(10, 4, name="clean")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _compiled_pass(layer, ops.convert_to_tensor(IDS % 10))
        assert int(ops.convert_to_numpy(layer.invalid_ids_count.result())) == 0
    assert not _invalid_warnings(record, "clean")


def _values_offsets():
    values = ops.convert_to_tensor(IDS.reshape(-1))
    return (values, ops.convert_to_tensor(np.arange(0, IDS.size, 5, dtype="int32")))


@pytest.mark.parametrize(
    "make, inputs",
    [
        (lambda: Embedding(10, 4), lambda: ops.convert_to_tensor(IDS)),
        (lambda: ReversibleEmbedding(10, 4), lambda: ops.convert_to_tensor(IDS)),
        (lambda: EmbeddingBag(10, 4), lambda: ops.convert_to_tensor(IDS)),
        (lambda: EmbeddingBag(10, 4, combiner="sum"), _values_offsets),
    ],
    ids=["embedding", "reversible", "bag_dense", "bag_values_offsets"],
)
def test_compiled_calls_count_until_reset(make, inputs):
    layer = make()
    metric = layer.invalid_ids_count
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _compiled_pass(layer, inputs())
        count = int(ops.convert_to_numpy(metric.result()))
    assert count == INVALID
    # Once between two resets, whenever the count is read first.
    assert len(_invalid_warnings(record, layer.name)) == 1
    assert metric.name == f"{layer.name}_invalid_ids"
    assert metric in layer.metrics
    metric.reset_state()
    assert int(ops.convert_to_numpy(metric.result())) == 0


def test_eager_calls_raise_and_do_not_count():
    layer = Embedding(10, 4, invalid_ids="zero")
    with pytest.raises(ValueError, match="Invalid embedding id"):
        layer(ops.convert_to_tensor(IDS))
    assert int(ops.convert_to_numpy(layer.invalid_ids_count.result())) == 0


def test_the_count_is_no_weight():
    layer = Embedding(10, 4)
    layer.build()
    assert len(layer.weights) == 1 and not layer.non_trainable_weights
    assert len(layer.get_weights()) == 1


# --- invalid_ids="raise" ----------------------------------------------------------


@pytest.mark.skipif(BACKEND == "torch", reason=EAGER_FIT)
def test_raise_fails_compiled_fit_naming_the_layer():
    layer = Embedding(10, 4, name="strict", invalid_ids="raise")
    model = keras.Sequential([keras.Input((5,), dtype="int32"), layer])
    model.compile("sgd", "mse")
    # TensorFlow: `InvalidArgumentError` (graph assert); JAX: `JaxRuntimeError`
    # (the host callback's ValueError): each the backend's error of a step.
    with pytest.raises(Exception, match="Layer strict met invalid"):
        model.fit(IDS, TARGETS, epochs=1, batch_size=16, verbose=0)


def test_raise_fails_a_compiled_call_and_passes_valid_ids():
    layer = Embedding(10, 4, name="strict_fn", invalid_ids="raise")
    layer.build()
    fn = compiled(lambda x: layer(x))
    table = ops.convert_to_numpy(layer.embeddings)
    rows = ops.convert_to_numpy(fn(ops.convert_to_tensor(IDS % 10)))
    np.testing.assert_array_equal(rows, table[IDS % 10])
    with pytest.raises(Exception, match="Layer strict_fn met invalid"):
        ops.convert_to_numpy(fn(ops.convert_to_tensor(IDS)))


@pytest.mark.skipif(BACKEND != "torch", reason="Keras's fit is eager on torch only")
def test_raise_in_torch_eager_fit_is_a_value_error():
    layer = Embedding(10, 4, invalid_ids="raise")
    model = keras.Sequential([keras.Input((5,), dtype="int32"), layer])
    model.compile("sgd", "mse")
    with pytest.raises(ValueError, match="Invalid embedding id"):
        model.fit(IDS, TARGETS, epochs=1, batch_size=16, verbose=0)


# --- the argument and configs -------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", None, True, "Raise"])
def test_invalid_ids_argument_is_checked(value):
    with pytest.raises(ValueError, match=r"`invalid_ids` must be one of 'zero', "):
        Embedding(10, 4, invalid_ids=value)


@pytest.mark.parametrize("cls", [Embedding, EmbeddingBag, ReversibleEmbedding])
def test_config_round_trip(cls):
    config = cls(10, 4, invalid_ids="raise").get_config()
    assert config["invalid_ids"] == "raise"
    layer = cls.from_config(config)
    assert layer.invalid_ids == "raise"
    assert layer.invalid_ids_count.policy == "raise"
    assert cls(10, 4).get_config()["invalid_ids"] == "zero"


def test_configs_without_the_argument_load_with_the_default():
    old = Embedding(10, 4).get_config()
    del old["invalid_ids"]  # as 0.1.0 wrote them
    assert Embedding.from_config(old).invalid_ids == "zero"
    keras_config = keras.layers.Embedding(10, 4).get_config()
    assert Embedding.from_config(keras_config).invalid_ids == "zero"


@pytest.mark.skipif(BACKEND == "torch", reason=EAGER_FIT)
def test_a_layer_called_twice_in_a_step_counts_both_calls():
    layer = Embedding(10, 4, name="shared")
    first, second = keras.Input((5,), dtype="int32"), keras.Input((5,), dtype="int32")
    model = keras.Model(
        [first, second], keras.layers.Add()([layer(first), layer(second)])
    )
    model.compile("sgd", "mse")
    reversed_ids = IDS[::-1].copy()
    with pytest.warns(UserWarning, match="'shared' met"):
        history = model.fit([IDS, reversed_ids], TARGETS, batch_size=16, verbose=0)
    assert history.history["shared_invalid_ids"] == [2 * INVALID]


@pytest.mark.skipif(BACKEND == "torch", reason=EAGER_FIT)
def test_sparse_training_counts_too():
    class Model(SparseTrainer, keras.Sequential):
        pass

    model = Model(
        [keras.Input((5,), dtype="int32"), Embedding(10, 4, sparse=True, name="rows")]
    )
    model.compile(LazyAdam(), "mse")
    with pytest.warns(UserWarning, match="'rows' met"):
        history = model.fit(IDS, TARGETS, batch_size=16, verbose=0)
    assert history.history["rows_invalid_ids"] == [INVALID]
