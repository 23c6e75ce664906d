"""Run Keras's own Embedding tests against keras_embedding_plus.

Downloads the source distribution of exactly the installed Keras version from the
package index, extracts `embedding_test.py` and `reversible_embedding_test.py`, and
runs them with `conftest.py` (beside this file) replacing Keras's `Embedding` and
`ReversibleEmbedding` by ours. Usage: `python conformance/run.py [WORKDIR]`.

`python conformance/run.py WORKDIR --while COMMAND...` runs them while COMMAND
runs (tox: the package's own tests), and prints their output after COMMAND's:
they run in one process, as alone, on the core the other command leaves idle
at times. The exit status is the first nonzero of the two.
"""

import pathlib
import subprocess
import sys
import tarfile
import tempfile

import keras

HERE = pathlib.Path(__file__).resolve().parent
TESTS = (
    "keras/src/layers/core/embedding_test.py",
    "keras/src/layers/core/reversible_embedding_test.py",
)


def fetch_tests(version, workdir):
    """The two test files of Keras `version`, extracted under `HERE/_keras_tests`."""
    sdist_dir = workdir / f"keras-{version}-sdist"
    sdists = sorted(sdist_dir.glob(f"keras-{version}.tar.gz"))
    if not sdists:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", f"keras=={version}"]
            + ["--no-binary", ":all:", "--no-deps", "--quiet", "-d", str(sdist_dir)],
            check=True,
        )
        sdists = sorted(sdist_dir.glob(f"keras-{version}.tar.gz"))
    if not sdists:
        raise SystemExit(f"No source distribution of keras=={version} downloaded.")
    out = HERE / "_keras_tests"
    out.mkdir(exist_ok=True)
    paths = []
    with tarfile.open(sdists[0]) as tar:
        for rel in TESTS:
            member = tar.getmember(f"keras-{version}/{rel}")
            target = out / pathlib.Path(rel).name
            target.write_bytes(tar.extractfile(member).read())
            paths.append(target)
    return paths


def main(argv):
    alongside = []
    if "--while" in argv:
        at = argv.index("--while")
        argv, alongside = argv[:at], argv[at + 1 :]
    workdir = pathlib.Path(argv[1] if len(argv) > 1 else HERE / ".cache").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    paths = fetch_tests(keras.__version__, workdir)
    cmd = [sys.executable, "-m", "pytest", "-c", str(HERE / "pytest.ini")]
    cmd += ["--rootdir", str(HERE), "-p", "no:cacheprovider", *map(str, paths)]
    title = f"Keras's own Embedding tests: Keras {keras.__version__}, backend "
    title += keras.backend.backend()
    if not alongside:
        print(title, flush=True)
        return subprocess.call(cmd + argv[2:], cwd=HERE)
    with tempfile.TemporaryFile("w+") as log:
        conformance = subprocess.Popen(
            cmd + argv[2:], cwd=HERE, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            other = subprocess.call(alongside)
        finally:
            status = conformance.wait()
        log.seek(0)
        print(f"\n{title}\n{log.read()}", flush=True)
    return other or status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
