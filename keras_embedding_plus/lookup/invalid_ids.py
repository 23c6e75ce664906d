"""Invalid ids met where their values are unknown: counted, reported, or raised.

Where the ids' values are known (eager calls), an invalid id raises `ValueError`
(`index_policy`). Inside compiled calls (`tf.function`, `jax.jit`, Keras's
compiled `fit` / `evaluate` / `predict`) it looks up a zero row, and the layer's
`invalid_ids` argument says what else happens:

* `"zero"` (the default): the layer's `InvalidIdsCount` metric counts it, in the
  compiled step, without a host sync: the count shows in `fit` / `evaluate` logs
  and history as `"<layer name>_invalid_ids"`, and a warning naming the layer, the
  count and the valid range is given once per epoch (when Keras reads the count
  at the end of the epoch, between two resets) where the count is not 0;
* `"raise"`: the compiled step fails with an error naming the layer and the
  valid range (TensorFlow: a graph assert; JAX: a host callback that raises;
  PyTorch under `torch.compile`: a data-dependent check, run eagerly there).

The count lives in the backend (`backends.ids.new_counter`): a Keras metric
variable, updated in the graph on TensorFlow and PyTorch; on JAX, whose trainer
runs the forward without the metrics' variables, the forward's count waits on
the metric until the same traced step reads its `result()` with its variable
mapped, and is added there (`backends.jax.ids`).
"""

import warnings

import keras
import numpy as np
from keras import ops

from keras_embedding_plus.backends import ids as backend_ids

POLICIES = ("zero", "raise")
DEFAULT = "zero"


def check_policy(value):
    """`value` if it names a policy of `POLICIES`, else a `ValueError`."""
    if not isinstance(value, str) or value not in POLICIES:
        raise ValueError(
            f"`invalid_ids` must be one of {', '.join(map(repr, POLICIES))}. "
            f"Received: invalid_ids={value!r} (of type {type(value).__name__})."
        )
    return value


def valid_range(input_dim):
    """The valid ids, in words."""
    return f"the integers 0 to {input_dim - 1} (input_dim={input_dim})"


class InvalidIdsCount(keras.metrics.Metric):
    """The number of invalid ids a layer met in compiled calls since the last reset.

    Held by each layer and listed in its `metrics`, so Keras resets it at each
    epoch and reports it in `fit` / `evaluate` logs and history, under the name
    `"<layer name>_invalid_ids"`. Eager calls never count: an invalid id raises
    `ValueError` there.

    Args:
        layer_name: The name of the layer that owns it.
        input_dim: The layer's number of rows.
        policy: `"zero"` (count and warn) or `"raise"` (fail the compiled step).
    """

    def __init__(self, layer_name: str, input_dim: int, policy: str = DEFAULT) -> None:
        super().__init__(name=f"{layer_name}_invalid_ids")
        self.layer_name = layer_name
        self.input_dim = input_dim
        self.policy = check_policy(policy)
        self.counter = backend_ids.new_counter(self)
        self.read_marker = None
        self.warned = False

    def error_text(self):
        """What a compiled step that met invalid ids fails with (`"raise"`)."""
        # No quotes: TensorFlow's assert escapes them.
        return (
            f"Layer {self.layer_name} met invalid embedding ids in a compiled "
            f"call, with invalid_ids=raise: valid ids are "
            f"{valid_range(self.input_dim)}."
        )

    def mark_steps_by(self, variable) -> None:
        """Use `variable` (one of the layer's) to tell one traced step from the next.

        Inside a step of Keras's JAX trainer its value is a traced value, the same
        throughout that step's forward and new in the next (`backends.jax.ids`).

        Args:
            variable: A variable of the layer, read in every forward.
        """
        # A function, not the variable: a variable set on a metric would
        # become one of the metric's own variables.
        self.read_marker = lambda: variable.value

    def discard_pending(self) -> None:
        """Forget a count that no metric update will follow (a forward traced
        only for its shapes); nothing to forget on TensorFlow and PyTorch."""
        backend_ids.discard_pending(self.counter)

    def update_state(self, valid: keras.KerasTensor) -> None:
        """Count the invalid ids of a traced call (`valid`: which ids are valid).

        Args:
            valid: Boolean tensor marking the valid ids.
        """
        error = self.error_text() if self.policy == "raise" else None
        marker = None if self.read_marker is None else self.read_marker()
        backend_ids.count_invalid(self.counter, valid, error, marker)

    def result(self) -> keras.KerasTensor:
        """The count since the last reset; read eagerly with a count above 0,
        it also warns (once between two resets).

        Returns:
            The count, a scalar.
        """
        value = backend_ids.read_count(self.counter)
        if not self.warned and backend_ids.is_concrete(value):
            count = int(np.asarray(ops.convert_to_numpy(value)))
            if count:
                self.warned = True
                self._warn(count)
        return value

    def _warn(self, count):
        text = (
            f"Layer '{self.layer_name}' met {count} invalid embedding ids in "
            f"compiled calls since its count was last reset (each epoch): they "
            f"looked up zero rows. Valid ids are {valid_range(self.input_dim)}. "
            f"Pass invalid_ids='raise' to stop at the first one."
        )
        # No registry: one warning per epoch, even when counts repeat (the
        # default filter would show a repeated text once per process).
        warnings.warn_explicit(
            text, UserWarning, __file__, 0, module=__name__, registry=None
        )

    def reset_state(self) -> None:
        """Set the count to 0 (Keras calls this at the start of each epoch)."""
        backend_ids.reset_count(self.counter)
        self.warned = False

    def get_config(self) -> dict:
        """The metric's config.

        Returns:
            A dict of its constructor arguments.
        """
        return {
            "layer_name": self.layer_name,
            "input_dim": self.input_dim,
            "policy": self.policy,
        }
