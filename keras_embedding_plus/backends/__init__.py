"""The backend-specific code: one module per backend, chosen once at import.

As keras-rs's `distributed_embedding.py` does, `keras.backend.backend()` is read
here, once; `native` is the module of the running backend and the rest of the
package calls it (`native.take(...)`) with no `if backend == ...` of its own.
Every backend module defines each name of `FUNCTIONS` (a test checks it):

* the index policy: `is_concrete`, `flat_values`, `with_flat_values`,
  `ids_all_valid`, `take`, `zero_invalid`;
* row-sparse gradients: `sparse_take`, `capturing`, `is_row_sparse`,
  `densify_gradient`, `unique_rows`, `gather_rows`, `scatter`, `subtract_scaled`,
  `scale_gradient`, `with_rows`;
* placement: `DEVICE_TYPES`, `visible_devices`, `resolve_device`,
  `build_placement`, `build_scope`, `pin`, `placed_take`, `fetch`;
* `add_matmul` (LoRA's delta), `snapshot` (a variable's value, kept through
  later assigns), `write_rows` / `read_rows` / `fill_rows` (rows of a variable set, in
  place where `writes_rows_in_place()`, read, and set in a table being built
  where `builds_by_blocks()`: big tables built, saved and loaded by blocks,
  `_chunks`)
  and `SPARSE_WITH_MIXED_POLICY`;
* pooled lookups (`EmbeddingBag`): `sparse_bags` (a sparse tensor's ids and
  their bags), `segment` (sum / max per bag), `embedding_bag` (a fused kernel,
  or None where the backend has none).
"""

import importlib

import keras

FUNCTIONS = (
    "is_concrete",
    "flat_values",
    "with_flat_values",
    "ids_all_valid",
    "take",
    "zero_invalid",
    "sparse_take",
    "capturing",
    "is_row_sparse",
    "densify_gradient",
    "unique_rows",
    "gather_rows",
    "scatter",
    "subtract_scaled",
    "scale_gradient",
    "with_rows",
    "DEVICE_TYPES",
    "visible_devices",
    "resolve_device",
    "build_placement",
    "build_scope",
    "pin",
    "placed_take",
    "fetch",
    "add_matmul",
    "snapshot",
    "write_rows",
    "read_rows",
    "fill_rows",
    "builds_by_blocks",
    "writes_rows_in_place",
    "SPARSE_WITH_MIXED_POLICY",
    "sparse_bags",
    "segment",
    "embedding_bag",
)
BACKENDS = ("tensorflow", "jax", "torch")

NAME = keras.backend.backend()
if NAME not in BACKENDS:
    raise ImportError(
        f"keras_embedding_plus runs on the Keras backends {BACKENDS}. "
        f"Received: KERAS_BACKEND={NAME!r}."
    )
native = importlib.import_module(f"{__name__}.{NAME}")
