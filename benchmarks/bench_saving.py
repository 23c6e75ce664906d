"""Big-table saving: peak memory of saving and loading a 5M x 64 table (issue 13).

The model is `Embedding(5_000_000, 64)` (1.28 GB of float32; with `--lora`, a
rank-8 LoRA adapter too, whose save merges it into the table) followed by a
`Dense(1)`. Each step runs in a fresh process, so that one step's allocations
never hide another's:

* ``build``: construct and build the model;
* ``save_keras`` / ``save_weights``: `model.save("m.keras")` /
  `model.save_weights("m.weights.h5")` of a built model;
* ``load_keras``: `keras_embedding_plus.load_model("m.keras")`;
* ``load_weights_keras`` / ``load_weights_ours``: a built model's own
  `model.load_weights` / the all-or-nothing `keras_embedding_plus.load_weights`.

Reported per step: ``peak_mb``, how far the process's resident memory rose above
its level just before the step (Linux ``VmHWM`` after resetting it through
``/proc/self/clear_refs``), and ``peak_x_table``, that rise over the table's
size. Target: at most 2x the table. For ``build``, the level before is the
process with the backend imported; for the other steps, with the model built
(the table itself already resident), so the rise is the extra memory the step
needs.

Usage::

    KERAS_BACKEND=jax python benchmarks/bench_saving.py   # one backend
    python benchmarks/bench_saving.py --rows 100000       # a quick check

Results: ``benchmarks/results/bench_saving.csv`` (a run replaces its backend's
rows).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

from _bench import RESULTS, peak_mb, peak_start, replace_backend_rows

CSV_PATH = RESULTS / "bench_saving.csv"
DIM, RANK = 64, 8
STEPS = (
    "build",
    "save_keras",
    "save_weights",
    "load_keras",
    "load_weights_keras",
    "load_weights_ours",
)
FIELDS = ("backend", "rows", "lora", "step", "seconds", "peak_mb", "peak_x_table")


def _build(rows, lora):
    import keras

    from keras_embedding_plus import Embedding

    inputs = keras.Input((4,), dtype="int32")
    x = Embedding(rows, DIM, lora_rank=RANK if lora else None, name="emb")(inputs)
    outputs = keras.layers.Dense(1)(keras.layers.GlobalAveragePooling1D()(x))
    model = keras.Model(inputs, outputs)
    if keras.backend.backend() == "jax":
        # JAX dispatches asynchronously: without this, the table is still being
        # drawn when `build` returns, and its peak lands in the next step.
        import jax

        jax.block_until_ready([v.value for v in model.variables])
    return model


def child(step, rows, lora, directory):
    """Run `step` in this process; print its JSON result."""
    import time

    import keras

    import keras_embedding_plus

    keras_path = os.path.join(directory, "m.keras")
    weights_path = os.path.join(directory, "m.weights.h5")
    model = None
    if step != "build" and step != "load_keras":
        model = _build(rows, lora)
    base = peak_start()
    start = time.perf_counter()
    if step == "build":
        model = _build(rows, lora)
    elif step == "save_keras":
        model.save(keras_path)
    elif step == "save_weights":
        model.save_weights(weights_path)
    elif step == "load_keras":
        model = keras_embedding_plus.load_model(keras_path)
    elif step == "load_weights_keras":
        model.load_weights(weights_path)
    elif step == "load_weights_ours":
        keras_embedding_plus.load_weights(model, weights_path)
    seconds = time.perf_counter() - start
    peak = peak_mb(base)
    table_mb = rows * DIM * 4 / 2**20
    print(
        "RESULT "
        + json.dumps(
            {
                "backend": keras.backend.backend(),
                "rows": rows,
                "lora": lora,
                "step": step,
                "seconds": round(seconds, 2),
                "peak_mb": round(peak, 1),
                "peak_x_table": round(peak / table_mb, 2),
            }
        )
    )


def run(rows, lora, directory):
    results = []
    for step in STEPS:
        command = [sys.executable, __file__, "--child", step, "--rows", str(rows)]
        command += ["--dir", directory] + (["--lora"] if lora else [])
        out = subprocess.run(command, capture_output=True, text=True, check=False)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            raise RuntimeError(f"{step} failed:\n{out.stderr[-3000:]}")
        result = json.loads(line[0][len("RESULT ") :])
        print(result, flush=True)
        results.append(result)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("--child")
    parser.add_argument("--dir")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.rows, args.lora, args.dir)
        return
    import keras

    results = []
    for lora in (False, True):
        with tempfile.TemporaryDirectory() as directory:
            results += run(args.rows, lora, directory)
    if args.rows == 5_000_000:
        replace_backend_rows(CSV_PATH, FIELDS, results, keras.backend.backend())


if __name__ == "__main__":
    main()
