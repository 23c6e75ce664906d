"""Export for serving (item 7): TF SavedModel, ONNX, torch.export.

Which backend / format pairs Keras 3.15 supports, and what each needs:

* `tf_saved_model`: TensorFlow (tested); JAX needs TensorFlow in the environment
  (tested where importable; the tox `jax` env has none); PyTorch needs TensorFlow
  and `torch_xla` (skipped). `keras.layers.TFSMLayer` runs on TensorFlow only.
* `onnx`: TensorFlow through `tf2onnx` and PyTorch through `torch.onnx` (tested
  with `onnxruntime`; PyTorch exports a fixed batch size, as Keras documents); JAX
  needs `jax2onnx` (skipped: it pulls flax, orbax and tensorstore).
* `torch` (`torch.export`): PyTorch only (tested).
"""

import importlib.util

import keras
import pytest

from keras_embedding_plus.testing.saving import (
    Embedding,
    assert_same_outputs,
    fill_weights,
    ids,
    outputs,
)

# Depends on the installed Keras (tox env keras-min runs it with the oldest).
pytestmark = pytest.mark.keras_version

BACKEND = keras.backend.backend()


def _has(module):
    return importlib.util.find_spec(module) is not None


def _model():
    inputs = keras.Input((6,), dtype="int32", name="ids")
    x = Embedding(20, 4, mask_zero=True, name="emb")(inputs)
    x = keras.layers.GlobalAveragePooling1D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    fill_weights(model, seed=3)
    model.predict(ids((2, 6), 20), verbose=0)  # The only batch size seen: 2.
    return model


UNSEEN = ids((7, 6), 20, seed=5)

# torch 2.13's exporters warn about their own pytree use (third-party noise).
TORCH_PYTREE_NOISE = pytest.mark.filterwarnings(
    r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning"
)

SAVED_MODEL_REASON = {
    "jax": "tf_saved_model export on JAX needs TensorFlow (jax2tf), which the "
    "jax environment does not install",
    "torch": "tf_saved_model export on PyTorch needs TensorFlow and torch_xla, "
    "which the torch environment does not install",
}


@pytest.mark.skipif(
    BACKEND == "torch" or not _has("tensorflow"),
    reason=SAVED_MODEL_REASON.get(BACKEND, "TensorFlow is not installed"),
)
def _export_saved_model(path):
    model = _model()
    model.export(path, format="tf_saved_model", verbose=False)
    return outputs(model, UNSEEN)


# Keras's JAX export passes jax2tf an argument JAX 0.10 deprecates.
@pytest.mark.filterwarnings(
    "ignore:The `native_serialization` parameter is deprecated:DeprecationWarning"
)
@pytest.mark.skipif(
    BACKEND == "torch" or not _has("tensorflow"),
    reason=SAVED_MODEL_REASON.get(BACKEND, "TensorFlow is not installed"),
)
def test_tf_saved_model_reloads_for_an_unseen_batch_size(tmp_path):
    import tensorflow as tf

    path = str(tmp_path / "saved_model")
    expected = _export_saved_model(path)
    restored = tf.saved_model.load(path)
    assert_same_outputs(expected, [restored.serve(tf.constant(UNSEEN)).numpy()])


@pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="keras.layers.TFSMLayer runs on the TensorFlow backend only",
)
def test_tf_saved_model_reloads_as_tfsm_layer(tmp_path):
    path = str(tmp_path / "saved_model")
    expected = _export_saved_model(path)
    served = keras.layers.TFSMLayer(path, call_endpoint="serve")
    assert_same_outputs(expected, [keras.ops.convert_to_numpy(served(UNSEEN))])


ONNX_REASON = {
    "jax": "ONNX export on JAX needs jax2onnx, which the jax environment does "
    "not install (it pulls flax, orbax and tensorstore)",
}


@pytest.mark.skipif(
    BACKEND == "jax" or not _has("onnxruntime"),
    reason=ONNX_REASON.get(BACKEND, "onnxruntime is not installed"),
)
@TORCH_PYTREE_NOISE
def test_onnx_export_runs_in_onnxruntime(tmp_path):
    import onnxruntime

    model = _model()
    path = str(tmp_path / "model.onnx")
    kwargs = {}
    if BACKEND == "torch":
        # Keras's PyTorch ONNX export has no dynamic batch axis (its TorchScript
        # route fails in Keras's shape code, for `keras.layers.Embedding` too).
        kwargs["input_signature"] = [keras.InputSpec(shape=(7, 6), dtype="int32")]
    model.export(path, format="onnx", verbose=False, **kwargs)
    session = onnxruntime.InferenceSession(path)
    (feed,) = session.get_inputs()
    (received,) = session.run(None, {feed.name: UNSEEN})
    assert_same_outputs(outputs(model, UNSEEN), [received])


@pytest.mark.skipif(
    BACKEND != "torch", reason="format='torch' (torch.export) needs PyTorch"
)
@TORCH_PYTREE_NOISE
def test_torch_export_reloads(tmp_path):
    import torch

    model = _model()
    path = str(tmp_path / "model.pt2")
    # Keras's torch export turns the `None` batch axis into 1: give the size.
    signature = [keras.InputSpec(shape=(7, 6), dtype="int32")]
    model.export(path, format="torch", verbose=False, input_signature=signature)
    program = torch.export.load(path)
    received = program.module()(torch.as_tensor(UNSEEN))
    assert_same_outputs(outputs(model, UNSEEN), [received.detach().numpy()])
