"""Regenerate the saving fixtures in `integration_tests/fixtures/`.

    python scripts/make_fixtures.py                     # the three Keras 3 backends
    python scripts/make_fixtures.py --tf-keras /tmp/tfk/bin/python   # + tf.keras 2
    python scripts/make_fixtures.py --measure   # print the writer x reader diffs

Without arguments it runs itself once per backend (TensorFlow, JAX, PyTorch), each in
a subprocess with `KERAS_BACKEND` set, using the tox interpreters `.tox/<backend>/bin/
python` (or `--python-<backend> PATH`). Each run writes small models holding
`keras_embedding_plus.Embedding` under `fixtures/<backend>/`: `<name>.keras` (and
`masked_lstm.h5`, the legacy format) plus `<name>.npz` with the input ids, the
expected outputs and the expected mask.

The expected outputs come from the writing backend running a twin model built with
`keras.layers.Embedding` and the same weights, not from the code under test (the
writer checks that ours agrees and records the difference in `manifest.json`).

`--tf-keras PYTHON` also writes `fixtures/tf_keras/`: a model saved by tf.keras 2.x
(the `tf-keras` package) as `.h5`, with `Embedding(..., input_length=...)` and a
masked LSTM, and the outputs tf.keras computed. That interpreter needs `tf-keras`
and a matching `tensorflow`, e.g. `python -m venv /tmp/tfk && /tmp/tfk/bin/pip
install tf-keras==2.21.0 tensorflow-cpu==2.21.0`.

Weights are drawn from fixed NumPy seeds, so every regeneration holds the same
weights, ids and outputs (the files' timestamps change).
"""

import argparse
import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "integration_tests" / "fixtures"
BACKENDS = ("tensorflow", "jax", "torch")
SEED = 20240


def _ids(rng, shape, input_dim, pad_tail=True):
    """Ids in `1 .. input_dim-1` with trailing zeros (padding) in some rows."""
    ids = rng.randint(1, input_dim, size=shape).astype("int32")
    if pad_tail:
        for row, n in enumerate((0, 2, 4)):
            if row < shape[0] and n:
                ids[row, -n:] = 0
    return ids


def _set_weights(model, rng):
    """Fill every weight of `model` from `rng` (same values on every backend)."""
    import numpy as np

    model.set_weights(
        [
            rng.uniform(-0.5, 0.5, size=w.shape).astype(np.float32)
            for w in model.get_weights()
        ]
    )


def _models(embedding_cls):
    """name -> (model builder, input ids shape, input_dim) for the fixtures."""
    import keras

    def masked_lstm():
        inputs = keras.Input((6,), dtype="int32", name="ids")
        emb = embedding_cls(20, 4, mask_zero=True, name="emb")(inputs)
        seq = keras.layers.LSTM(3, return_sequences=True, name="lstm")(emb)
        pooled = keras.layers.GlobalAveragePooling1D(name="pool")(emb)
        return keras.Model(inputs, [emb, seq, pooled], name="masked_lstm")

    def sequential_input_length():
        kwargs = {"input_length": 4}
        if embedding_cls is keras.layers.Embedding:
            kwargs = {}  # Keras 3 ignores (and warns about) `input_length`.
        model = keras.Sequential(name="sequential_input_length")
        if embedding_cls is keras.layers.Embedding:
            model.add(keras.Input((4,), dtype="int32"))
        model.add(embedding_cls(30, 5, name="emb", **kwargs))
        model.add(keras.layers.Flatten())
        model.add(keras.layers.Dense(2, name="dense"))
        return model

    def regularized():
        inputs = keras.Input((5,), dtype="int32", name="ids")
        x = embedding_cls(
            15,
            3,
            embeddings_regularizer=keras.regularizers.L2(0.01),
            activity_regularizer=keras.regularizers.L1(0.001),
            embeddings_constraint=keras.constraints.MaxNorm(1.0, axis=1),
            mask_zero=True,
            name="emb",
        )(inputs)
        x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
        return keras.Model(inputs, x, name="regularized")

    return {
        "masked_lstm": (masked_lstm, (3, 6), 20),
        "sequential_input_length": (sequential_input_length, (3, 4), 30),
        "regularized": (regularized, (3, 5), 15),
    }


def _outputs(model, ids):
    import numpy as np

    out = model.predict(ids, verbose=0)
    if not isinstance(out, (list, tuple)):
        out = [out]
    return [np.asarray(o, dtype=np.float32) for o in out]


DYNAMIC_POOL = [*range(-8, 8), 2**31 - 2, -(2**31)]


def write_dynamic(out_dir):
    """`dynamic.keras`: a `DynamicEmbedding` (int32 keys: JAX loads them
    without x64) trained 6 steps, and `dynamic.npz`: its map (keys, counts,
    rows of every key, evictions), its outputs, and its map after 4 more steps
    on the same batches. The map is integers, the same on every backend; the
    outputs are the writing backend's (no Keras twin exists)."""
    import keras
    import numpy as np

    from keras_embedding_plus import DynamicEmbedding
    from keras_embedding_plus.optimizers import LazyAdam

    keras.utils.set_random_seed(SEED)
    rng = np.random.RandomState(SEED + 2)
    pool = np.asarray(DYNAMIC_POOL, "int32")
    batches = np.stack([rng.choice(pool, size=(4, 3)) for _ in range(10)])
    targets = np.linspace(-1, 1, 4, dtype="float32").reshape(4, 1)
    layer = DynamicEmbedding(
        4, 12, key_dtype="int32", eviction="lfu", min_count=2, name="emb"
    )
    model = keras.Sequential(
        [
            keras.Input((3,), dtype="int32"),
            layer,
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(1),
        ]
    )
    # LazyAdam, not Keras's Adam: a `.keras` file saved on torch names Keras's
    # torch-only Adam class (keras.src.backend.torch.optimizers), which no other
    # backend can load (Keras 3.15).
    # jit_compile=False: the file's compile config is the reader's (JAX's
    # default, True, would make torch readers run torch.compile).
    model.compile(LazyAdam(0.05), "mse", jit_compile=False)
    for batch in batches[:6]:
        model.train_on_batch(batch, targets)
    model.save(out_dir / "dynamic.keras")
    probe = pool.reshape(-1, 3)

    def snapshot(suffix):
        return {
            f"keys{suffix}": layer.keys(),
            f"counts{suffix}": layer.counts(),
            f"rows{suffix}": layer.rows_of(pool),
            f"evictions{suffix}": np.asarray(layer.evictions),
        }

    arrays = {"batches": batches, "targets": targets, "probe": probe}
    arrays["outputs"] = model.predict(probe, verbose=0)
    arrays.update(snapshot(""))
    for batch in batches[6:]:
        model.train_on_batch(batch, targets)
    arrays.update(snapshot("_after"))
    np.savez(out_dir / "dynamic.npz", **arrays)
    assert layer.evictions > 0, "the fixture should hold a full map"
    return {"files": ["dynamic.keras"], "held": len(arrays["keys"])}


def write_backend(out_dir, only=None):
    """Write this backend's fixtures (runs inside the per-backend subprocess);
    `only="dynamic"`: the `DynamicEmbedding` fixture alone, the others kept."""
    import keras
    import numpy as np

    import keras_embedding_plus

    backend = keras.backend.backend()
    out_dir.mkdir(parents=True, exist_ok=True)
    if only == "dynamic":
        manifest = json.loads((out_dir / "manifest.json").read_text())
        manifest["fixtures"]["dynamic"] = write_dynamic(out_dir)
        (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        print(f"{backend}: wrote dynamic.keras, dynamic.npz")
        return
    ours_models = _models(keras_embedding_plus.Embedding)
    keras_models = _models(keras.layers.Embedding)
    manifest = {
        "backend": backend,
        "keras": keras.__version__,
        "keras_embedding_plus": keras_embedding_plus.__version__,
        "fixtures": {},
    }
    for name, (build, shape, input_dim) in ours_models.items():
        keras.utils.set_random_seed(SEED)
        rng = np.random.RandomState(SEED)
        ids = _ids(rng, shape, input_dim)
        model = build()
        _set_weights(model, np.random.RandomState(SEED + 1))
        twin = keras_models[name][0]()
        twin.set_weights(model.get_weights())
        expected = _outputs(twin, ids)
        ours = _outputs(model, ids)
        diff = max(
            float(np.max(np.abs(a - b))) for a, b in zip(expected, ours, strict=True)
        )
        files = [f"{name}.keras"]
        model.save(out_dir / f"{name}.keras")
        if name == "masked_lstm":
            files.append(f"{name}.h5")
            model.save(out_dir / f"{name}.h5")
        arrays = {"ids": ids, "mask": ids != 0}
        arrays.update({f"output_{i}": o for i, o in enumerate(expected)})
        np.savez(out_dir / f"{name}.npz", **arrays)
        emb = model.get_layer("emb")
        manifest["fixtures"][name] = {
            "files": files,
            "outputs": len(expected),
            "embedding_config": {
                k: emb.get_config()[k]
                for k in ("input_dim", "output_dim", "mask_zero", "input_length")
            },
            "max_abs_diff_ours_vs_keras_at_write": diff,
        }
        assert diff == 0.0, f"{name}: ours differs from keras.layers.Embedding: {diff}"
    manifest["fixtures"]["dynamic"] = write_dynamic(out_dir)
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"{backend}: wrote {sorted(p.name for p in out_dir.iterdir())}")


def write_tf_keras(out_dir):
    """Write the tf.keras 2.x fixtures (runs under an interpreter with tf-keras).

    `Embedding(20, 4, input_length=6, mask_zero=True)` followed by a masked LSTM
    (`masked_lstm_keras2.h5`) or a masked pooling (`masked_pooling_keras2.h5`),
    then a `Dense`, each with the outputs tf.keras computed.
    """
    import numpy as np
    import tensorflow as tf
    import tf_keras

    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = {
        "writer": "tf_keras",
        "tf_keras": tf_keras.__version__,
        "tensorflow": tf.__version__,
        "fixtures": {},
    }
    masked_layers = {
        "masked_lstm_keras2": lambda: tf_keras.layers.LSTM(3, return_sequences=True),
        "masked_pooling_keras2": tf_keras.layers.GlobalAveragePooling1D,
    }
    for name, masked_layer in masked_layers.items():
        tf_keras.utils.set_random_seed(SEED)
        ids = _ids(np.random.RandomState(SEED), (3, 6), 20)
        model = tf_keras.Sequential(
            [
                tf_keras.layers.Embedding(20, 4, input_length=6, mask_zero=True),
                masked_layer(),
                tf_keras.layers.Dense(2),
            ]
        )
        _set_weights(model, np.random.RandomState(SEED + 1))
        outputs = model.predict(ids, verbose=0).astype(np.float32)
        model.save(out_dir / f"{name}.h5", save_format="h5")
        np.savez(
            out_dir / f"{name}.npz",
            ids=ids,
            mask=ids != 0,
            output_0=outputs,
            embeddings=model.layers[0].get_weights()[0],
        )
        manifest["fixtures"][name] = {"files": [f"{name}.h5"], "outputs": 1}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"tf_keras {tf_keras.__version__}: wrote {sorted(manifest['fixtures'])}")


def measure_backend():
    """Load every writer's fixtures here; print the max abs differences as JSON."""
    import keras
    import numpy as np

    import keras_embedding_plus  # noqa: F401  (registers the layer)

    result = {}
    for writer in BACKENDS:
        manifest = json.loads((FIXTURES / writer / "manifest.json").read_text())
        for name, entry in manifest["fixtures"].items():
            data = np.load(FIXTURES / writer / f"{name}.npz")
            if name == "dynamic":
                expected, ids = [data["outputs"]], data["probe"]
            else:
                expected = [data[f"output_{i}"] for i in range(entry["outputs"])]
                ids = data["ids"]
            for file in entry["files"]:
                model = keras.models.load_model(FIXTURES / writer / file)
                received = _outputs(model, ids)
                result[f"{writer}/{file}"] = max(
                    float(np.max(np.abs(a - b)))
                    for a, b in zip(expected, received, strict=True)
                )
    print("MEASURED", json.dumps(result))


def _run(python, args, env):
    print("+", python, *args, flush=True)
    subprocess.run([python, __file__, *args], env=env, check=True, cwd=ROOT)


def _env(backend):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    # The working tree's package, whatever each interpreter has installed.
    env["PYTHONPATH"] = str(ROOT)
    return env


def _measure(args):
    rows = {}
    for backend in args.backends:
        python = getattr(args, f"python_{backend}")
        out = subprocess.run(
            [python, __file__, "--measure-here"],
            env=_env(backend),
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        line = next(x for x in out.splitlines() if x.startswith("MEASURED "))
        rows[backend] = json.loads(line[len("MEASURED ") :])
    files = sorted(next(iter(rows.values())))
    print("| fixture (writer/file) | " + " | ".join(rows) + " |")
    print("|---|" + "---|" * len(rows))
    for file in files:
        cells = " | ".join(f"{rows[b][file]:.1e}" for b in rows)
        print(f"| {file} | {cells} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", choices=BACKENDS, help=argparse.SUPPRESS)
    parser.add_argument("--write-tf-keras", action="store_true", help=argparse.SUPPRESS)
    for backend in BACKENDS:
        parser.add_argument(
            f"--python-{backend}",
            default=str(ROOT / ".tox" / backend / "bin" / "python"),
            help=f"interpreter with Keras and {backend} (default: the tox env)",
        )
    parser.add_argument(
        "--tf-keras", metavar="PYTHON", help="interpreter with tf-keras (optional)"
    )
    parser.add_argument(
        "--backends", nargs="*", default=list(BACKENDS), choices=BACKENDS
    )
    parser.add_argument(
        "--measure",
        action="store_true",
        help="write nothing: load every fixture on each backend, print the max "
        "abs differences (writer x reader)",
    )
    parser.add_argument("--measure-here", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--only",
        choices=["dynamic"],
        help="write one fixture, keep the others (and their manifest entries)",
    )
    args = parser.parse_args()
    if args.write:
        os.environ.setdefault("KERAS_BACKEND", args.write)
        import keras

        got = keras.backend.backend()
        assert got == args.write, f"asked for {args.write}, running {got}"
        write_backend(FIXTURES / args.write, args.only)
        return
    if args.write_tf_keras:
        write_tf_keras(FIXTURES / "tf_keras")
        return
    if args.measure_here:
        measure_backend()
        return
    if args.measure:
        _measure(args)
        return
    for backend in args.backends:
        only = ["--only", args.only] if args.only else []
        _run(
            getattr(args, f"python_{backend}"),
            ["--write", backend, *only],
            _env(backend),
        )
    if args.tf_keras:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1")
        _run(args.tf_keras, ["--write-tf-keras"], env)
    for path in sorted(FIXTURES.rglob("*")):
        if path.is_file():
            print(f"{path.relative_to(FIXTURES)}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
