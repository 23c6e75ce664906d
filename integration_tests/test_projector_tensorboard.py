"""`export_projector`'s files as TensorBoard itself reads them.

Starts a real `tensorboard --logdir` on a table written by `export_projector`,
asks the projector plugin's HTTP endpoints for it (the same requests the
projector page makes) and compares what TensorBoard serves with the layer's own
table and vocabulary. Then opens the projector page in headless Chromium and saves
a screenshot (`KEP_UPDATE_SCREENSHOT=1` copies it to `docs/assets/projector.png`,
the picture the docs show).

TensorBoard is installed in the tox `tensorflow` environment and Chromium by
`.ci/run`; where either is missing, its part skips and says so.
"""

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_embedding_plus import Embedding, export_projector

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "docs" / "assets" / "projector.png"
WORDS = (
    "the a of and to in is it movie film good great fine bad awful boring plot "
    "actor actress scene music story ending funny sad long short love hate best "
    "worst king queen man woman boy girl cat dog red blue green one two three four "
    "five six seven eight nine ten"
).split()
NO_TENSORBOARD = "TensorBoard is not installed (the tox env `tensorflow` installs it)"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A trained-looking table, exported; its values and tokens."""
    keras.utils.set_random_seed(0)
    layer = Embedding(len(WORDS), 16, name="word_vectors")
    layer.build()
    table = keras.ops.convert_to_numpy(layer.embeddings)
    log_dir = tmp_path_factory.mktemp("logs")
    export_projector(layer, log_dir, WORDS)
    return log_dir, table


@pytest.fixture(scope="module")
def tensorboard(exported):
    """The base URL of a real TensorBoard serving `exported`'s log dir."""
    if importlib.util.find_spec("tensorboard") is None:
        pytest.skip(NO_TENSORBOARD)
    log_dir, _ = exported
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(log_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"tensorboard exited: {process.stderr.read()[-2000:]}")
            try:
                runs = json.loads(_get(base + "/data/plugin/projector/runs"))
                if runs:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail("tensorboard served no projector run within 120 s")
            time.sleep(0.5)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stderr.close()


def _projector(base, route, **params):
    query = urllib.parse.urlencode({"run": ".", **params})
    return _get(f"{base}/data/plugin/projector/{route}?{query}")


def test_tensorboard_serves_the_exported_table(tensorboard, exported):
    _, table = exported
    assert json.loads(_get(tensorboard + "/data/plugin/projector/runs")) == ["."]
    config = json.loads(_projector(tensorboard, "info"))
    (embedding,) = config["embeddings"]
    assert embedding["tensorName"] == "word_vectors"
    # TensorBoard reads the shape from vectors.tsv itself.
    assert [int(n) for n in embedding["tensorShape"]] == list(table.shape)
    served = np.frombuffer(
        _projector(tensorboard, "tensor", name="word_vectors"), dtype="float32"
    )
    np.testing.assert_array_equal(served.reshape(table.shape), table)
    metadata = _projector(tensorboard, "metadata", name="word_vectors")
    assert metadata.decode("utf-8").splitlines() == WORDS


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_projector_page_screenshot(tensorboard, tmp_path):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed (.ci/run installs Debian's chromium)")
    png = tmp_path / "projector.png"
    command = [
        chromium,
        "--headless",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--use-angle=swiftshader",  # WebGL without a GPU
        "--enable-unsafe-swiftshader",
        "--hide-scrollbars",
        "--window-size=1280,800",
        "--virtual-time-budget=20000",
        f"--screenshot={png}",
        tensorboard + "/#projector",
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=180, check=False
    )
    assert png.exists(), (result.returncode, result.stderr[-3000:])
    from matplotlib import image

    pixels = image.imread(png)
    assert pixels.shape[:2] == (800, 1280), pixels.shape
    # Not a blank page: TensorBoard's projector draws its panels and points.
    colors = np.unique(pixels.reshape(-1, pixels.shape[-1]).round(2), axis=0)
    assert len(colors) > 20, len(colors)
    if os.environ.get("KEP_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(png, SCREENSHOT)
