"""Moving models between layer classes: `from_keras` and `to_keras`."""

import inspect
import re
import zipfile

import keras
import numpy as np
import pytest
from keras import ops

import keras_embedding_plus
from keras_embedding_plus import Embedding, from_keras, to_keras

# Depends on the installed Keras (tox env keras-min runs it with the oldest).
pytestmark = pytest.mark.keras_version

# Keras's `Model.quantize` warns for every layer without `quantize` (InputLayer,
# pooling...).
IGNORE_NO_QUANTIZE = pytest.mark.filterwarnings(
    "ignore:Layer .* does not have a `quantize` method:UserWarning"
)
VOCAB, DIM, LENGTH = 30, 8, 6
IDS = np.random.default_rng(3).integers(1, VOCAB, size=(5, LENGTH)).astype("int32")
IDS[0, -2:] = 0  # padding, for the masked models
IDS[-1, 1:] = 0


def to_np(x):
    return ops.convert_to_numpy(x)


def predict(model, ids=IDS):
    out = model.predict(ids, verbose=0)
    return [to_np(o) for o in out] if isinstance(out, (list, tuple)) else to_np(out)


def fill(model, seed=1):
    """Deterministic values in [-0.5, 0.5) for every float weight of `model`."""
    rng = np.random.default_rng(seed)
    model.set_weights(
        [
            rng.uniform(-0.5, 0.5, w.shape).astype(w.dtype)
            if np.issubdtype(w.dtype, np.floating)
            else w
            for w in model.get_weights()
        ]
    )
    return model


def embeddings_of(model):
    """Every layer of `model` (nested models too) whose class is an embedding."""
    found = []
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Embedding, Embedding)):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found.extend(embeddings_of(layer))
    return found


def snapshot(model):
    return [type(layer) for layer in embeddings_of(model)], model.get_weights()


def assert_unchanged(model, before):
    types, weights = before
    assert [type(layer) for layer in embeddings_of(model)] == types
    for a, b in zip(weights, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


# Keras models with `keras.layers.Embedding` (the layer class is a parameter, so
# that `to_keras` tests build the same models with ours).
def sequential(cls=keras.layers.Embedding, **kwargs):
    return keras.Sequential(
        [
            keras.Input((LENGTH,), dtype="int32"),
            cls(VOCAB, DIM, **kwargs),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(3),
        ]
    )


def functional(cls=keras.layers.Embedding, **kwargs):
    ids = keras.Input((LENGTH,), dtype="int32")
    other = keras.Input((LENGTH,), dtype="int32")
    shared = cls(VOCAB, DIM, **kwargs)
    x = keras.layers.Concatenate()([shared(ids), shared(other), cls(VOCAB, 4)(ids)])
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model([ids, other], keras.layers.Dense(2)(x))


def nested(cls=keras.layers.Embedding, **kwargs):
    inner = sequential(cls, **kwargs)
    ids = keras.Input((LENGTH,), dtype="int32")
    x = keras.layers.Dense(4)(inner(ids))
    return keras.Model(ids, [x, cls(VOCAB, 2, name="outer")(ids)])


MODELS = {"sequential": sequential, "functional": functional, "nested": nested}


def inputs_for(model):
    try:
        two = len(model.inputs) == 2
    except AttributeError:  # Subclassed models have no `inputs`.
        two = False
    return [IDS, IDS[::-1]] if two else IDS


def assert_same_outputs(expected_model, model, atol=1e-6):
    ids = inputs_for(expected_model)
    expected, received = predict(expected_model, ids), predict(model, ids)
    if not isinstance(expected, list):
        expected, received = [expected], [received]
    for a, b in zip(expected, received, strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=atol)


@pytest.mark.parametrize("kind", MODELS)
def test_from_keras_swaps_every_embedding(kind):
    model = fill(MODELS[kind]())
    before = snapshot(model)
    converted = from_keras(model)
    layers = embeddings_of(converted)
    assert layers and all(type(layer) is Embedding for layer in layers)
    assert len(layers) == len(embeddings_of(model))
    assert type(converted) is type(model)
    assert_same_outputs(model, converted)
    assert_unchanged(model, before)


@pytest.mark.parametrize("kind", MODELS)
def test_to_keras_swaps_every_embedding(kind):
    model = fill(MODELS[kind](Embedding, input_length=LENGTH))
    before = snapshot(model)
    converted = to_keras(model)
    layers = embeddings_of(converted)
    assert layers and all(type(layer) is keras.layers.Embedding for layer in layers)
    assert_same_outputs(model, converted)
    assert_unchanged(model, before)


@pytest.mark.parametrize("kind", MODELS)
def test_round_trip(kind):
    model = fill(MODELS[kind]())
    back = from_keras(to_keras(from_keras(model)))
    assert all(type(layer) is Embedding for layer in embeddings_of(back))
    assert_same_outputs(model, back)


def test_shared_layer_stays_shared():
    converted = from_keras(functional())
    # One shared layer (called twice) and one more: two embedding layers.
    assert len(embeddings_of(converted)) == 2
    assert len(converted.weights) == len(functional().weights)


@pytest.mark.parametrize("kind", MODELS)
def test_mask_zero_is_kept(kind):
    model = fill(MODELS[kind](mask_zero=True))
    converted = from_keras(model)
    layer = embeddings_of(converted)[0]
    assert layer.mask_zero
    np.testing.assert_array_equal(
        to_np(layer.compute_mask(IDS)),
        to_np(embeddings_of(model)[0].compute_mask(IDS)),
    )
    # The pooling averages over the unmasked steps only: same outputs.
    assert_same_outputs(model, converted)
    back = to_keras(converted)
    assert embeddings_of(back)[0].mask_zero
    assert_same_outputs(model, back)


def test_config_is_kept():
    model = sequential(
        embeddings_regularizer="l2",
        embeddings_constraint=keras.constraints.NonNeg(),
        trainable=False,
        name="words",
    )
    layer = from_keras(model).layers[0]
    keras_config = model.layers[0].get_config()
    ours = layer.get_config()
    for key in ("name", "trainable", "input_dim", "output_dim", "mask_zero"):
        assert ours[key] == keras_config[key], key
    assert ours["embeddings_regularizer"] == keras_config["embeddings_regularizer"]
    assert ours["embeddings_constraint"] == keras_config["embeddings_constraint"]
    assert not layer.trainable


def test_trained_model_converts_with_equal_outputs():
    model = sequential(mask_zero=True)
    model.compile(keras.optimizers.Adam(0.05), "mse")
    targets = np.random.default_rng(0).standard_normal((len(IDS), 3))
    model.fit(IDS, targets, epochs=3, verbose=0)
    converted = from_keras(model)
    assert converted.compiled
    assert_same_outputs(model, converted)
    # Training goes on from the converted model.
    converted.fit(IDS, targets, epochs=1, verbose=0)


# The optimizer's state: training resumes where it stopped.

TARGETS = np.random.default_rng(4).standard_normal((len(IDS), 3)).astype("float32")


def train_steps(model, steps):
    for _ in range(steps):
        model.train_on_batch(inputs_for(model), TARGETS)


def two_outputs(model):
    """A model of `MODELS` with one output of 3, so that `TARGETS` fits."""
    if len(model.outputs) == 1:
        return model
    (ids,) = model.inputs
    return keras.Model(ids, keras.layers.Dense(3)(model.outputs[0]))


def assert_resumes_alike(model, converted, steps=3):
    """Both trained `steps` more steps on the same data: equal weights and
    step counts (the converted model's optimizer went on from the old one's)."""
    assert int(converted.optimizer.iterations) == int(model.optimizer.iterations)
    train_steps(model, steps)
    train_steps(converted, steps)
    assert int(converted.optimizer.iterations) == int(model.optimizer.iterations)
    # Same number of weights, same order: embeddings replaced one for one.
    for a, b in zip(model.get_weights(), converted.get_weights(), strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)


OPTIMIZERS = {
    "adam": lambda: keras.optimizers.Adam(0.05),
    "sgd-momentum": lambda: keras.optimizers.SGD(0.1, momentum=0.9),
    "loss-scale": lambda: keras.optimizers.LossScaleOptimizer(
        keras.optimizers.Adam(0.05)
    ),
}


@pytest.mark.parametrize(
    "kind, optimizer",
    [
        ("sequential", "adam"),
        ("sequential", "sgd-momentum"),
        # Nested: the inner model's variable paths change in the copy.
        ("nested", "adam"),
        # Two optimizers' variables (`iteration` twice), paired in order.
        ("sequential", "loss-scale"),
    ],
)
def test_optimizer_state_is_carried(kind, optimizer):
    model = fill(two_outputs(MODELS[kind]()))
    model.compile(OPTIMIZERS[optimizer](), "mse")
    train_steps(model, 4)
    assert int(model.optimizer.iterations) == 4
    converted = from_keras(model)
    assert all(type(layer) is Embedding for layer in embeddings_of(converted))
    assert converted.optimizer is not model.optimizer
    assert int(converted.optimizer.iterations) == 4
    assert_resumes_alike(model, converted)
    assert int(converted.optimizer.iterations) == 7


def test_optimizer_state_is_carried_by_to_keras():
    model = fill(sequential(Embedding))
    model.compile(keras.optimizers.Adam(0.05), "mse")
    train_steps(model, 4)
    converted = to_keras(model)
    assert type(converted.layers[0]) is keras.layers.Embedding
    assert_resumes_alike(model, converted)


@pytest.mark.parametrize("inplace", [False, True], ids=["copied", "inplace"])
def test_optimizer_state_is_carried_for_subclassed_models(inplace):
    def make():
        model = NoConfigTagger(table=np.zeros(3)) if inplace else Tagger()
        model(IDS)
        model.compile(keras.optimizers.Adam(0.05), "mse")
        return fill(model)

    model = make()
    # The reference, trained unconverted (`model` itself changes in place).
    twin = make() if inplace else model
    targets = np.random.default_rng(0).standard_normal(predict(model).shape)
    for _ in range(4):
        model.train_on_batch(IDS, targets)
        if twin is not model:
            twin.train_on_batch(IDS, targets)
    converted = from_keras(model, inplace=inplace)
    assert (converted is model) == inplace
    assert type(converted.embed) is Embedding
    assert int(converted.optimizer.iterations) == 4
    for _ in range(3):
        twin.train_on_batch(IDS, targets)
        converted.train_on_batch(IDS, targets)
    assert int(converted.optimizer.iterations) == 7
    for a, b in zip(twin.get_weights(), converted.get_weights(), strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)


def test_optimizer_state_that_cannot_be_matched_warns():
    model = sequential()
    model.compile(keras.optimizers.Adam(0.05), "mse")
    # Slots for a variable outside the model: nothing to carry them to.
    model.optimizer.build([keras.Variable(np.zeros((2, 2)), name="stray")])
    with pytest.warns(UserWarning, match="'stray.*no counterpart.*starts afresh"):
        converted = from_keras(model)
    assert int(converted.optimizer.iterations) == 0
    train_steps(converted, 1)


def test_single_layer():
    layer = keras.layers.Embedding(VOCAB, DIM)
    layer.build()
    converted = from_keras(layer)
    assert type(converted) is Embedding
    np.testing.assert_array_equal(to_np(converted(IDS)), to_np(layer(IDS)))
    back = to_keras(converted)
    assert type(back) is keras.layers.Embedding
    np.testing.assert_array_equal(to_np(back(IDS)), to_np(layer(IDS)))


def test_unbuilt_layer_stays_unbuilt():
    converted = from_keras(keras.layers.Embedding(VOCAB, DIM))
    assert type(converted) is Embedding and not converted.built


def test_subclasses_of_keras_embedding_are_kept():
    @keras.saving.register_keras_serializable(package="test_convert")
    class MyEmbedding(keras.layers.Embedding):
        pass

    model = sequential(MyEmbedding)
    assert type(from_keras(model).layers[0]) is MyEmbedding


# LoRA and quantized tables.


def lora_sequential(cls=keras.layers.Embedding, rank=2, alpha=6.0):
    model = fill(sequential(cls))
    layer = model.layers[0]
    layer.enable_lora(rank, lora_alpha=alpha)
    rng = np.random.default_rng(5)
    layer.lora_embeddings_a.assign(rng.standard_normal((VOCAB, rank)))
    layer.lora_embeddings_b.assign(rng.standard_normal((rank, DIM)))
    return model


def test_lora_from_keras():
    model = lora_sequential()
    before = snapshot(model)
    converted = from_keras(model)
    layer = converted.layers[0]
    assert type(layer) is Embedding
    assert layer.lora_enabled and layer.lora_rank == 2 and layer.lora_alpha == 6.0
    assert [w.name for w in layer.trainable_weights] == [
        "lora_embeddings_a",
        "lora_embeddings_b",
    ]
    assert_same_outputs(model, converted, atol=1e-5)
    assert_unchanged(model, before)


def test_lora_to_keras_and_back():
    model = lora_sequential(Embedding)
    converted = to_keras(model)
    layer = converted.layers[0]
    assert type(layer) is keras.layers.Embedding
    assert layer.lora_enabled and layer.lora_rank == 2 and layer.lora_alpha == 6.0
    assert_same_outputs(model, converted, atol=1e-5)
    assert_same_outputs(model, from_keras(converted), atol=1e-5)


QUANTIZED = [
    pytest.param("int8", None, id="int8"),
    pytest.param("int4", None, id="int4"),
    pytest.param("int4", 4, id="int4-block4"),
]


def quantize(model, mode, block):
    if block is None:
        model.quantize(mode)
    else:
        config = keras.quantizers.Int4QuantizationConfig(block_size=block)
        model.quantize(mode, config=config)
    return model


@IGNORE_NO_QUANTIZE
@pytest.mark.parametrize("mode, block", QUANTIZED)
def test_quantized_from_keras(mode, block):
    model = quantize(fill(sequential()), mode, block)
    before = snapshot(model)
    converted = from_keras(model)
    layer = converted.layers[0]
    assert type(layer) is Embedding
    assert layer.quantization_mode == mode
    assert sorted(w.name for w in layer.weights) == sorted(
        w.name for w in model.layers[0].weights
    )
    assert_same_outputs(model, converted)
    assert_unchanged(model, before)


@IGNORE_NO_QUANTIZE
@pytest.mark.parametrize("mode, block", QUANTIZED)
def test_quantized_round_trip(mode, block):
    model = quantize(fill(sequential(Embedding)), mode, block)
    converted = to_keras(model)
    assert type(converted.layers[0]) is keras.layers.Embedding
    assert converted.layers[0].quantization_mode == mode
    assert_same_outputs(model, converted)
    back = from_keras(converted)
    assert type(back.layers[0]) is Embedding
    assert_same_outputs(model, back)


@IGNORE_NO_QUANTIZE
def test_quantized_with_lora_from_keras():
    model = quantize(fill(sequential()), "int8", None)
    model.layers[0].enable_lora(2)
    model.layers[0].lora_embeddings_b.assign(np.ones((2, DIM)))
    converted = from_keras(model)
    assert converted.layers[0].lora_enabled
    assert_same_outputs(model, converted, atol=1e-5)


# What `to_keras` refuses.

OPTIONS = [
    pytest.param({"dropout": 0.2}, "dropout", id="dropout"),
    pytest.param({"max_norm": 1.0}, "max_norm", id="max_norm"),
    pytest.param({"sparse": True}, "sparse", id="sparse"),
    pytest.param({"device": "cpu"}, "device", id="device"),
    pytest.param({"padding_idx": 0}, "padding_idx", id="padding_idx"),
]


@pytest.mark.parametrize("kwargs, option", OPTIONS)
def test_to_keras_refuses_our_options(kwargs, option):
    if option not in inspect.signature(Embedding).parameters:
        pytest.skip(f"this Embedding has no `{option}` option yet")
    layer = Embedding(VOCAB, DIM, name="words", **kwargs)
    ids = keras.Input((LENGTH,), dtype="int32")
    model = keras.Model(ids, keras.layers.Dense(2)(layer(ids)))
    with pytest.raises(ValueError, match=f"'words'.*`{option}`"):
        to_keras(model)
    with pytest.raises(ValueError, match=f"'words'.*`{option}`"):
        to_keras(layer)
    # Nested: found inside an inner model too.
    outer_ids = keras.Input((LENGTH,), dtype="int32")
    outer = keras.Model(outer_ids, model(outer_ids))
    with pytest.raises(ValueError, match=f"'words'.*`{option}`"):
        to_keras(outer)


def test_to_keras_accepts_options_that_are_off():
    model = sequential(Embedding, dropout=0.0, sparse=False, input_length=LENGTH)
    assert type(to_keras(model).layers[0]) is keras.layers.Embedding


def test_bad_model_raises():
    with pytest.raises(ValueError, match="`model` must be"):
        from_keras(42)


def junk_file(directory):
    (directory / "fake.keras").write_bytes(b"not a zip")  # 9 bytes
    return "fake.keras"


def directory_named_keras(directory):
    (directory / "dir.keras").mkdir()
    return "dir.keras"


def zip_without_config(directory):
    with zipfile.ZipFile(directory / "other.keras", "w") as archive:
        archive.writestr("notes.txt", "not a model")
    return "other.keras"


BAD_FILES = {
    "junk": (junk_file, r"not a valid `\.keras` file \(not a zip archive; 9 bytes"),
    "missing": (lambda directory: "missing.keras", "there is no such file"),
    "directory": (directory_named_keras, "it is a directory"),
    "not-keras": (zip_without_config, r"a zip archive but not a `\.keras` file"),
}


@pytest.mark.parametrize("bad", BAD_FILES)
def test_bad_files_raise_value_error_naming_the_file(tmp_path, bad):
    make, reason = BAD_FILES[bad]
    path = tmp_path / make(tmp_path)
    for as_path in (str, lambda p: p):
        with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + reason):
            from_keras(as_path(path))


def test_inplace_refused_for_graph_models():
    with pytest.raises(ValueError, match="`inplace=True` applies to subclassed"):
        from_keras(sequential(), inplace=True)


# Subclassed models.


@keras.saving.register_keras_serializable(package="test_convert")
class Tagger(keras.Model):
    def __init__(self, layer_class="keras", **kwargs):
        super().__init__(**kwargs)
        self.layer_class = layer_class
        cls = Embedding if layer_class == "ours" else keras.layers.Embedding
        self.embed = cls(VOCAB, DIM)
        self.extra = [cls(VOCAB, DIM)]
        self.dense = keras.layers.Dense(2)

    def call(self, ids):
        return self.dense(self.embed(ids) + self.extra[0](ids))

    def get_config(self):
        return {**super().get_config(), "layer_class": self.layer_class}


class NoConfigTagger(keras.Model):
    def __init__(self, table):
        super().__init__()
        self.table = table
        self.embed = keras.layers.Embedding(VOCAB, DIM)

    def call(self, ids):
        return self.embed(ids)

    def get_config(self):
        raise NotImplementedError


def test_subclassed_model_is_copied():
    model = Tagger()
    model(IDS)
    fill(model)
    before = model.get_weights()
    converted = from_keras(model)
    assert converted is not model
    assert type(converted.embed) is Embedding
    assert type(converted.extra[0]) is Embedding
    assert len(converted.layers) == len(model.layers)
    assert len(converted.weights) == len(model.weights)
    assert_same_outputs(model, converted)
    assert type(model.embed) is keras.layers.Embedding
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    back = to_keras(converted)
    assert type(back.embed) is keras.layers.Embedding
    assert_same_outputs(model, back)


def test_subclassed_model_trains_after_conversion():
    model = Tagger()
    model.compile("sgd", "mse")
    targets = np.zeros((len(IDS), LENGTH, 2))
    model.fit(IDS, targets, epochs=1, verbose=0)
    converted = from_keras(model)
    assert converted.compiled
    converted.fit(IDS, targets, epochs=1, verbose=0)


def test_subclassed_model_without_config_needs_inplace():
    model = NoConfigTagger(table=np.zeros(3))
    model(IDS)
    with pytest.raises(ValueError, match="inplace=True"):
        from_keras(model)
    expected = predict(model)
    converted = from_keras(model, inplace=True)
    assert converted is model
    assert type(model.embed) is Embedding
    assert [type(layer) for layer in model.layers] == [Embedding]
    assert len(model.weights) == 1
    np.testing.assert_allclose(predict(model), expected, rtol=0, atol=1e-6)


def test_subclassed_model_nested_in_functional():
    inner = Tagger()
    ids = keras.Input((LENGTH,), dtype="int32")
    model = fill(keras.Model(ids, inner(ids)))
    converted = from_keras(model)
    assert type(converted.layers[-1].embed) is Embedding
    assert type(inner.embed) is keras.layers.Embedding
    assert_same_outputs(model, converted)


def test_reversible_embedding():
    ours = getattr(keras_embedding_plus, "ReversibleEmbedding", None)
    if ours is None:
        pytest.skip("keras_embedding_plus.ReversibleEmbedding does not exist yet")
    ids = keras.Input((LENGTH,), dtype="int32")
    layer = keras.layers.ReversibleEmbedding(VOCAB, DIM, tie_weights=False)
    x = layer(ids)
    model = fill(keras.Model(ids, [x, layer(x, reverse=True)]))
    converted = from_keras(model)
    assert type(converted.layers[1]) is ours
    assert_same_outputs(model, converted, atol=1e-5)
    back = to_keras(converted)
    assert type(back.layers[1]) is keras.layers.ReversibleEmbedding
    assert_same_outputs(model, back, atol=1e-5)
