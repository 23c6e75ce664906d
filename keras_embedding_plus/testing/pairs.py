"""The option pairs of the lookup pipeline, their NumPy reference and what is
known of them.

Imported by `tests/lookup/test_pipeline.py`,
`tests/lookup/test_configurations.py` and `scripts/pair_table.py`; no tests here.

Every option is one argument of `Embedding` (or one call on it) with one value. For
each option alone and each unordered pair of options, exactly one holds:

* it works: forward and gradient equal the NumPy reference below, eager and
  compiled, on every backend;
* it is refused with a `ValueError` when it is set (`REFUSED`).

`KNOWN_BROKEN` lists the pairs that do neither today, per backend; their tests are
strict xfails, so an entry must go once its pair is fixed.

Options that are values of one argument (`device="cpu"` / `"host"`, the
quantization modes, the dtype policies) are never paired with each other.
"""

import itertools

import keras
import numpy as np

# Tiny sizes: a 7 x 3 table, ids of shape (2, 4) with a repeated id (1) and the
# padding id 0.
INPUT_DIM, OUTPUT_DIM, RANK, LENGTH = 7, 3, 2, 4
IDS = np.array([[1, 0, 3, 1], [6, 2, 0, 5]], dtype="int32")
# The ids of the compiled calls: `IDS` with two invalid ids, a negative one (which
# `ops.take` would wrap to the last row) and `INPUT_DIM` (one past the end). The
# index policy (`keras_embedding_plus/_ids.py`): their rows are zero there, and
# no gradient flows from them; eager calls refuse them with `INVALID_MESSAGE`.
MIXED_IDS = np.array([[1, 0, -1, 1], [6, 2, INPUT_DIM, 5]], dtype="int32")
INVALID_MESSAGE = (
    "Invalid embedding id -1 at position (0, 2) of the ids: valid ids are the "
    f"integers 0 to {INPUT_DIM - 1} (input_dim={INPUT_DIM}). 2 of 8 ids are "
    "invalid."
)
DROPOUT = 0.5
MAX_NORM = 1.0

# The table: rows 0, 2, 5 longer than `MAX_NORM`, the others shorter (none close to
# it, where the renormalisation is not differentiable).
TABLE = np.array(
    [
        [1.2, -0.9, 0.5],
        [0.3, 0.2, -0.4],
        [-1.5, 0.7, 0.9],
        [0.1, -0.6, 0.25],
        [0.45, 0.35, -0.15],
        [0.8, 1.1, -0.6],
        [-0.2, 0.5, 0.3],
    ],
    dtype="float32",
)
# LoRA factors with a visible effect (B = 0, Keras's start, would hide A's
# gradient), small enough to keep every row clear of `MAX_NORM`.
LORA_A = np.array(
    [[0.3, -0.2], [0.1, 0.25], [-0.15, 0.2], [0.2, 0.1], [-0.1, -0.3], [0.25, 0.05],
     [0.05, -0.2]],
    dtype="float32",
)  # fmt: skip
LORA_B = np.array([[0.2, -0.1, 0.15], [-0.05, 0.2, 0.1]], dtype="float32")
UPSTREAM = np.random.default_rng(11).normal(size=(*IDS.shape, OUTPUT_DIM))
UPSTREAM = UPSTREAM.astype("float32")

POLICIES = ("mixed_bfloat16", "bfloat16", "mixed_float16", "float16")
QUANTIZE = {
    "int8": ("int8", None),
    "int4": ("int4", None),  # Keras's default config: groups of 128 columns.
    "int4_row": ("int4", "row"),  # Int4QuantizationConfig(block_size=None).
}
# id -> what it sets (a readable description, used in the README table too).
OPTIONS = {
    "sparse": "sparse=True",
    "cpu": 'device="cpu"',
    "host": 'device="host"',
    "lora": "lora_rank=2",
    "max_norm": "max_norm=1.0",
    "dropout": "dropout=0.5",
    "int8": 'quantize("int8")',
    "int4": 'quantize("int4")',
    "int4_row": 'quantize("int4", Int4QuantizationConfig(block_size=None))',
    "mask_zero": "mask_zero=True",
    "input_length": "input_length=4",
    "weights": "weights=W",
    **{policy: f'dtype="{policy}"' for policy in POLICIES},
}
# Options that are values of one argument: never paired with each other.
GROUPS = (("cpu", "host"), tuple(QUANTIZE), POLICIES)
# Per-row int4 pairs like grouped int4 (the same lookup but for the dequantize
# step), and each int4 combination costs seconds of torch.compile: it is tested
# alone and with LoRA only, and left out of the table.
UNPAIRED = {"int4_row": ("lora",)}

# What a refusal's message must name for each option (besides `REFUSED`'s text).
NAMES = {
    "sparse": "sparse",
    "cpu": "device",
    "host": "host",
    "lora": "lora",
    "max_norm": "max_norm",
    "dropout": "dropout",
    "int8": "int8",
    "int4": "int4",
    "int4_row": "int4",
    "mask_zero": "mask_zero",
    "input_length": "input_length",
    "weights": "weights",
    **{policy: policy for policy in POLICIES},
}

_HOST = "cannot be combined with `sparse=True`"
# frozenset of option ids -> the fragment the `ValueError` must contain: a string
# (every backend) or a dict {backend: fragment} (refused on those backends only).
_FLOAT16 = "doesn't work well with compute_dtype='float16'"  # Keras's words.
_TORCH_SPARSE_MIXED = "`sparse=True` cannot be combined with the mixed dtype policy"
REFUSED = {
    **{
        frozenset({"int8", policy}): _FLOAT16 for policy in ("mixed_float16", "float16")
    },
    frozenset({"host", "sparse"}): {"jax": _HOST},
    frozenset({"sparse", "mixed_bfloat16"}): {"torch": _TORCH_SPARSE_MIXED},
    frozenset({"sparse", "mixed_float16"}): {"torch": _TORCH_SPARSE_MIXED},
}

# frozenset of option ids -> {backend: why it fails today}. Strict xfails: delete
# an entry when its pair is fixed.
KNOWN_BROKEN = {}


def same_group(a, b):
    return any(a in group and b in group for group in GROUPS)


def combinations():
    """Every option alone, then every unordered pair of options (as tuples)."""
    singles = [(name,) for name in OPTIONS]
    pairs = [
        p for p in itertools.combinations(paired_options(), 2) if not same_group(*p)
    ]
    extra = [(name, other) for name, others in UNPAIRED.items() for other in others]
    return singles + pairs + extra


def paired_options():
    """The options paired with every other one (the pair table's rows)."""
    return [name for name in OPTIONS if name not in UNPAIRED]


def combination_id(options):
    return "+".join(options)


def refusal(options, backend):
    """The fragment of the refusal of `options` on `backend`, or None."""
    entry = REFUSED.get(frozenset(options))
    if isinstance(entry, dict):
        return entry.get(backend)
    return entry


def broken(options, backend):
    """Why `options` fail on `backend` today (`KNOWN_BROKEN`), or None."""
    return KNOWN_BROKEN.get(frozenset(options), {}).get(backend)


def policy_of(options):
    for option in options:
        if option in POLICIES:
            return option
    return None


def quantization_of(options):
    for option in options:
        if option in QUANTIZE:
            return option
    return None


def compute_dtype(options):
    policy = policy_of(options)
    return "float32" if policy is None else keras.DTypePolicy(policy).compute_dtype


def tolerance(options):
    """(rtol, atol) for values of the compute dtype (and variables' dtype)."""
    return {
        "float32": (1e-5, 1e-5),
        "float16": (4e-3, 4e-3),
        "bfloat16": (3e-2, 3e-2),
    }[compute_dtype(options)]


def variable(layer, name):
    """`layer`'s variable called `name` (e.g. "embeddings"), or None."""
    found = [v for v in layer.weights if v.name == name]
    return found[0] if found else None


def make_layer(options):
    """An `Embedding` with `options`, built, holding `TABLE` (and LoRA factors).

    The order, as a user would write it:

    1. the constructor: `sparse`, `device`, `max_norm`, `dropout`, `mask_zero`,
       `input_length`, `weights=TABLE`, `dtype=policy`, and `lora_rank=2` unless a
       quantization option is given;
    2. `build()`, then `TABLE` assigned to the table (without `weights`);
    3. `quantize(mode, config)` for a quantization option;
    4. `enable_lora(2)` after quantizing (QLoRA, Keras's order);
    5. LoRA's factors set to `LORA_A` / `LORA_B`.

    A refused combination raises its `ValueError` at the step that sets it.
    """
    from keras_embedding_plus import Embedding

    options = set(options)
    quantization = quantization_of(options)
    kwargs = {}
    if "sparse" in options:
        kwargs["sparse"] = True
    for device in ("cpu", "host"):
        if device in options:
            kwargs["device"] = device
    if "max_norm" in options:
        kwargs["max_norm"] = MAX_NORM
    if "dropout" in options:
        kwargs["dropout"] = DROPOUT
    if "mask_zero" in options:
        kwargs["mask_zero"] = True
    if "input_length" in options:
        kwargs["input_length"] = LENGTH
    if "weights" in options:
        kwargs["weights"] = TABLE
    if policy_of(options):
        kwargs["dtype"] = policy_of(options)
    if "lora" in options and quantization is None:
        kwargs["lora_rank"] = RANK
    layer = Embedding(INPUT_DIM, OUTPUT_DIM, **kwargs)
    layer.build()
    if "weights" not in options:
        variable(layer, "embeddings").assign(TABLE)
    if quantization:
        mode, config = QUANTIZE[quantization]
        if config == "row":
            config = keras.quantizers.Int4QuantizationConfig(block_size=None)
        layer.quantize(mode, config=config)
    if "lora" in options:
        if quantization:
            layer.enable_lora(RANK)
        layer.lora_embeddings_a.assign(LORA_A)
        layer.lora_embeddings_b.assign(LORA_B)
    return layer


# The NumPy reference (float64).


def _unpack_int4(packed, output_dim):
    """Byte k: low nibble = column 2k, high nibble = 2k + 1, sign-extended."""
    packed = packed.astype(np.int64) & 0xFF
    low, high = packed & 0xF, (packed >> 4) & 0xF
    values = np.stack([low, high], axis=-1).reshape(packed.shape[0], -1)
    values = np.where(values >= 8, values - 16, values)
    return values[:, :output_dim].astype(np.float64)


def reference_table(layer, options):
    """The float table the layer looks up, from its stored variables, in float64."""

    def value(name):
        return np.asarray(
            keras.ops.convert_to_numpy(
                keras.ops.cast(variable(layer, name).value, "float32")
            ),
            dtype=np.float64,
        )

    quantization = quantization_of(options)
    if quantization is None:
        return value("embeddings")
    q = value("embeddings")
    scale = value("embeddings_scale")
    if quantization == "int8":
        return q / scale[:, None]
    q = _unpack_int4(q.astype(np.int64), OUTPUT_DIM)
    if variable(layer, "g_idx") is None:  # One scale per row.
        return q / scale.reshape(INPUT_DIM, 1)
    groups = value("g_idx").astype(np.int64)
    zero = value("embeddings_zero")
    return (q - zero[:, groups]) * scale[:, groups]


def reference_params(layer, options):
    """{name: float64 array}: the table and, with LoRA, the factors' values."""
    params = {"embeddings": reference_table(layer, options)}
    if "lora" in options:
        for name in ("lora_embeddings_a", "lora_embeddings_b"):
            params[name] = np.asarray(
                keras.ops.convert_to_numpy(variable(layer, name).value), np.float64
            )
    return params


def valid_ids(ids):
    """Which of `ids` are valid: the integers 0 .. INPUT_DIM - 1."""
    return (ids >= 0) & (ids < INPUT_DIM)


def reference(params, options, ids=IDS, keep=None):
    """The layer's output for `ids` in float64 (zero rows for invalid ids, as in
    compiled calls); `keep`: dropout's kept rows."""
    valid = valid_ids(ids)
    ids = np.where(valid, ids, 0)
    rows = params["embeddings"][ids]
    if "lora" in options:
        scale = 1.0  # lora_alpha defaults to lora_rank.
        rows = (
            rows
            + scale * params["lora_embeddings_a"][ids] @ params["lora_embeddings_b"]
        )
    if "max_norm" in options:
        norm = np.linalg.norm(rows, axis=-1, keepdims=True)
        rows = np.where(norm > MAX_NORM, rows * MAX_NORM / (norm + 1e-7), rows)
    if keep is not None:
        rows = rows * keep[ids][..., None] / (1.0 - DROPOUT)
    return rows * valid[..., None]


def reference_gradients(params, options, names, upstream=UPSTREAM, keep=None, ids=IDS):
    """d sum(reference * upstream) / d params[name] for `names`, by central
    finite differences in float64 (none from the positions of invalid ids)."""
    eps = 1e-6
    grads = {}
    for name in names:
        grad = np.zeros_like(params[name])
        for index in np.ndindex(*grad.shape):
            values = []
            for step in (eps, -eps):
                shifted = dict(params)
                shifted[name] = params[name].copy()
                shifted[name][index] += step
                out = reference(shifted, options, ids=ids, keep=keep)
                values.append(np.sum(out * upstream))
            grad[index] = (values[0] - values[1]) / (2 * eps)
        grads[name] = grad
    return grads


def status(options, backends=("tensorflow", "jax", "torch")):
    """A pair-table cell: "works", "refused", "refused on jax", "broken: ..."."""
    if len(options) == 2 and same_group(*options):
        return "—"
    refused = [b for b in backends if refusal(options, b)]
    broke = [b for b in backends if broken(options, b)]
    parts = []
    if refused:
        parts.append(
            "refused"
            if len(refused) == len(backends)
            else "refused on " + ", ".join(refused)
        )
    if broke:
        parts.append("broken: " + ", ".join(broke))
    return "; ".join(parts) or "works"


def markdown_table():
    """The README's pair table: rows and columns are the options."""
    names = paired_options()
    lines = [
        "| | " + " | ".join(f"`{n}`" for n in names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for row in names:
        cells = [status((row,) if row == col else (row, col)) for col in names]
        lines.append(f"| `{row}` | " + " | ".join(cells) + " |")
    legend = "; ".join(f"`{n}`: `{OPTIONS[n]}`" for n in names)
    unpaired = "; ".join(
        f"`{n}` (`{OPTIONS[n]}`) with "
        + ", ".join(f"`{o}`" for o in others)
        + f": {status((n,))} alone, "
        + ", ".join(status((n, o)) for o in others)
        for n, others in UNPAIRED.items()
    )
    return (
        "\n".join(lines)
        + f"\n\nOptions: {legend}. Also tested, outside the table: {unpaired}.\n"
    )
