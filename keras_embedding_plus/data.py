"""`BagDataset`: batches of bags of varying length for `fit`, `evaluate` and
`predict`.

`model.fit([values, offsets], y)` cannot batch bags: `values` (every id) and
`offsets` (one start per bag) have different lengths, and Keras slices arrays by
example. `BagDataset` slices by bag: each batch is `batch_size` bags, as
`{"values": ..., "lengths": ...}` (`EmbeddingBag`'s form in which values after
the last bag count nowhere), padded to a power of two ids so that compiled
steps see a few shapes only.
"""

import math
from typing import Any

import keras
import numpy as np
from numpy.typing import ArrayLike


def _padded_size(count):
    """The smallest power of two that holds `count` ids (1 for none)."""
    return 1 << max(count - 1, 0).bit_length()


class BagDataset(keras.utils.PyDataset):
    """Bags of varying length, batched for `fit`, `evaluate` and `predict`.

    The whole dataset is given as `EmbeddingBag` takes a batch: 1-D ids
    `values` and the start of each bag in them, `offsets` (one per example,
    starting at 0, as `torch.nn.functional.embedding_bag` takes them). Batch
    `i` holds bags `i * batch_size` to `(i + 1) * batch_size` (of a new
    permutation each epoch with `shuffle=True`); only the last batch may hold
    fewer. Each batch is `(x, y)`, `(x, y, sample_weight)`, or `(x,)` without
    `y` (for `predict`), with `x` a dict:

    * `"values"`: the bags' ids, bag after bag, then padding;
    * `"lengths"`: the number of ids of each bag (one row per bag, as `y`);
    * `"weights"` (where `weights` are given): the ids' weights, then 0s.

    The model takes them as inputs of these names, and passes
    `{"values": ..., "lengths": ...}` (and `weights=`) to an `EmbeddingBag`,
    which pools the ids of each bag and counts nothing after the last bag.
    With `pad=True` (the default) `values` is padded with id 0 to a power of
    two ids: whatever the combiner, `padding_idx` or weights, the padding
    changes nothing, and a compiled step (JAX's `jit`, `tf.function`) sees one
    shape of `values` per power of two, not one per batch. (`"lengths"` comes
    first in `x`, as Keras flattens dicts: Keras weighs each batch's loss in the
    epoch's mean by the length of the first input, which is then the number of
    bags.)

    Keras reads the batches through its `PyDataset` machinery on every
    backend (`workers`, `use_multiprocessing` and `max_queue_size` are passed
    on); `to_tf_dataset()` gives the same batches as a `tf.data.Dataset` where
    TensorFlow is installed.

    Args:
        values: 1-D integer ids of every bag, bag after bag.
        offsets: 1-D integers, the start of each bag in `values`: one per
            example, starting at 0, never decreasing, at most `len(values)`.
            Bag `i` is `values[offsets[i]:offsets[i + 1]]` (the last one runs
            to the end of `values`).
        y: Optional targets, one per bag (an array, or a list / dict of
            arrays, each of `len(offsets)` rows). `None` for `predict`.
        weights: Optional 1-D float per-id weights (`EmbeddingBag`'s
            `weights=`), one per entry of `values`.
        sample_weight: Optional per-bag weights of the loss, `len(offsets)`
            rows (with `y` only).
        batch_size: Integer, bags per batch (32 by default).
        shuffle: Boolean: draw a new order of the bags each epoch (`False` by
            default).
        seed: Optional integer seed of the shuffling.
        pad: Boolean: pad each batch's ids to a power of two (`True` by
            default).
        **kwargs: `workers`, `use_multiprocessing`, `max_queue_size` of
            `keras.utils.PyDataset`.

    Example:

    >>> values = np.array([4, 7, 9, 1, 2, 3])
    >>> offsets = np.array([0, 2, 3])  # bags [4, 7], [9], [1, 2, 3]
    >>> data = BagDataset(values, offsets, np.ones((3, 1)), batch_size=2)
    >>> x, y = data[0]
    >>> x["values"].tolist(), x["lengths"].tolist(), y.shape
    ([4, 7, 9, 0], [2, 1], (2, 1))
    """

    def __init__(
        self,
        values: ArrayLike,
        offsets: ArrayLike,
        y: Any = None,
        *,
        weights: ArrayLike | None = None,
        sample_weight: ArrayLike | None = None,
        batch_size: int = 32,
        shuffle: bool = False,
        seed: int | None = None,
        pad: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.values = _one_dim(values, "values")
        if not self.values.size:
            self.values = self.values.astype("int32")  # `[]` is float64.
        if not np.issubdtype(self.values.dtype, np.integer):
            raise ValueError(
                "`values` must hold integer ids. Received: values of dtype "
                f"{self.values.dtype}."
            )
        offsets = _one_dim(offsets, "offsets")
        n = len(self.values)
        if not offsets.size and n:
            raise ValueError(
                f"`offsets` is empty, but there are {n} values: give the start "
                "of each bag (0 for the first)."
            )
        if not offsets.size:
            offsets = offsets.astype("int64")  # `[]` is float64.
        elif (
            not np.issubdtype(offsets.dtype, np.integer)
            or offsets[0] != 0
            or (np.diff(offsets) < 0).any()
            or offsets[-1] > n
        ):
            raise ValueError(
                "`offsets` must be integers that start at 0, never decrease and "
                f"do not exceed the number of values ({n}): the start of each "
                f"bag. Received: offsets={offsets.tolist()[:10]}"
                f"{'...' if offsets.size > 10 else ''}."
            )
        self.starts = offsets.astype("int64")
        self.lengths = np.diff(np.append(self.starts, n))
        self.weights = None
        if weights is not None:
            self.weights = _one_dim(weights, "weights")
            if self.weights.shape != self.values.shape:
                raise ValueError(
                    "`weights` must hold one weight per value: shape "
                    f"{self.values.shape}. Received: weights of shape "
                    f"{self.weights.shape}."
                )
            if not np.issubdtype(self.weights.dtype, np.floating):
                self.weights = self.weights.astype("float32")
        count = len(self.starts)
        if sample_weight is not None and y is None:
            raise ValueError(
                "`sample_weight` weighs the loss of each bag: it needs targets "
                "`y`. Received: y=None with a sample_weight."
            )
        self.y = _per_bag(y, "y", count)
        self.sample_weight = _per_bag(sample_weight, "sample_weight", count)
        if (
            not isinstance(batch_size, (int, np.integer))
            or isinstance(batch_size, bool)
            or batch_size < 1
        ):
            raise ValueError(
                "`batch_size` must be a positive integer. Received: "
                f"batch_size={batch_size!r}."
            )
        self.batch_size, self.shuffle, self.pad = int(batch_size), shuffle, pad
        self._rng = np.random.default_rng(seed)
        self._order = np.arange(count)
        if shuffle:
            self._rng.shuffle(self._order)

    @property
    def num_batches(self) -> int:
        """Batches per epoch: `ceil(len(offsets) / batch_size)`."""
        return math.ceil(len(self.starts) / self.batch_size)

    def __len__(self) -> int:
        return self.num_batches

    def __getitem__(self, index: int) -> tuple:
        """Batch `index`: `(x,)`, `(x, y)` or `(x, y, sample_weight)`.

        Args:
            index: Integer, `0 <= index < len(self)`.

        Returns:
            `x` is `{"values", "lengths"}` or `{"values", "lengths", "weights"}`.
        """
        if not 0 <= index < self.num_batches:
            raise IndexError(
                f"Batch {index} of a BagDataset of {self.num_batches} batches."
            )
        chosen = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        lengths = self.lengths[chosen]
        total = int(lengths.sum())
        # Position j of the batch is value `starts[bag] + (j - batch_starts[bag])`.
        batch_starts = np.cumsum(lengths) - lengths
        where = np.repeat(self.starts[chosen] - batch_starts, lengths)
        where += np.arange(total)
        size = _padded_size(total) if self.pad else total
        values = np.zeros(size, self.values.dtype)
        values[:total] = self.values[where]
        x = {"lengths": lengths.astype("int32"), "values": values}
        if self.weights is not None:
            x["weights"] = np.zeros(size, self.weights.dtype)
            x["weights"][:total] = self.weights[where]
        parts = (self.y, self.sample_weight)
        return (x,) + tuple(
            keras.tree.map_structure(lambda a: a[chosen], part)
            for part in parts
            if part is not None
        )

    def on_epoch_end(self) -> None:
        """A new order of the bags, with `shuffle=True`."""
        if self.shuffle:
            self._rng.shuffle(self._order)

    def to_tf_dataset(self) -> Any:
        """The same batches as a `tf.data.Dataset` (TensorFlow must be
        installed; any Keras backend).

        Each pass over it is one epoch (then `on_epoch_end`: a new order with
        `shuffle=True`). The ids' axis has no static size, so that
        `tf.function` traces one step for every batch.

        Returns:
            A `tf.data.Dataset` of the batches of `self[i]`.
        """
        try:
            import tensorflow as tf
        except ImportError as error:
            raise ImportError(
                "`BagDataset.to_tf_dataset()` needs TensorFlow (`pip install "
                "tensorflow`); the BagDataset itself works without it."
            ) from error

        def spec(array):
            array = np.asarray(array)
            return tf.TensorSpec((None, *array.shape[1:]), tf.as_dtype(array.dtype))

        signature = keras.tree.map_structure(spec, self[0])

        def batches():
            for index in range(self.num_batches):
                yield self[index]
            self.on_epoch_end()

        dataset = tf.data.Dataset.from_generator(batches, output_signature=signature)
        # A known number of batches: Keras counts the steps of an epoch.
        return dataset.apply(tf.data.experimental.assert_cardinality(self.num_batches))


def _one_dim(array, name):
    array = np.asarray(array)
    if array.ndim != 1:
        raise ValueError(
            f"`{name}` must be 1-D. Received: {name} of shape {array.shape}."
        )
    return array


def _per_bag(data, name, count):
    """`data` (an array or a structure of arrays) as NumPy, `count` rows each."""
    if data is None:
        return None
    structured = isinstance(data, dict) or (
        isinstance(data, (list, tuple))
        and data
        and all(hasattr(part, "shape") and np.ndim(part) for part in data)
    )
    # A structure of arrays (several outputs), or one array (or nested lists).
    data = (
        keras.tree.map_structure(np.asarray, data) if structured else np.asarray(data)
    )
    for leaf in keras.tree.flatten(data):
        if not leaf.ndim or len(leaf) != count:
            raise ValueError(
                f"`{name}` must have one row per bag ({count}, the length of "
                f"`offsets`). Received: {name} of shape {leaf.shape}."
            )
    return data
