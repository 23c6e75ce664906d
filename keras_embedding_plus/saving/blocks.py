"""Big tables, a block of rows at a time: building and loading without full-size
temporaries.

A 5M x 64 float32 table is 1.3 GB. Keras's initializers draw it whole, through
temporaries of the same size (PyTorch: `rand`, then the scaled and the shifted
copy; TensorFlow: the drawn tensor, then the variable's own buffer; JAX: the
random bits and their conversions), and
`variable.assign(numpy_array)` first converts the whole array to a backend
tensor. Tables of at least `MIN_ELEMENTS` elements are instead

* built as zeros, then drawn block by block (`initialize`) for the elementwise
  initializers (`ELEMENTWISE`), each block with its own seed: an int seed gives
  the same table on every build, and no two blocks repeat each other's draws.
  Fan-based initializers (`VarianceScaling`, `Glorot*`, `Orthogonal`...),
  whose values depend on the whole shape, are drawn whole, as Keras draws them;
* assigned block by block (`assign`) when loaded: in place where the backend
  writes rows of a variable in place (TensorFlow, PyTorch:
  `backends.blocks.writes_rows_in_place()`).

Saving, on every backend, copies a big table to NumPy by blocks (`saved`; LoRA
merges block by block) and hands Keras's store that one copy.

Smaller tables take Keras's own path, so they keep exactly the values
`keras.layers.Embedding` gives for the same seed. JAX arrays are immutable:
building, each block's update takes the table's array (donated, held by
nothing else yet) in place. Loading takes the array Keras reads (on CPU, JAX
adopts it without a copy): a new array filled by blocks measured worse.
"""

import contextlib
import contextvars

import keras
import numpy as np

from keras_embedding_plus import backends

# Set while a model is loaded from a file (`loading.load_model`): its big
# tables are built as zeros and not drawn, as the file's values replace them.
_LOADING = contextvars.ContextVar("keras_embedding_plus_loading", default=False)


@contextlib.contextmanager
def values_come_from_a_file():
    """Within: big tables are built as zeros, not drawn by `initialize` (the
    caller loads every table's values next; Keras fails a load that lacks
    them)."""
    token = _LOADING.set(True)
    try:
        yield
    finally:
        _LOADING.reset(token)


# Tables of at least this many elements are built and loaded by blocks.
MIN_ELEMENTS = 2**25
# About this many elements per block (16 MB of float32).
BLOCK_ELEMENTS = 2**22

ELEMENTWISE = (
    keras.initializers.RandomUniform,
    keras.initializers.RandomNormal,
    keras.initializers.TruncatedNormal,
    keras.initializers.Zeros,
    keras.initializers.Ones,
    keras.initializers.Constant,
)


def is_big(shape):
    return len(shape) >= 1 and int(np.prod(shape)) >= MIN_ELEMENTS


def _blocks(shape):
    """`(start, stop)` row ranges of about `BLOCK_ELEMENTS` elements each."""
    rows = shape[0]
    per_row = max(1, int(np.prod(shape[1:])))
    step = max(1, BLOCK_ELEMENTS // per_row)
    return [(start, min(start + step, rows)) for start in range(0, rows, step)]


def blockwise(initializer, shape):
    """Whether a table of `shape` with `initializer` is built by blocks."""
    initializer = keras.initializers.get(initializer)
    return (
        backends.blocks.builds_by_blocks()
        and is_big(shape)
        and type(initializer) in ELEMENTWISE
    )


def _block_seed(seed, index):
    """An int seed for block `index`, from the initializer's int `seed`."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, index]).generate_state(1)
    return int(state[0] & 0x7FFFFFFF)


def _block_initializer(initializer, index):
    """The initializer that draws block `index`.

    An int seed (Keras draws one for an unseeded initializer when it is made)
    gives each block its own seed; a `SeedGenerator` already moves on at every
    call; `Zeros` / `Ones` / `Constant` draw nothing.
    """
    seed = getattr(initializer, "seed", None)
    if seed is None or isinstance(seed, keras.random.SeedGenerator):
        return initializer
    config = initializer.get_config()
    config["seed"] = _block_seed(seed, index)
    return type(initializer).from_config(config)


def initialize(variable, initializer, padding_idx=None):
    """Draw `variable` (built as zeros) block by block with `initializer`
    (`blockwise` said yes); row `padding_idx` stays zeros."""
    initializer = keras.initializers.get(initializer)
    shape, dtype = tuple(variable.shape), variable.dtype
    if isinstance(initializer, keras.initializers.Zeros) or _LOADING.get():
        return
    for index, (start, stop) in enumerate(_blocks(shape)):
        block = _block_initializer(initializer, index)(
            (stop - start, *shape[1:]), dtype
        )
        backends.blocks.fill_rows(variable, start, block)
        del block
    if padding_idx is not None:
        zeros = keras.ops.zeros((1, *shape[1:]), dtype=dtype)
        backends.blocks.fill_rows(variable, padding_idx, zeros)


def assign(variable, value):
    """`variable.assign(value)` (`value` of the variable's shape), block by block
    for a big table where the backend writes rows in place."""
    shape = tuple(variable.shape)
    if not is_big(shape):
        variable.assign(value)
    elif backends.blocks.writes_rows_in_place():
        for start, stop in _blocks(shape):
            backends.blocks.write_rows(variable, start, value[start:stop])
    else:
        variable.assign(value)


class _Saved:
    """A numpy array made for saving, handed to Keras's store without a copy.

    Keras's stores convert what they are given with `np.array(value)`, a copy
    (a second table-sized array). NumPy 2 asks `__array__` for that copy
    (`copy=True`) and keeps what it returns: the array, filled by blocks here
    and held by nothing else, is that copy. A second conversion gets a real
    copy. (NumPy 1 copies it once more.)
    """

    def __init__(self, array):
        self._array, self._given = array, False
        self.shape, self.dtype = array.shape, array.dtype

    def __array__(self, dtype=None, copy=None):
        array = self._array
        if dtype is not None and np.dtype(dtype) != array.dtype:
            return array.astype(dtype)
        if self._given:
            return array.copy() if copy is not False else array
        self._given = True
        return array

    def __len__(self):
        return self.shape[0]


def saved(value, block=None):
    """What to hand Keras's store for `value` (a variable or tensor; `block(start,
    stop)` gives its rows, by default a slice of `value`): for a big one, a numpy
    array filled by blocks (see `_Saved`), else `value` itself."""
    shape = tuple(value.shape)
    if isinstance(value, _Saved) or not is_big(shape):
        return value
    if block is None:

        def block(start, stop):
            return backends.blocks.read_rows(value, start, stop)

    array = None
    for start, stop in _blocks(shape):
        rows = keras.ops.convert_to_numpy(block(start, stop))
        if array is None:
            array = np.empty(shape, rows.dtype)
        array[start:stop] = rows
        del rows
    return _Saved(array)
