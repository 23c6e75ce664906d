"""Check what the wheel and the sdist in a folder hold (tox env `package`).

Usage: `python scripts/check_dist.py DIST_DIR`. Fails unless the folder holds one
wheel and one sdist, both with the package's modules and `py.typed` (PEP 561).
"""

import sys
import tarfile
import zipfile
from pathlib import Path


def main(dist):
    wheels = sorted(dist.glob("*.whl"))
    sdists = sorted(dist.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, (wheels, sdists)
    with zipfile.ZipFile(wheels[0]) as f:
        wheel = set(f.namelist())
    with tarfile.open(sdists[0]) as f:
        sdist = {name.split("/", 1)[1] for name in f.getnames() if "/" in name}
    for names, what in ((wheel, wheels[0].name), (sdist, sdists[0].name)):
        for required in (
            "keras_embedding_plus/__init__.py",
            "keras_embedding_plus/layers/embedding.py",
            "keras_embedding_plus/lookup/pipeline.py",
            "keras_embedding_plus/backends/jax/__init__.py",
            "keras_embedding_plus/saving/loading.py",
            "keras_embedding_plus/vectors/pretrained.py",
            # The tests import their helpers from the installed package.
            "keras_embedding_plus/testing/__init__.py",
            "keras_embedding_plus/py.typed",
        ):
            assert required in names, f"{what} lacks {required}"
        print(what, len(names), "files, py.typed included")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
