"""Test setup shared by every backend, for tests/ and integration_tests/.

Only the environment (device counts, torch.compile's recompile limit), the autouse
seed fixture and the Hypothesis profiles; the tests' helpers are in
`keras_embedding_plus.testing`, and no test imports this file.

Runs before any test module imports a backend, so that the device-count flags take
effect: 8 virtual CPU devices for JAX, 2 logical CPU devices for TensorFlow.
"""

import os

_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

import keras  # noqa: E402
import pytest  # noqa: E402

_backend = keras.backend.backend()

if _backend == "tensorflow":
    import tensorflow as tf

    _cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )
elif _backend == "torch":
    import torch

    # Past its recompile limit, torch.compile runs the frame eagerly without a
    # word, and a test of the compiled path would test the eager one: fail.
    torch._dynamo.config.fail_on_recompile_limit_hit = True


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same seeds and a fresh Keras session."""
    # Without `gc.collect()` (`free_memory=False`): a full collection before
    # every test took half of the suite's time on JAX (1-3 s each, 1,000 times).
    # On torch, `clear_session` also resets Dynamo: parametrized tests reuse one
    # lambda's code, and past torch's recompile limit `compiled` would silently
    # run eagerly.
    keras.backend.clear_session(free_memory=False)
    keras.utils.set_random_seed(1337)
    yield


# Hypothesis profiles (tests/test_properties.py): "fast" in `python -m tox`,
# derandomized so that every CI run tries the same cases; "deep" for a separate
# run: `HYPOTHESIS_PROFILE=deep python -m tox -e jax -- tests/test_properties.py`.
try:
    from hypothesis import HealthCheck, Phase, settings

    _quiet = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
    # No "explain" phase: re-running a failing case per line costs minutes here.
    _phases = [Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink]
    settings.register_profile(
        "fast",
        # 7 a test: the matrix's 20-minute budget (20 took ~25 s more a
        # backend on JAX and PyTorch); the "deep" profile below runs 600.
        max_examples=7,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=_quiet,
        phases=_phases,
    )
    settings.register_profile(
        "deep",
        max_examples=600,
        deadline=None,
        suppress_health_check=_quiet,
        phases=_phases,
    )
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))
except ImportError:  # The property tests skip themselves without Hypothesis.
    pass
