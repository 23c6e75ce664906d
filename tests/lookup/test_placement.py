"""Device placement: `Embedding(device=...)` on every backend.

conftest.py gives JAX 8 virtual CPU devices and TensorFlow 2 logical CPUs, so a
table can live on another device than the rest of the model on this CPU machine.
"""

import contextlib
import re
import warnings

import keras
import numpy as np
import pytest
from keras import ops

from keras_embedding_plus import Embedding
from keras_embedding_plus.backends import placement as _placement

# Depends on the installed Keras (tox env keras-min runs it with the oldest).
pytestmark = pytest.mark.keras_version

BACKEND = keras.backend.backend()

# A device other than the one the model runs on (torch here has one: the CPU).
OTHER = {"jax": "cpu:2", "tensorflow": "cpu:1", "torch": "cpu"}[BACKEND]
VOCAB, DIM, LENGTH = 40, 4, 5


def to_np(x):
    return ops.convert_to_numpy(x)


def where(x):
    """Where an array lives, read with the backend's own API."""
    if BACKEND == "jax":
        (device,) = x.sharding.device_set
        kind = x.sharding.memory_kind
        return f"cpu:{device.id}" + ("" if kind in (None, "device") else f"/{kind}")
    if BACKEND == "tensorflow":
        return "cpu:" + x.device.rsplit(":", 1)[-1]
    return x.device.type


def table_where(layer):
    return where(layer.embeddings.value)


def compiled_step_warning(device):
    """JAX warns that a compiled step runs on the table's other device."""
    if BACKEND == "jax" and device not in (None, "host"):
        return pytest.warns(UserWarning, match="compiles a step for one device")
    return contextlib.nullcontext()


def data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, VOCAB, size=(16, LENGTH)).astype("int32")
    y = rng.normal(size=(16, LENGTH, 2)).astype("float32")
    return x, y


def model_with(layer):
    model = keras.Sequential(
        [keras.Input((LENGTH,), dtype="int32"), layer, keras.layers.Dense(2)]
    )
    model.compile(keras.optimizers.SGD(0.5), "mse")
    return model


def twin_models(device):
    """A model whose table is on `device` and the same model placed by default."""
    placed = model_with(Embedding(VOCAB, DIM, device=device, name="emb"))
    default = model_with(Embedding(VOCAB, DIM, name="emb"))
    default.set_weights(placed.get_weights())
    return placed, default


# --- the argument ----------------------------------------------------------


@pytest.mark.parametrize(
    "device",
    ["no_such_device:7", "cpu:x", "gpu:-1", ":0", 7, ["cpu"]],
    ids=["unknown-type", "bad-index", "negative", "no-type", "int", "list"],
)
def test_malformed_device_lists_visible_devices(device):
    with pytest.raises(ValueError) as info:
        Embedding(VOCAB, DIM, device=device)
    message = str(info.value)
    assert message.startswith("`device` must be None or a device string")
    assert f"Received: device={device!r}" in message
    for visible in _placement.visible_devices():
        assert repr(visible) in message
    assert repr(_placement.visible_devices()[0]) in message


def test_host_takes_no_index():
    with pytest.raises(ValueError, match=re.escape("Received: device='host:1'")):
        Embedding(VOCAB, DIM, device="host:1")


def test_malformed_device_in_config_is_type_error():
    config = Embedding(VOCAB, DIM).get_config()
    config["device"] = "no_such_device:7"
    with pytest.raises(TypeError, match="device='no_such_device:7'"):
        Embedding.from_config(config)


@pytest.mark.parametrize("device", ["CPU", "Cpu:0", " cpu "], ids=str.strip)
def test_device_is_canonical(device):
    assert Embedding(VOCAB, DIM, device=device).device == device.strip().lower()


@pytest.mark.skipif(
    "gpu:7" in _placement.visible_devices() or "cuda:7" in _placement.visible_devices(),
    reason="this machine has a gpu:7",
)
# "cuda" is known on every backend, so a config saved on torch loads anywhere.
@pytest.mark.parametrize("device", ["gpu:7", "cuda:7"])
def test_absent_device_warns_once_and_places_by_default(device):
    with pytest.warns(UserWarning, match=f"device='{device}'` is not available") as w:
        layer = Embedding(VOCAB, DIM, device=device, name="emb")
    assert len(w) == 1
    for visible in _placement.visible_devices():
        assert repr(visible) in str(w[0].message)
    assert layer.get_config()["device"] == device  # the intent survives saving
    if device == "cuda:7":
        return
    # No further warning: the layer builds, runs and trains as by default.
    placed, default = model_with(layer), model_with(Embedding(VOCAB, DIM))
    default.set_weights(placed.get_weights())
    x, y = data()
    np.testing.assert_allclose(
        placed.predict(x, verbose=0), default.predict(x, verbose=0), atol=1e-6
    )
    placed.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    default.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    np.testing.assert_allclose(
        to_np(layer.embeddings), to_np(default.layers[0].embeddings), atol=1e-6
    )


def test_device_in_config():
    assert Embedding(VOCAB, DIM).get_config()["device"] is None
    layer = Embedding(VOCAB, DIM, device=OTHER)
    config = layer.get_config()
    assert config["device"] == OTHER
    assert Embedding.from_config(config).device == OTHER


# --- where the table and the rows live -------------------------------------


@pytest.mark.parametrize("device", [OTHER, "host"])
def test_table_on_device_rows_on_model_device(device):
    layer = Embedding(VOCAB, DIM, device=device)
    layer.build()
    expected_table = {
        ("jax", "host"): "cpu:0/pinned_host",
        ("tensorflow", "host"): "cpu:0",
        ("torch", "host"): "cpu",
    }.get((BACKEND, device), OTHER)
    assert table_where(layer) == expected_table
    x, _ = data()
    outputs = layer(x)
    np.testing.assert_array_equal(to_np(outputs), to_np(layer.embeddings)[x])
    # Only the looked-up rows came to the device that runs the model.
    assert where(outputs) == {"torch": "cpu"}.get(BACKEND, "cpu:0")
    assert tuple(outputs.shape) == (16, LENGTH, DIM)


@pytest.mark.parametrize("device", [OTHER, "host"])
def test_fit_and_predict_match_default_placement(device):
    placed, default = twin_models(device)
    initial = placed.get_weights()[0]
    x, y = data()
    table_before = table_where(placed.layers[0])
    with compiled_step_warning(device):  # once per layer
        np.testing.assert_allclose(
            placed.predict(x, verbose=0), default.predict(x, verbose=0), atol=1e-6
        )
        placed.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0)
    default.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0)
    # Gradients flowed back to the placed table: it trained exactly the same.
    for a, b in zip(placed.get_weights(), default.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert not np.allclose(placed.get_weights()[0], initial)
    # The table is still where it was asked to be.
    assert table_where(placed.layers[0]) == table_before


@pytest.mark.parametrize(
    "option",
    [{"lora_rank": 2}, {"max_norm": 1.0}, {"sparse": True}, {"quantize": "int8"}],
    ids=["lora", "max_norm", "sparse", "int8"],
)
def test_host_table_with_other_options_trains_as_the_default(option):
    if BACKEND == "jax" and "sparse" in option:
        with pytest.raises(ValueError, match="cannot be combined with `sparse=True`"):
            Embedding(VOCAB, DIM, device="host", **option)
        return
    kwargs = {k: v for k, v in option.items() if k != "quantize"}

    def build(device):
        layer = Embedding(VOCAB, DIM, device=device, **kwargs)
        layer.build()
        if "quantize" in option:
            layer.quantize(option["quantize"])
        return model_with(layer)

    placed, default = build("host"), build(None)
    placed.set_weights(default.get_weights())
    x, y = data()
    np.testing.assert_allclose(
        placed.predict(x, verbose=0), default.predict(x, verbose=0), atol=1e-6
    )
    placed.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    default.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    for a, b in zip(placed.get_weights(), default.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_host_table_regularizer_and_constraint_match_default():
    def build(device):
        layer = Embedding(
            VOCAB,
            DIM,
            device=device,
            embeddings_regularizer=keras.regularizers.L2(0.1),
            embeddings_constraint="non_neg",
        )
        return model_with(layer)

    placed, default = build("host"), build(None)
    default.set_weights(placed.get_weights())
    np.testing.assert_allclose(
        to_np(placed.losses[0]), to_np(default.losses[0]), rtol=1e-6
    )
    x, y = data()
    placed.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    default.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    for a, b in zip(placed.get_weights(), default.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert placed.get_weights()[0].min() >= 0  # the constraint ran


def test_default_path_does_not_touch_placement(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the placement lookup ran")

    monkeypatch.setattr(_placement, "take", fail)
    x, _ = data()
    Embedding(VOCAB, DIM)(x)
    with pytest.raises(AssertionError, match="the placement lookup ran"):
        Embedding(VOCAB, DIM, device=OTHER)(x)


def test_keras_device_scope_on_every_backend():
    with keras.device(OTHER):
        layer = Embedding(VOCAB, DIM, name="emb")
        layer.build()
    assert table_where(layer) == OTHER
    placed = model_with(layer)
    default = model_with(Embedding(VOCAB, DIM))
    default.set_weights(placed.get_weights())
    x, y = data()
    with compiled_step_warning(OTHER):
        placed.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    default.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    np.testing.assert_allclose(
        placed.predict(x, verbose=0), default.predict(x, verbose=0), atol=1e-5
    )
    assert table_where(layer) == OTHER


def test_save_and_load_keep_the_placement(tmp_path):
    placed, _ = twin_models("host")
    x, _ = data()
    path = str(tmp_path / "placed.keras")
    placed.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.layers[0].device == "host"
    assert table_where(loaded.layers[0]) == table_where(placed.layers[0])
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), placed.predict(x, verbose=0), atol=1e-6
    )


# --- TensorFlow ------------------------------------------------------------


@pytest.mark.skipif(BACKEND != "tensorflow", reason="`tf.device` is TensorFlow's")
def test_tf_device_docs_pattern():
    import tensorflow as tf

    with tf.device("cpu:1"):
        layer = Embedding(VOCAB, DIM, name="emb")
        layer.build()
    assert layer.embeddings.value.device.endswith("device:CPU:1")
    placed = model_with(layer)
    default = model_with(Embedding(VOCAB, DIM))
    default.set_weights(placed.get_weights())
    x, y = data()
    placed.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    default.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    np.testing.assert_allclose(
        placed.predict(x, verbose=0), default.predict(x, verbose=0), atol=1e-5
    )
    assert layer.embeddings.value.device.endswith("device:CPU:1")


@pytest.mark.skipif(BACKEND != "tensorflow", reason="`tf.GradientTape` is TF's")
def test_tf_gradient_lands_on_table_device():
    import tensorflow as tf

    layer = Embedding(VOCAB, DIM, device="cpu:1")
    x = tf.constant([[1, 2, 2]])
    with tf.GradientTape() as tape:
        outputs = layer(x)
        loss = tf.reduce_sum(outputs)
    assert outputs.device.endswith("CPU:0")
    (grad,) = tape.gradient(loss, [layer.embeddings.value])
    dense = tf.convert_to_tensor(grad)
    expected = np.zeros((VOCAB, DIM), "float32")
    expected[1], expected[2] = 1.0, 2.0
    np.testing.assert_array_equal(dense.numpy(), expected)


# --- JAX -------------------------------------------------------------------


@pytest.mark.skipif(BACKEND != "jax", reason="committed JAX arrays are JAX's")
def test_jax_rows_move_to_the_ids_device_and_gradients_back():
    import jax

    layer = Embedding(VOCAB, DIM, device="cpu:2")
    layer.build()
    devices = jax.devices()
    ids = jax.device_put(np.array([[1, 2, 2]], "int32"), devices[5])
    with keras.device("cpu:5"):  # the rest of the model lives on cpu:5
        dense = keras.layers.Dense(2)
        dense.build((None, 3, DIM))
    outputs = layer(ids)
    assert outputs.sharding.device_set == {devices[5]}
    assert layer.embeddings.value.sharding.device_set == {devices[2]}
    assert dense.kernel.value.sharding.device_set == {devices[5]}
    assert dense(outputs).sharding.device_set == {devices[5]}

    def loss(table):
        outputs, _ = layer.stateless_call([table], [], ids)
        return outputs.sum()

    grad = jax.grad(loss)(layer.embeddings.value)
    assert grad.sharding.device_set == {devices[2]}
    expected = np.zeros((VOCAB, DIM), "float32")
    expected[1], expected[2] = 1.0, 2.0
    np.testing.assert_array_equal(np.asarray(grad), expected)


@pytest.mark.skipif(BACKEND != "jax", reason="memory kinds are JAX's")
def test_jax_host_memory_stays_through_fit_predict_and_load(tmp_path):
    placed, default = twin_models("host")
    table = placed.layers[0].embeddings
    assert table.value.sharding.memory_kind == "pinned_host"
    x, y = data()
    placed.compile("adam", "mse")
    placed.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert table.value.sharding.memory_kind == "pinned_host"
    # Adam's two slots for the table live with it; the Dense layer's do not.
    kinds = [v.value.sharding.memory_kind for v in placed.optimizer.variables]
    assert kinds.count("pinned_host") == 2 and "device" in kinds
    placed.predict(x, verbose=0)
    assert table.value.sharding.memory_kind == "pinned_host"
    placed.set_weights(default.get_weights())
    assert table.value.sharding.memory_kind == "pinned_host"
    path = str(tmp_path / "host.keras")
    placed.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.layers[0].embeddings.value.sharding.memory_kind == "pinned_host"


@pytest.mark.skipif(BACKEND != "jax", reason="JAX compiles a step for one device")
def test_jax_compiled_step_runs_on_the_tables_device():
    placed, _ = twin_models("cpu:2")
    x, y = data()
    with pytest.warns(UserWarning, match=r"runs where the embedding table lives") as w:
        placed.fit(x, y, epochs=1, batch_size=8, verbose=0)
        placed.predict(x, verbose=0)
    assert len(w) == 1  # once per layer
    assert table_where(placed.layers[0]) == "cpu:2"
    assert where(placed.layers[1].kernel.value) == "cpu:2"


@pytest.mark.skipif(BACKEND != "jax", reason="the JAX default device")
def test_jax_table_on_the_default_device_does_not_warn():
    placed, default = twin_models("cpu:0")
    x, _ = data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        placed.predict(x, verbose=0)
    assert table_where(placed.layers[0]) == "cpu:0"


# --- PyTorch ---------------------------------------------------------------


@pytest.mark.skipif(BACKEND != "torch", reason="torch devices")
def test_torch_moves_ids_to_the_table_and_only_rows_back():
    import torch
    from torch.overrides import TorchFunctionMode

    moves = []

    class RecordMoves(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.Tensor.to:
                moves.append((tuple(args[0].shape), torch.device(args[1])))
            return func(*args, **kwargs)

    table = keras.Variable(np.arange(12.0, dtype="float32").reshape(6, 2))
    ids = torch.tensor([[1, 5, 5]])
    with RecordMoves():
        rows = _placement.take(table, ids, torch.device("cpu"))
    # The ids go to the table's device and the rows to the ids' device; the
    # (6, 2) table never moves. On a CUDA machine both are real copies.
    assert moves == [((1, 3), table.value.device), ((1, 3, 2), ids.device)]
    np.testing.assert_array_equal(to_np(rows), to_np(table)[[[1, 5, 5]]])


@pytest.mark.skipif(BACKEND != "torch", reason="torch autograd")
def test_torch_gradient_flows_back_to_the_table():
    layer = Embedding(VOCAB, DIM, device="cpu")
    layer.build()
    outputs = layer(np.array([[1, 2, 2]]))
    outputs.sum().backward()
    expected = np.zeros((VOCAB, DIM), "float32")
    expected[1], expected[2] = 1.0, 2.0
    grad = layer.embeddings.value.grad
    np.testing.assert_array_equal(grad.cpu().numpy(), expected)


def _cuda_available():
    if BACKEND != "torch":
        return False
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(not _cuda_available(), reason="needs CUDA")
def test_torch_table_on_cpu_model_on_gpu():
    placed, default = twin_models("cpu")
    assert table_where(placed.layers[0]) == "cpu"
    assert placed.layers[1].kernel.value.device.type == "cuda"
    x, y = data()
    outputs = placed(x)
    assert outputs.device.type == "cuda"
    placed.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    default.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    for a, b in zip(placed.get_weights(), default.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert table_where(placed.layers[0]) == "cpu"
