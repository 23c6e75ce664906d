"""Quantized and LoRA lookups: ours vs `keras.layers.Embedding`, one process a backend.

Cases (forward, `model.predict_on_batch`, ids 1024 x 64 int32, output_dim 64):

* ``quant_100k`` / ``quant_1M``: our float layer, ours quantized int8 / int4, and
  Keras's int8 / int4 (``quantize("int4")`` as a user calls it: Keras's default
  config, groups of 128 columns with zero points). Ours gathers the stored rows of
  the ids, then dequantizes those rows: the time should not grow with the
  vocabulary. Keras's int4 unpacks the whole table on every call.
* ``lora_100k`` / ``lora_1M``: plain and LoRA (rank 8) layers, ours and Keras's.
  Ours gathers the rows of A first; Keras forms the full vocab x dim delta on every
  call. Target: ours with LoRA <= 1.3x our plain forward at vocab 1M.

Also prints the stored table bytes (from the variables) of each quantized layer
relative to float32. Timing: interleaved rounds, medians
(``_bench.time_interleaved``); the ratios are what carry over between machines.

Usage::

    KERAS_BACKEND=jax python benchmarks/bench_quant_lora.py   # one backend
    python benchmarks/bench_quant_lora.py --all               # each, in a subprocess
    python benchmarks/bench_quant_lora.py --plot-only         # redraw the chart

Results: ``benchmarks/results/bench_quant_lora.csv`` (a run replaces its backend's
rows) and ``benchmarks/results/bench_quant_lora.png``.
"""

import gc

import _bench as bench

CSV_PATH = bench.RESULTS / "bench_quant_lora.csv"
PNG_PATH = bench.RESULTS / "bench_quant_lora.png"
DIM = 64
IDS_SHAPE = (1024, 64)
RANK = 8
CASES = {
    # name: (kind, vocab)
    "quant_100k": ("quant", 100_000),
    "quant_1M": ("quant", 1_000_000),
    "lora_100k": ("lora", 100_000),
    "lora_1M": ("lora", 1_000_000),
}
CONTENDERS = {
    "quant": ("ours_float", "ours_int8", "ours_int4", "keras_int8", "keras_int4"),
    "lora": ("ours_plain", "ours_lora", "keras_plain", "keras_lora"),
}
# The reference each case's ratios are taken against.
REFERENCE = {"quant": "ours_float", "lora": "ours_plain"}
FIELDS = (
    "backend",
    "case",
    "contender",
    *bench.TIMING_FIELDS,
    "ratio",
    "table_bytes_ratio",
    *bench.VERSION_FIELDS,
)


def _model(layer):
    import keras

    model = keras.Sequential([keras.Input((IDS_SHAPE[1],), dtype="int32"), layer])
    return model


def _table_bytes(layer):
    import numpy as np

    return sum(
        int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in layer.weights
    )


def build_contenders(kind, vocab, rng):
    """name -> (model, layer), every layer holding the same float table."""
    import keras
    import numpy as np

    from keras_embedding_plus import Embedding

    table = rng.standard_normal((vocab, DIM), dtype="float32")
    contenders = {}
    for name in CONTENDERS[kind]:
        owner, variant = name.split("_")
        cls = Embedding if owner == "ours" else keras.layers.Embedding
        layer = cls(vocab, DIM)
        model = _model(layer)
        layer.set_weights([table])
        if variant in ("int8", "int4"):
            layer.quantize(variant)
        if variant == "lora":
            layer.enable_lora(RANK)
            rank_rng = np.random.default_rng(1)
            layer.lora_embeddings_a.assign(
                rank_rng.uniform(-0.1, 0.1, (vocab, RANK)).astype("float32")
            )
            layer.lora_embeddings_b.assign(
                rank_rng.standard_normal((RANK, DIM)).astype("float32") * 0.01
            )
        contenders[name] = (model, layer)
    return contenders, table


def bench_case(case, budget_s):
    import numpy as np

    kind, vocab = CASES[case]
    rng = np.random.default_rng(0)
    contenders, table = build_contenders(kind, vocab, rng)
    ids = rng.integers(0, vocab, size=IDS_SHAPE, dtype="int32")
    float_bytes = table.nbytes
    # Sanity: quantized within the documented bound; LoRA ours == Keras's.
    outputs = {
        name: model.predict_on_batch(ids) for name, (model, _) in contenders.items()
    }
    reference = table[ids]
    row_max = np.abs(reference).max(-1, keepdims=True)
    for name, out in outputs.items():
        if name.endswith("int8"):
            assert np.all(np.abs(out - reference) <= row_max / 254 * 1.001 + 1e-6), name
        if name == "ours_int4":
            assert np.all(np.abs(out - reference) <= row_max / 14 * 1.001 + 1e-6), name
    if kind == "lora":
        diff = np.abs(outputs["ours_lora"] - outputs["keras_lora"]).max()
        assert diff < 1e-4, f"LoRA outputs differ by {diff}"
    del table, reference, outputs
    gc.collect()
    fns = {
        name: (lambda model=model: model.predict_on_batch(ids))
        for name, (model, _) in contenders.items()
    }
    stats = bench.time_interleaved(fns, budget_s, min_repeats=9, max_repeats=60)
    sizes = {
        name: _table_bytes(layer) / float_bytes
        for name, (_, layer) in contenders.items()
        if kind == "quant"
    }
    return stats, sizes


def run_backend(budget_s, cases):
    backend = bench.start_backend()
    import keras

    rows = []
    for case in cases:
        stats, sizes = bench_case(case, budget_s)
        keras.backend.clear_session()
        gc.collect()
        reference = stats[REFERENCE[CASES[case][0]]][0]
        print(f"-- {case} (ratio to {REFERENCE[CASES[case][0]]})")
        for name, (median, *_) in stats.items():
            size = f"{sizes[name]:.4f}" if name in sizes else ""
            rows.append(
                {
                    "backend": backend,
                    "case": case,
                    "contender": name,
                    **bench.timing_fields(stats[name]),
                    "ratio": f"{median / reference:.3f}",
                    "table_bytes_ratio": size,
                    **bench.version_fields(backend),
                }
            )
            print(
                f"   {name:12s} {median:9.2f} ms  {median / reference:6.2f}x"
                + (f"  table {sizes[name]:.3f}x float32" if name in sizes else ""),
                flush=True,
            )
    return rows


def write_rows(new_rows):
    backends = {r["backend"] for r in new_rows}
    cases = {r["case"] for r in new_rows}
    bench.update_csv(
        CSV_PATH,
        FIELDS,
        new_rows,
        lambda r: r["backend"] in backends and r["case"] in cases,
    )


def plot():
    """One panel per case: backends on x, one bar per contender (log scale)."""
    plt = bench.pyplot()
    rows = bench.read_csv(CSV_PATH)
    if not rows:
        return
    fig, axes = plt.subplots(1, len(CASES), figsize=(17, 4.8))
    for ax, case in zip(axes, CASES, strict=True):
        bench.grouped_bars(
            ax,
            rows,
            case,
            CONTENDERS[CASES[case][0]],
            height=lambda r: float(r["median_ms"]),
            label=lambda r: f"{float(r['ratio']):.2f}x",
            fontsize=6,
            rotation=90,
        )
        ax.set_yscale("log")
        kind, vocab = CASES[case]
        ax.set_title(
            f"{kind} forward, vocab {vocab:,} x {DIM}, ids 1024 x 64", fontsize=9
        )
        ax.set_ylabel("median ms (log; lower is better)")
        ax.legend(fontsize=7, loc="upper left")
        ax.margins(y=0.3)
    title = (
        "Quantized and LoRA lookups: keras_embedding_plus (ours) vs keras.layers."
        "Embedding; labels: ratio to our float / plain layer"
    )
    bench.save_chart(fig, PNG_PATH, CSV_PATH, title)


def main():
    parser = bench.case_parser(__doc__, CASES, budget_s=10.0)
    args = parser.parse_args()
    bench.run_cases(args, __file__, run_backend, write_rows, plot)


if __name__ == "__main__":
    main()
