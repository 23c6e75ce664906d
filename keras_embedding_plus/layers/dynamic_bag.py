"""`DynamicEmbeddingBag`: `DynamicEmbedding`'s growing table behind
`EmbeddingBag`'s combiners."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_embedding_plus.layers import arguments as _args
from keras_embedding_plus.layers.dynamic import DynamicEmbedding
from keras_embedding_plus.lookup import pooling


@keras.saving.register_keras_serializable(package="keras_embedding_plus")
class DynamicEmbeddingBag(DynamicEmbedding):
    """`DynamicEmbedding`'s growing table behind `EmbeddingBag`'s combiners:
    multi-hot features of unbounded keys, pooled in one layer.

    Keys are admitted, evicted and looked up as `DynamicEmbedding` does (every
    key of every bag is a sighting); then each bag's rows are pooled as
    `EmbeddingBag` pools them. Keys not held (and `mask_key` with `mask_zero`)
    count nowhere, weights included: a bag of no held key pools to zeros.

    Args:
        output_dim: Integer. Dimension of the dense embedding.
        capacity: Integer. The number of rows: the most keys held at once.
        combiner: `"sum"`, `"mean"` (default), `"sqrtn"` or `"max"`, as
            `EmbeddingBag`'s.
        **kwargs: `DynamicEmbedding`'s other arguments.

    Input shape:
        Dense keys `(batch_size, ..., L)`, pooled over their last axis;
        `(values, offsets)`, as `torch.nn.functional.embedding_bag` takes
        them; `{"values": v, "lengths": l}`; a `tf.RaggedTensor`; or a sparse
        tensor. Optional `weights`, one per key, in the same form (not with
        `"max"`).

    Output shape:
        `(batch_size, ..., output_dim)`; `(number of bags, output_dim)` for the
        flat forms.
    """

    def __init__(
        self, output_dim: int, capacity: int, combiner: str = "mean", **kwargs: Any
    ) -> None:
        self.combiner = pooling.check_combiner(combiner)
        super().__init__(output_dim, capacity, **kwargs)
        self.supports_masking = False

    def call(self, inputs, weights=None, training=None):
        pooling.check_combiner_weights(self.combiner, weights)
        combiner = pooling.COMBINERS[self.combiner]
        bags = pooling.flat_bags(inputs, weights)
        if bags is None:
            keys = self._keys_of(inputs)
            if len(keys.shape) < 2:
                raise ValueError(
                    "Dense bags must have shape `(batch, ..., L)`: pooled over "
                    f"their last axis. Received: keys of shape {tuple(keys.shape)}."
                )
            weights = pooling.dense_weights(keys, weights)
            rows, held = self._rows(keys, training)
            out = pooling.combine_dense(rows, held, weights, combiner)
            return ops.cast(out, self.compute_dtype)
        rows, held = self._rows(bags.values, training)
        in_a_bag = bags.in_a_bag()
        if in_a_bag is not None:
            held = ops.logical_and(held, in_a_bag)
        out = pooling.combine_flat(rows, held, bags.weights, bags, combiner)
        if len(bags.outer_shape) != 1:
            out = ops.reshape(out, (*bags.outer_shape, out.shape[-1]))
        return ops.cast(out, self.compute_dtype)

    def compute_mask(self, inputs, mask=None):
        return None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        _args.check_bag_call(args, kwargs)
        return super().__call__(*args, **kwargs)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.output_dim)

    def compute_output_spec(self, inputs, weights=None, training=None):
        if isinstance(inputs, (tuple, list)):
            shape = (inputs[1].shape[0], self.output_dim)
        elif isinstance(inputs, dict):
            pooling.check_lengths_keys(inputs)
            shape = (inputs["lengths"].shape[0], self.output_dim)
        else:
            shape = self.compute_output_shape(inputs.shape)
        return keras.KerasTensor(shape, dtype=self.compute_dtype)

    def get_config(self) -> dict:
        config = super().get_config()
        config["combiner"] = self.combiner
        return config
