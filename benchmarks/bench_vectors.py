"""Pretrained vectors and neighbours: memory and time (issue 6).

* ``load_vectors`` on a generated GloVe-style text file of 200,000 lines x 100
  dimensions (about 190 MB): a 20,000-token vocabulary (15,000 in the file,
  spread over it, 5,000 not in it, so the whole file is read), and the whole
  file (``vocabulary=None``). Peak memory is the Python heap's peak during the
  call (``tracemalloc``, which NumPy reports to), set against the file's size
  and the matrix's size.
* ``nearest`` on a 1,000,000 x 64 table: one id, and 64 ids at once; median of
  5 calls after a warm-up call.

Usage::

    KERAS_BACKEND=jax python benchmarks/bench_vectors.py [--nearest-only]

Each run replaces its backend's rows of ``benchmarks/results/bench_vectors.csv``.
"""

import os
import statistics
import sys
import tempfile
import time
import tracemalloc

import keras
import numpy as np
from _bench import RESULTS, repeat_ms, update_csv

from keras_embedding_plus import Embedding, load_vectors, nearest

LINES, DIM, WANTED, MISSING = 200_000, 100, 15_000, 5_000
ROWS, NEAREST_DIM = 1_000_000, 64
CSV_PATH = RESULTS / "bench_vectors.csv"


def _write_file(path):
    rng = np.random.default_rng(0)
    with open(path, "w", encoding="utf-8") as f:
        for start in range(0, LINES, 10_000):
            block = rng.standard_normal((10_000, DIM)).astype("float32")
            text = np.char.mod("%.5f", block)
            f.writelines(
                f"tok{start + i} " + " ".join(row) + "\n" for i, row in enumerate(text)
            )


def _measure(fn):
    tracemalloc.start()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, seconds, peak / 2**20


def bench_load(backend, rows):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "glove_like.txt")
        _write_file(path)
        file_mb = os.path.getsize(path) / 2**20
        step = LINES // WANTED
        vocab = [f"tok{i}" for i in range(0, LINES, step)][:WANTED]
        vocab += [f"missing{i}" for i in range(MISSING)]
        for label, vocabulary in (("vocab 20k", vocab), ("whole file", None)):
            loaded, seconds, peak = _measure(
                lambda v=vocabulary: load_vectors(path, v, verbose=0)
            )
            matrix_mb = loaded.matrix.nbytes / 2**20
            rows.append(
                {
                    "backend": backend,
                    "case": f"load_vectors {label}",
                    "seconds": round(seconds, 3),
                    "peak_mb": round(peak, 1),
                    "matrix_mb": round(matrix_mb, 1),
                    "file_mb": round(file_mb, 1),
                    "coverage": round(loaded.coverage, 3),
                }
            )
            del loaded


def bench_nearest(backend, rows):
    rng = np.random.default_rng(1)
    table = rng.standard_normal((ROWS, NEAREST_DIM)).astype("float32")
    layer = Embedding(ROWS, NEAREST_DIM, embeddings_initializer="zeros")
    layer.build()
    layer.embeddings.assign(table)
    del table
    for label, query in (("1 id", 123), ("64 ids", np.arange(64))):
        # One warm-up call (compiles the ops once), then 5 timed.
        times = repeat_ms(lambda q=query: nearest(layer, q, k=10), 5, warmup=1)
        rows.append(
            {
                "backend": backend,
                "case": f"nearest 1M x 64, {label}, k=10",
                "seconds": round(statistics.median(times) / 1e3, 4),
            }
        )


def main():
    backend = keras.backend.backend()
    nearest_only = "--nearest-only" in sys.argv
    rows = []
    if not nearest_only:
        bench_load(backend, rows)
    bench_nearest(backend, rows)
    fields = ["backend", "case", "seconds", "peak_mb", "matrix_mb", "file_mb"]
    fields.append("coverage")
    for row in rows:
        print(", ".join(f"{k}={row[k]}" for k in fields if k in row))
    update_csv(
        CSV_PATH,
        fields,
        rows,
        lambda r: (
            r["backend"] == backend
            and not (nearest_only and r["case"].startswith("load_vectors"))
        ),
    )


if __name__ == "__main__":
    main()
