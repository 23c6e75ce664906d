"""What a file may declare before anything it declares is allocated or inflated.

A file states sizes before it holds them: a `.keras` archive's directory gives
each member's size once inflated, a config gives each table's `input_dim` and
`output_dim`, an HDF5 dataset its shape. Reading first and checking after
lets a small file cost gigabytes (a "decompression bomb" of a few MB inflates
to 4 GiB; a 20 KB `.weights.h5` can declare a 512 MiB table). These checks read
only what the file declares, and refuse with a `ValueError` naming the file:

* `check_members(archive, prefix, most_bytes)`: each member's declared size
  against its stored size (`MAX_EXPANSION`) and, loading into a known model,
  against what a file of that model can hold;
* `check_table(input_dim, output_dim, policy, where)`: a table larger than
  this machine's memory (`physical_memory`) could never be allocated;
* `check_config_tables(config, prefix, custom_objects)`: the same, for every
  layer of this package in a model's config, nested models included.
"""

import math
import os

import keras
import numpy as np

# A member declaring more than this many times the bytes it stores is refused
# (Keras's own guard, `_ZIP_MEMBER_MAX_EXPANSION`: Keras stores members
# uncompressed, ratio 1; DEFLATE of trained float weights gives about 1.1, of
# zeros at most 1032). Keras applies it above 4 GiB only, after it has built
# the model; here it applies above `EXPANSION_FLOOR`, before anything is read.
MAX_EXPANSION = 100
# Below this, inflating a member costs a few milliseconds whatever its ratio.
EXPANSION_FLOOR = 16 * 2**20
# A weights member may hold the model's variables this many times over: an
# optimizer's slots the loading model has not built yet (Adam with `amsgrad`:
# 3, `use_ema`: one more), and float64 values for float32 variables.
OPTIMIZER_COPIES = 8
# HDF5's own bytes in a weights file: a fixed part, and a part per variable
# and per layer (its group, its dataset's header).
H5_OVERHEAD = 2**20
H5_OVERHEAD_PER_OBJECT = 16 * 2**10

# The package's layers in a model's config (`registered_name`s).
_PACKAGE = "keras_embedding_plus"


def readable_size(n):
    """`n` bytes as a short text ("4.0 GiB")."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def physical_memory():
    """This machine's physical memory in bytes, or None where unknown."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # No `sysconf` (Windows).
        return None


def check_members(archive, prefix, most_bytes=None, member="model.weights.h5"):
    """Refuse a zip `archive` whose directory declares too much, before
    inflating anything.

    Args:
        archive: An open `zipfile.ZipFile`.
        prefix: The start of the message ("Cannot load a model from '<path>'").
        most_bytes: Optional: the most `member` can hold for the model it is
            loaded into (`weights_bytes`).
        member: The member `most_bytes` bounds.
    """
    for info in archive.infolist():
        declared, stored = info.file_size, info.compress_size
        if declared > EXPANSION_FLOOR and declared > MAX_EXPANSION * stored:
            raise ValueError(
                f"{prefix}: its member '{info.filename}' declares "
                f"{declared} bytes ({readable_size(declared)}) once inflated, "
                f"but stores {stored} bytes ({readable_size(stored)}), more "
                f"than {MAX_EXPANSION} times fewer: a decompression bomb. It "
                "was refused before anything was inflated."
            )
        if most_bytes is not None and info.filename == member:
            if declared > most_bytes:
                raise ValueError(
                    f"{prefix}: its member '{info.filename}' declares "
                    f"{declared} bytes ({readable_size(declared)}), more than "
                    f"the weights of this model can take up "
                    f"({most_bytes} bytes, {readable_size(most_bytes)}, "
                    "optimizer included). It was refused before anything was "
                    "inflated."
                )


def weights_bytes(variables, objects):
    """The most a weights file of a model can hold: its `variables`' bytes
    `OPTIMIZER_COPIES` times over, plus HDF5's own bytes for `objects`
    (variables and layers)."""
    data = sum(
        math.prod(v.shape) * np.dtype(numpy_dtype(v.dtype)).itemsize for v in variables
    )
    return OPTIMIZER_COPIES * data + H5_OVERHEAD + H5_OVERHEAD_PER_OBJECT * objects


def numpy_dtype(dtype):
    """A NumPy dtype name of `dtype`'s kind and size (bfloat16 as float16)."""
    name = keras.backend.standardize_dtype(dtype)
    # NumPy knows bfloat16 and the float8 types only through `ml_dtypes`.
    if name == "bfloat16":
        return "float16"
    if name.startswith("float8"):
        return "int8"
    return name


def bytes_per_element(policy):
    """Bytes per table element under dtype `policy` (a `DTypePolicy`): its
    variable dtype's, or the quantized mode's (int8: 1, int4: 1/2)."""
    mode = getattr(policy, "quantization_mode", None)
    if mode == "int4":
        return 0.5
    if mode is not None:
        return 1
    return np.dtype(numpy_dtype(policy.variable_dtype)).itemsize


def _distributed():
    """Whether a `keras.distribution` shards variables (maybe over several
    machines, whose memory together may hold what one machine's cannot)."""
    return keras.distribution.distribution() is not None


def check_table(input_dim, output_dim, policy, where):
    """Raise `ValueError` if an `(input_dim, output_dim)` table under dtype
    `policy` takes more bytes than this machine's memory holds (it could never
    be allocated). `where` starts the message ("Layer 'emb'"). Not checked
    under a `keras.distribution` (a sharded table may span machines), nor
    where the memory is unknown."""
    memory = physical_memory()
    if memory is None or _distributed():
        return
    size = input_dim * output_dim * bytes_per_element(policy)
    if size > memory:
        values = policy.quantization_mode or policy.variable_dtype
        raise ValueError(
            f"{where}: a table of `input_dim` x `output_dim` = {input_dim} x "
            f"{output_dim} {values} values takes {readable_size(size)}, more "
            f"than this machine's memory ({readable_size(memory)}): it could "
            f"never be allocated. Received: input_dim={input_dim}, "
            f"output_dim={output_dim}."
        )


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _package_class(entry, custom_objects):
    """The class of this package's that a config `entry` deserializes to, or None."""
    from keras_embedding_plus.layers.embedding import Embedding

    name = entry.get("registered_name") or entry.get("class_name")
    if not isinstance(name, str):
        return None
    found = keras.saving.get_registered_object(name, custom_objects)
    if isinstance(found, type) and issubclass(found, Embedding):
        return found
    module = entry.get("module")
    if isinstance(module, str) and module.split(".")[0] == _PACKAGE:
        return Embedding
    return None


def _policy(dtype):
    """The `DTypePolicy` of a layer config's `dtype` entry (float32 if unreadable:
    the constructor then says what is wrong with it)."""
    try:
        return keras.dtype_policies.get(dtype or "float32")
    except (TypeError, ValueError):
        return keras.dtype_policies.get("float32")


def _entries(config):
    """Every `{"class_name", "config"}` entry in a (nested) model config."""
    stack = [config]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("class_name"), str) and isinstance(
                item.get("config"), dict
            ):
                yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def check_config_tables(config, prefix, custom_objects=None):
    """`check_table` for every layer of this package in a model's `config` (a
    parsed `config.json`, nested models and layers included), before any is
    built. `prefix` starts the message ("Cannot load a model from '<path>'")."""
    for entry in _entries(config):
        cls = _package_class(entry, custom_objects)
        if cls is None:
            continue
        layer = entry["config"]
        input_dim, output_dim = layer.get("input_dim"), layer.get("output_dim")
        if not (_is_int(input_dim) and _is_int(output_dim)):
            continue  # The constructor says what is wrong with them.
        name = layer.get("name")
        check_table(
            input_dim,
            output_dim,
            _policy(layer.get("dtype")),
            f"{prefix}: its layer '{name}' ({cls.__name__})",
        )
