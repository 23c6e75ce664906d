"""The padding mask of `mask_zero=True`: `ids != 0`, as an op every loader finds.

On symbolic inputs `padding_mask` goes through `PaddingMask`, an operation
registered with this package, because a Functional model records the op that made
a mask as a node of its graph: Keras's own `Embedding` records
`keras.ops.not_equal`, whose class (`NotEqual`) the legacy `.h5` loader cannot
find ("Unknown layer: 'NotEqual'"). `PaddingMask` is found by every loader once
`keras_embedding_plus` is imported (its registered name,
`keras_embedding_plus>PaddingMask`, is what saved files hold).
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_embedding_plus")
class PaddingMask(keras.Operation):
    """`ids != 0`: the mask of an `Embedding(mask_zero=True)`."""

    def call(self, ids):
        return ops.not_equal(ids, 0)

    def compute_output_spec(self, ids):
        return keras.KerasTensor(ids.shape, dtype="bool")


def padding_mask(ids):
    """`ids != 0`, recorded as a `PaddingMask` node when `ids` is symbolic."""
    if isinstance(ids, keras.KerasTensor):
        return PaddingMask()(ids)
    return ops.not_equal(ids, 0)
