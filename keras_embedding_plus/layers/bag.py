"""`EmbeddingBag`: pooled multi-hot lookups on the lookup pipeline of `Embedding`."""

from typing import Any

import keras
from numpy.typing import ArrayLike

from keras_embedding_plus.layers import arguments as _args
from keras_embedding_plus.layers.embedding import Embedding
from keras_embedding_plus.lookup import index_policy
from keras_embedding_plus.lookup import pooling as _pooling


@keras.saving.register_keras_serializable(package="keras_embedding_plus")
class EmbeddingBag(Embedding):
    """Looks up a bag of ids per example and pools their rows.

    For recommenders and bag-of-words models: many ids per example, pooled into
    one vector, without the `(batch, length, output_dim)` tensor of
    `Embedding` -> mask -> `GlobalAveragePooling1D` where the backend has a fused
    op (PyTorch's `embedding_bag`). Takes every argument of `Embedding`
    (initializers, regularizers and constraints, the index policy, quantization,
    LoRA, `max_norm`, `dropout`, `device`, `sparse`), which act on the looked-up
    rows as they do there; then pools them.

    `bag(ids)` or `bag(ids, weights=w)`, with `ids` one of:

    * dense `(batch, ..., L)` ids, pooled over the last axis; padding is
      `padding_idx` (and 0 with `mask_zero=True`);
    * `(values, offsets)`, as `torch.nn.functional.embedding_bag` takes them:
      1-D ids, and the start of each bag in them (starting at 0);
    * `{"values": values, "lengths": lengths}`: 1-D ids, and the number of ids
      of each bag (bag after bag, as TorchRec's jagged tensors hold them). The
      values after the last bag (from `sum(lengths)` on) are in no bag: they
      count nowhere, whatever their ids and weights, with every combiner. This
      is the form `keras_embedding_plus.BagDataset` batches bags in, padded to
      a few sizes of `values`;
    * a `tf.RaggedTensor` `(batch, None)` (TensorFlow);
    * a sparse `(batch, ..., L)` tensor: `tf.SparseTensor` (TensorFlow), `BCOO`
      (JAX), a sparse COO tensor (PyTorch, eager calls). Its stored entries
      are the ids; entries not stored are not in the bag.

    `weights` (optional): one float per id, in the form of `ids` (dense of the
    same shape; 1-D, one per value, for `(values, offsets)` and
    `{"values", "lengths"}`; ragged or sparse with the same layout).

    Combiners (`w` the weights, 1 when none are given), as TensorFlow's
    `safe_embedding_lookup_sparse` defines them:

    * `"sum"`: `sum(w * row)`;
    * `"mean"`: `sum(w * row) / sum(w)`;
    * `"sqrtn"`: `sum(w * row) / sqrt(sum(w ** 2))`;
    * `"max"`: the element-wise maximum of the rows. Weights are refused with
      `ValueError` (a weighted maximum has no agreed meaning).

    Padding ids, and ids masked by `mask_zero`, count nowhere: not in the sum,
    not in the denominators. An empty bag (or one whose denominator is 0) pools
    to zeros. Negative weights are used as given (TensorFlow's
    `safe_embedding_lookup_sparse` drops ids with weights <= 0).

    Invalid ids follow `Embedding`'s index policy: eager calls raise
    `ValueError` naming the id; inside compiled functions they count like
    padding (nowhere). The output carries no mask.

    Args:
        input_dim: Integer. Size of the vocabulary.
        output_dim: Integer. Dimension of the pooled vectors.
        combiner: String, one of `"sum"`, `"mean"` (default), `"sqrtn"`, `"max"`.
        padding_idx: Optional integer (negative counts from the end): the id
            that pads bags. Its row is built as zeros and never trains, as in
            `Embedding`, and it counts in no bag.
        **kwargs: Every other argument of `Embedding`.

    Input shape:
        Dense `(batch_size, ..., L)` ids, or one of the forms above.

    Output shape:
        `(batch_size, ..., output_dim)` (`(len(offsets), output_dim)` for
        `(values, offsets)`, `(len(lengths), output_dim)` for
        `{"values", "lengths"}`).

    Example:

    >>> bag = EmbeddingBag(1000, 8, combiner="mean", padding_idx=0)
    >>> ids = np.array([[4, 7, 0], [9, 0, 0]])
    >>> bag(ids).shape
    (2, 8)
    >>> bag(ids, weights=np.array([[1.0, 2.0, 0.0], [0.5, 0.0, 0.0]])).shape
    (2, 8)
    """

    # Padding ids weigh 0 in every bag (and are masked out of "max"), so no
    # gradient reaches their rows: no `stop_gradient` pass over the rows needed.
    _freezes_padding_rows = False

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        combiner: str = "mean",
        padding_idx: int | None = None,
        **kwargs: Any,
    ) -> None:
        combiner = _pooling.check_combiner(combiner)
        super().__init__(input_dim, output_dim, padding_idx=padding_idx, **kwargs)
        self.combiner = combiner
        self.supports_masking = False

    @property
    def combiner(self):
        """The combiner's name, one of `_pooling.COMBINERS` (checked when set)."""
        return self._combiner

    @combiner.setter
    def combiner(self, value):
        self._combiner = _pooling.check_combiner(value)

    def __call__(self, *args, **kwargs):
        _args.check_bag_call(args, kwargs)
        return super().__call__(*args, **kwargs)

    def call(
        self,
        inputs: ArrayLike | tuple[ArrayLike, ArrayLike] | dict[str, ArrayLike],
        weights: ArrayLike | None = None,
        training: bool | None = None,
        reverse: bool = False,
    ) -> ArrayLike:
        if reverse:
            return self.attend(inputs)
        self._check_sparse_training(training)
        excluded = [] if self.padding_idx is None else [self.padding_idx]
        if self.mask_zero and self.padding_idx != 0:
            excluded.append(0)
        pooled = _pooling.pool(
            self._lookup,
            inputs,
            weights,
            input_dim=self.input_dim,
            excluded=excluded,
            combiner=self.combiner,
            training=training,
        )
        return keras.ops.cast(pooled, self.compute_dtype)

    def _checked_host_ids(self, inputs):
        # `(values, offsets)`: the values are the ids (offsets index them).
        if isinstance(inputs, (tuple, list)) and len(inputs) == 2:
            values, offsets = inputs
            values = index_policy.check_host_ids(values, self.input_dim)
            return type(inputs)((values, offsets))
        return super()._checked_host_ids(inputs)

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.output_dim)

    def compute_output_spec(self, inputs, weights=None, training=None, reverse=False):
        if reverse:
            return super().compute_output_spec(inputs, reverse=True)
        if isinstance(inputs, (tuple, list)):
            values, offsets = inputs
            index_policy.ids_dtype(values)
            shape = (offsets.shape[0], self.output_dim)
        elif isinstance(inputs, dict):
            _pooling.check_lengths_keys(inputs)
            index_policy.ids_dtype(inputs["values"])
            shape = (inputs["lengths"].shape[0], self.output_dim)
        else:
            index_policy.ids_dtype(inputs)
            shape = self.compute_output_shape(inputs.shape)
        return keras.KerasTensor(shape, dtype=self.compute_dtype)

    def quantize(self, mode=None, type_check=True, config=None):
        # The pooling reads the same pipeline: quantization carries over.
        super().quantize(mode, type_check=False, config=config)

    def get_config(self):
        return {**super().get_config(), "combiner": self.combiner}
