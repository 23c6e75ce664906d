"""Write the release regression fixtures of keras_embedding_plus 0.1.0.

    python scripts/make_release_fixtures.py             # the three Keras 3 backends
    python scripts/make_release_fixtures.py --measure   # print writer x reader diffs

Files saved by this release, which later releases must keep loading with the same
outputs on every backend (`integration_tests/test_saving_release_fixtures.py`).
Without arguments the script runs itself once per backend (TensorFlow, JAX,
PyTorch), each in a subprocess with `KERAS_BACKEND` set, using the tox interpreters
`.tox/<backend>/bin/python` (or `--python-<backend> PATH`). Each run writes
`integration_tests/fixtures/<version>/<backend>/`:

* for every model of `_models()`, the model saved in three formats:
  `<name>.keras`, `<name>.weights.h5` with its architecture `<name>.json`
  (`model.to_json()`), and the legacy `<name>.h5`. A format this release refuses
  to write, or to load back, is recorded in `manifest.json` with the error (type
  and text) instead (0.1.0 with Keras 3.15.1 refuses none);
* `<name>.npz`: the input ids (`ids`); the outputs this release computes on the
  writing backend from each file loaded back (`keras_output_<i>`,
  `weights_h5_output_<i>`, `h5_output_<i>`) and from the model before saving
  (`live_output_<i>`); for the model saved with its optimizer, the optimizer's
  variables (`optimizer_<i>`). The loaded outputs differ from the live ones only
  for LoRA, on PyTorch, by float32 rounding: `.keras` and `.weights.h5` hold the
  adapter merged into the table (rounded once more than the per-row
  `table + scale * A @ B`), while the legacy `.h5` holds table, A and B as they
  are. The manifest gives each file's `max_abs_diff_vs_live`;
* `manifest.json`: the writer backend, the Keras and package versions, and for each
  model its files, what each holds, and the refusals.

The expected outputs are what the code of this release computes, not a reference
implementation: the fixtures pin 0.1.0's behaviour. The script refuses to run
under any other version of the package (it would overwrite them with another
release's files).

Weights are drawn from fixed NumPy seeds and set with `set_weights`, so every
backend's files hold the same float values (quantized tables are quantized by this
release, on the host, from those values).
"""

import argparse
import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VERSION = "0.1.0"
FIXTURES = ROOT / "integration_tests" / "fixtures" / VERSION
BACKENDS = ("tensorflow", "jax", "torch")
FORMATS = ("keras", "weights.h5", "h5")
SEED = 20250101


def _uniform(rng, shape, scale=0.5):
    import numpy as np

    return rng.uniform(-scale, scale, size=shape).astype(np.float32)


def _fill(model, rng):
    """Every weight of `model` from `rng` (the same values on every backend)."""
    model.set_weights([_uniform(rng, w.shape) for w in model.get_weights()])


def _ids(rng, shape, input_dim, low=0):
    return rng.randint(low, input_dim, size=shape).astype("int32")


def _models():
    """name -> builder; a builder takes a NumPy `RandomState` and returns
    `(model, ids, description)`, the model holding its final weights."""
    import keras
    import numpy as np

    import keras_embedding_plus as kep

    def ids_input(length, name="ids"):
        return keras.Input((length,), dtype="int32", name=name)

    def plain(rng):
        inputs = ids_input(5)
        x = kep.Embedding(30, 6, name="emb")(inputs)
        x = keras.layers.Flatten(name="flatten")(x)
        outputs = keras.layers.Dense(3, name="dense")(x)
        model = keras.Model(inputs, [x, outputs], name="plain")
        _fill(model, rng)
        return model, _ids(rng, (4, 5), 30), "Embedding(30, 6) -> Flatten -> Dense(3)"

    def lora(rng):
        model = keras.Sequential(
            [
                ids_input(5),
                kep.Embedding(30, 6, lora_rank=2, lora_alpha=4.0, name="emb"),
            ],
            name="lora",
        )
        # [table, lora_embeddings_a, lora_embeddings_b]: B non-zero, so the
        # adapter's delta (scaled by lora_alpha / lora_rank = 2) is in the outputs.
        _fill(model, rng)
        layer = model.get_layer("emb")
        assert layer.lora_enabled
        assert np.abs(keras.ops.convert_to_numpy(layer.lora_embeddings_b)).min() > 0
        return (
            model,
            _ids(rng, (4, 5), 30),
            "Embedding(30, 6, lora_rank=2, lora_alpha=4), B non-zero; saving merges "
            "the adapter into the table and loading restarts B at zero",
        )

    def quantized(mode, config=None):
        def build(rng):
            inputs = ids_input(5)
            x = kep.Embedding(32, 8, name="emb")(inputs)
            outputs = keras.layers.Dense(3, name="dense")(x)
            model = keras.Model(inputs, [x, outputs], name=f"quantized_{mode}")
            _fill(model, rng)
            model.get_layer("emb").quantize(mode, config=config)
            return model, _ids(rng, (4, 5), 32), None

        return build

    def int8(rng):
        model, ids, _ = quantized("int8")(rng)
        return model, ids, "Embedding(32, 8).quantize('int8') -> Dense(3)"

    def int4(rng):
        config = keras.quantizers.Int4QuantizationConfig(block_size=4)
        model, ids, _ = quantized("int4", config)(rng)
        policy = model.get_layer("emb").dtype_policy.name
        assert policy == "int4/4_from_float32", policy
        return (
            model,
            ids,
            "Embedding(32, 8).quantize('int4', Int4QuantizationConfig(block_size=4)) "
            "-> Dense(3): grouped int4, 2 groups a row",
        )

    def padding_idx(rng):
        model = keras.Sequential(
            [ids_input(6), kep.Embedding(25, 5, padding_idx=3, name="emb")],
            name="padding_idx",
        )
        table = _uniform(rng, (25, 5))
        table[3] = 0.0  # The padding row as the layer builds it.
        model.set_weights([table])
        ids = _ids(rng, (4, 6), 25)
        ids[:, -2:] = 3
        return model, ids, "Embedding(25, 5, padding_idx=3), row 3 zeros"

    def bag(rng):
        inputs = ids_input(6)
        x = kep.EmbeddingBag(30, 6, combiner="mean", padding_idx=0, name="emb")(inputs)
        outputs = keras.layers.Dense(2, name="dense")(x)
        model = keras.Model(inputs, [x, outputs], name="embedding_bag")
        table = _uniform(rng, (30, 6))
        table[0] = 0.0
        model.set_weights([table, *(_uniform(rng, w.shape) for w in model.weights[1:])])
        ids = _ids(rng, (4, 6), 30, low=1)
        ids[1, -2:] = 0
        ids[2, -4:] = 0
        ids[3, :] = 0  # An empty bag: zeros.
        return model, ids, "EmbeddingBag(30, 6, combiner='mean', padding_idx=0)"

    def reversible(rng):
        inputs = ids_input(5)
        layer = kep.ReversibleEmbedding(24, 6, name="emb")
        untied = kep.ReversibleEmbedding(
            24, 6, tie_weights=False, logit_soft_cap=2.0, name="emb_untied"
        )
        vectors = layer(inputs)
        logits = layer(vectors, reverse=True)
        untied_vectors = untied(inputs)
        untied_logits = untied(untied_vectors, reverse=True)
        model = keras.Model(
            inputs,
            [vectors, logits, untied_vectors, untied_logits],
            name="reversible",
        )
        _fill(model, rng)
        return (
            model,
            _ids(rng, (3, 5), 24),
            "ReversibleEmbedding(24, 6) tied: ids -> vectors -> reverse=True logits; "
            "and tie_weights=False, logit_soft_cap=2.0",
        )

    def lazy_adam(rng):
        inputs = ids_input(5)
        x = kep.Embedding(40, 4, sparse=True, name="emb")(inputs)
        x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
        outputs = keras.layers.Dense(1, name="dense")(x)
        model = keras.Model(inputs, outputs, name="lazy_adam")
        _fill(model, rng)
        # A loss object, not "mse": Keras 3.15 cannot load a legacy `.h5` compiled
        # with the string ("Could not deserialize 'keras.metrics.mse'"), with any
        # layers (its bug, not this package's).
        model.compile(
            optimizer=kep.optimizers.LazyAdam(0.01),
            loss=keras.losses.MeanSquaredError(),
        )
        train_ids = _ids(rng, (8, 5), 40)
        targets = _uniform(rng, (8, 1))
        model.fit(train_ids, targets, batch_size=4, epochs=1, verbose=0, shuffle=False)
        assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 2
        return (
            model,
            _ids(rng, (4, 5), 40),
            "Embedding(40, 4, sparse=True) -> mean -> Dense(1), compiled with "
            "optimizers.LazyAdam(0.01) and fitted 2 steps; saved with its optimizer",
        )

    return {
        "plain": plain,
        "lora": lora,
        "quantized_int8": int8,
        "quantized_int4": int4,
        "padding_idx": padding_idx,
        "embedding_bag": bag,
        "reversible": reversible,
        "lazy_adam": lazy_adam,
    }


def outputs(model, ids):
    """`model(ids)` as a list of float32 NumPy arrays (no `predict`: faster)."""
    import keras
    import numpy as np

    out = model(ids, training=False)
    if not isinstance(out, (list, tuple)):
        out = [out]
    return [np.asarray(keras.ops.convert_to_numpy(o), dtype=np.float32) for o in out]


def optimizer_values(model):
    import keras
    import numpy as np

    return [
        np.asarray(keras.ops.convert_to_numpy(v)) for v in model.optimizer.variables
    ]


def output_key(fmt):
    """The npz key prefix of the outputs of a file of format `fmt`."""
    return fmt.replace(".", "_") + "_output"


def load(directory, name, fmt):
    """Load `<name>.<fmt>` with the public API of this release."""
    import keras

    import keras_embedding_plus as kep

    if fmt == "weights.h5":
        model = keras.models.model_from_json((directory / f"{name}.json").read_text())
        kep.load_weights(model, directory / f"{name}.weights.h5")
        return model
    return kep.load_model(directory / f"{name}.{fmt}")


def _save(model, directory, name, fmt):
    if fmt == "weights.h5":
        (directory / f"{name}.json").write_text(model.to_json())
        model.save_weights(directory / f"{name}.weights.h5")
    else:
        model.save(directory / f"{name}.{fmt}")


def _files(name, fmt):
    return (
        [f"{name}.json", f"{name}.weights.h5"]
        if fmt == "weights.h5"
        else [f"{name}.{fmt}"]
    )


def _holds(model, fmt, optimizer_kept):
    """What a file of `fmt` holds (Keras 3.15: `to_json` has the compile config,
    `save_weights` the optimizer's variables)."""
    text = {
        "keras": "architecture, compile config and weights",
        "weights.h5": "weights; the architecture and compile config in the .json",
        "h5": "legacy HDF5: architecture, compile config and weights",
    }[fmt]
    if getattr(model, "optimizer", None) is not None:
        text += (
            "; the optimizer's variables load with it"
            if optimizer_kept
            else "; the optimizer's variables do not load with it"
        )
    return text


def _layers(model):
    """The package's layers of `model`: name -> class, dtype policy, LoRA."""
    import keras_embedding_plus as kep

    return {
        layer.name: {
            "class": type(layer).__name__,
            "dtype_policy": layer.dtype_policy.name,
            "lora_enabled": layer.lora_enabled,
        }
        for layer in model.layers
        if isinstance(layer, kep.Embedding)
    }


def write_backend(out_dir):
    """Write this backend's fixtures (runs inside the per-backend subprocess)."""
    import keras
    import numpy as np

    import keras_embedding_plus

    backend = keras.backend.backend()
    if keras_embedding_plus.__version__ != VERSION:
        raise SystemExit(
            f"These are the fixtures of release {VERSION}; this is "
            f"keras_embedding_plus {keras_embedding_plus.__version__}."
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.iterdir():
        old.unlink()
    manifest = {
        "writer_backend": backend,
        "keras": keras.__version__,
        "keras_embedding_plus": keras_embedding_plus.__version__,
        "formats": list(FORMATS),
        "models": {},
    }
    for index, (name, build) in enumerate(_models().items()):
        keras.backend.clear_session()
        keras.utils.set_random_seed(SEED + index)
        model, ids, description = build(np.random.RandomState(SEED + index))
        live = outputs(model, ids)
        arrays = {"ids": ids}
        arrays.update({f"live_output_{i}": o for i, o in enumerate(live)})
        has_optimizer = getattr(model, "optimizer", None) is not None
        if has_optimizer:
            saved_opt = optimizer_values(model)
            arrays.update({f"optimizer_{i}": v for i, v in enumerate(saved_opt)})
        entry = {
            "description": description,
            "outputs": len(live),
            "layers": _layers(model),
            "optimizer_variables": (
                [v.path for v in model.optimizer.variables] if has_optimizer else None
            ),
            "formats": {},
        }
        for fmt in FORMATS:
            try:
                _save(model, out_dir, name, fmt)
            except Exception as e:  # noqa: BLE001 - recorded, checked by the test
                for file in _files(name, fmt):
                    (out_dir / file).unlink(missing_ok=True)
                entry["formats"][fmt] = {
                    "refused": {"type": type(e).__name__, "message": str(e)}
                }
                continue
            try:
                loaded = load(out_dir, name, fmt)
            except Exception as e:  # noqa: BLE001 - recorded, checked by the test
                entry["formats"][fmt] = {
                    "files": _files(name, fmt),
                    "load_refused": {"type": type(e).__name__, "message": str(e)},
                }
                continue
            received = outputs(loaded, ids)
            key = output_key(fmt)
            arrays.update({f"{key}_{i}": o for i, o in enumerate(received)})
            optimizer_kept = None
            if has_optimizer:
                opt = getattr(loaded, "optimizer", None)
                optimizer_kept = opt is not None and len(opt.variables) == len(
                    saved_opt
                )
                if optimizer_kept:
                    optimizer_kept = all(
                        np.array_equal(a, b)
                        for a, b in zip(
                            saved_opt, optimizer_values(loaded), strict=True
                        )
                    )
            entry["formats"][fmt] = {
                "files": _files(name, fmt),
                "holds": _holds(model, fmt, optimizer_kept),
                "optimizer_state": optimizer_kept,
                "outputs": key,
                "max_abs_diff_vs_live": max(
                    float(np.max(np.abs(a - b)))
                    for a, b in zip(live, received, strict=True)
                ),
            }
        np.savez_compressed(out_dir / f"{name}.npz", **arrays)
        manifest["models"][name] = entry
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"{backend}: wrote {sorted(p.name for p in out_dir.iterdir())}")


def measure_backend():
    """Load every writer's fixtures here; print the max abs differences as JSON."""
    import numpy as np

    result = {}
    for writer in BACKENDS:
        directory = FIXTURES / writer
        manifest = json.loads((directory / "manifest.json").read_text())
        for name, entry in manifest["models"].items():
            data = np.load(directory / f"{name}.npz")
            for fmt, info in entry["formats"].items():
                if "outputs" not in info:
                    continue
                n = entry["outputs"]
                expected = [data[f"{info['outputs']}_{i}"] for i in range(n)]
                received = outputs(load(directory, name, fmt), data["ids"])
                result[f"{writer}/{name}.{fmt}"] = max(
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
    worst = max(max(r.values()) for r in rows.values())
    print(f"max over all writer x reader pairs: {worst:.3e}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", choices=BACKENDS, help=argparse.SUPPRESS)
    for backend in BACKENDS:
        parser.add_argument(
            f"--python-{backend}",
            default=str(ROOT / ".tox" / backend / "bin" / "python"),
            help=f"interpreter with Keras and {backend} (default: the tox env)",
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
    args = parser.parse_args()
    if args.write:
        os.environ.setdefault("KERAS_BACKEND", args.write)
        import keras

        got = keras.backend.backend()
        assert got == args.write, f"asked for {args.write}, running {got}"
        write_backend(FIXTURES / args.write)
        return
    if args.measure_here:
        measure_backend()
        return
    if args.measure:
        _measure(args)
        return
    for backend in args.backends:
        _run(getattr(args, f"python_{backend}"), ["--write", backend], _env(backend))
    total = 0
    for path in sorted(FIXTURES.rglob("*")):
        if path.is_file():
            total += path.stat().st_size
            print(f"{path.relative_to(FIXTURES)}: {path.stat().st_size} bytes")
    print(f"total: {total} bytes")


if __name__ == "__main__":
    main()
