"""JAX: pooled lookups of `EmbeddingBag` (sparse ids as bags, segment
reductions)."""

import jax.numpy as jnp
import numpy as np
from keras import ops


def sparse_bags(ids, weights):
    """`(values, segments, num_segments, outer_shape, weights)` of a `BCOO`
    `(batch, ..., L)`: each stored id with its bag's flat index."""
    if type(ids).__name__ != "BCOO":
        raise ValueError(
            "Sparse ids on JAX must be a `jax.experimental.sparse.BCOO`. "
            f"Received: {type(ids).__name__}."
        )
    if ids.n_batch or ids.n_dense:
        raise ValueError(
            "`BCOO` ids must have no batch or dense dimensions "
            f"(n_batch=0, n_dense=0). Received: n_batch={ids.n_batch}, "
            f"n_dense={ids.n_dense}."
        )
    outer = tuple(ids.shape[:-1])
    if weights is not None:
        weights = weights.data
    columns = tuple(ids.indices[:, axis] for axis in range(len(outer)))
    segments = jnp.ravel_multi_index(columns, outer, mode="clip").astype("int32")
    return ids.data, segments, int(np.prod(outer)), outer, weights


def segment(data, segments, num_segments, how, sorted=False):
    if how == "sum":
        return ops.segment_sum(data, segments, num_segments=num_segments, sorted=sorted)
    return ops.segment_max(data, segments, num_segments=num_segments, sorted=sorted)


embedding_bag = None  # No fused kernel: rows are gathered, then pooled.
