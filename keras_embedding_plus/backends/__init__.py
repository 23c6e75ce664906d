"""The backend-specific code: one folder per backend, one module per concern.

As Keras splits `keras/src/backend/<name>/{core,nn,numpy,sparse}.py`, each of
`jax/`, `tensorflow/` and `torch/` holds:

* `core`: `value_of` (a variable's native array), `add_matmul` (LoRA's delta
  added to the rows, in place where it can), `smallest` (the indices of the
  k smallest values, by the backend's fastest way) and `leading` (the first n
  entries where compiled steps take data-dependent shapes);
* `ids`: the index policy's ops: `is_concrete`, `traces_numpy`,
  `device_dtype`, `NARROWING_REMEDY`, `comparable`, `flat_values`,
  `with_flat_values`, `ids_all_valid`, `take`, `zero_invalid`,
  `SEARCH_UNDER_XLA` (whether `searchsorted` stays a search under XLA), and
  the count of invalid ids met in compiled calls: `new_counter`, `count_invalid`,
  `read_count`, `reset_count`;
* `sparse`: row-sparse gradients: `sparse_take`, `trains_densely`, `is_row_sparse`,
  `densify_gradient`, `unique_rows`, `gather_rows`, `scatter`, `subtract_scaled`,
  `scale_gradient`, `with_rows`, `SPARSE_WITH_MIXED_POLICY` (JAX also
  `RowCapture` and `IndexedRows`, its trainer's machinery);
* `placement`: `DEVICE_TYPES`, `visible_devices`, `resolve_device`,
  `build_placement`, `build_scope`, `pin`, `placed_take`, `fetch`;
* `blocks`: `snapshot`, `write_rows`, `read_rows`, `fill_rows`,
  `writes_rows_in_place`, `builds_by_blocks` (big tables built, saved and loaded
  by blocks);
* `pooling`: `sparse_bags`, `segment`, `embedding_bag` (a fused kernel, or None
  where the backend has none).

As keras-rs's `distributed_embedding.py` does, `keras.backend.backend()` is read
here, once: `core`, `ids`, `sparse`, `placement`, `blocks` and `pooling` below are
the running backend's modules, and the rest of the package calls their functions
by their own names (`backends.sparse.scatter(...)`), with no
`if backend == ...` of its own. A test checks that every backend's module of a
concern defines the same public names.
"""

import importlib

import keras

BACKENDS = ("tensorflow", "jax", "torch")
CONCERNS = ("core", "ids", "sparse", "placement", "blocks", "pooling")

NAME = keras.backend.backend()
if NAME not in BACKENDS:
    raise ImportError(
        f"keras_embedding_plus runs on the Keras backends {BACKENDS}. "
        f"Received: KERAS_BACKEND={NAME!r}."
    )


def _concern(name):
    return importlib.import_module(f"{__name__}.{NAME}.{name}")


core = _concern("core")
ids = _concern("ids")
sparse = _concern("sparse")
placement = _concern("placement")
blocks = _concern("blocks")
pooling = _concern("pooling")
