"""The peers of `bench_dynamic.py`: other libraries' dynamic embeddings, each
wrapped as an object with `lookup(keys)` and `train_step(keys, targets)`, so
that the benchmark can interleave them with `keras_embedding_plus`'s
`DynamicEmbedding`. Nothing is timed here.

* `torchrec_mch`: TorchRec's `MCHManagedCollisionModule` (sorted zero-collision
  hashing) in front of a `torch.nn.Embedding`. Runs in the venv
  `/work/peers/torchrec` (see `peers_README.md`).
* `tfkeras_dynamic`: tf-keras's experimental `DynamicEmbedding`. Runs in the
  venv `/work/peers/tfkeras`.

Both train the same model as the benchmark's `ours`: embedding of a
`(batch, ids)` int64 key batch -> mean over the ids -> `Dense(1)` -> MSE ->
one Adam step (learning rate 1e-3), table rows initialized uniformly in
[-0.05, 0.05] (Keras's `"uniform"`). Each module imports only its own
framework, inside its function, so this file loads in either venv.
"""

import numpy as np

# The keys of one benchmark batch: 4096 rows x 8 ids.
BATCH_KEYS = 4096 * 8
# Keras's "uniform" initializer: U(-0.05, 0.05).
INIT_LIMIT = 0.05


def _prefill_chunks(fill_keys, chunk):
    """`fill_keys` (unique int64) in chunks of exactly `chunk` keys; the last
    chunk (or the only one) is completed by repeating its own keys, so that every
    key is met in exactly one chunk and no other key is."""
    fill_keys = np.asarray(fill_keys, dtype=np.int64).ravel()
    for start in range(0, fill_keys.size, chunk):
        part = fill_keys[start : start + chunk]
        yield part if part.size == chunk else np.resize(part, chunk)


# ---- TorchRec -----------------------------------------------------------------


def torchrec_mch(
    capacity,
    dim,
    fill_keys,
    seed=0,
    *,
    batch_keys=BATCH_KEYS,
    eviction_interval=1,
    sparse=False,
):
    """TorchRec's managed-collision remap in front of `nn.Embedding(capacity, dim)`.

    Peer API: `torchrec.modules.mc_modules.MCHManagedCollisionModule(
    zch_size=capacity, eviction_policy=DistanceLFU_EvictionPolicy(),
    eviction_interval=eviction_interval, input_hash_size=2**63 - 1)` (no input
    hash: raw ids are the keys), called on `{"f": JaggedTensor}`. TorchRec has
    no default policy argument; `DistanceLFU_EvictionPolicy()` (decay exponent
    1) is the one its own `McEmbeddingCollectionAdapter` ("sort_zch") builds.
    The embedding is a plain `torch.nn.Embedding`: unsharded TorchRec's
    `ManagedCollisionEmbeddingCollection` never resets evicted rows (its
    `evict` is a no-op), so the adapter does what the sharded one does: the
    rows `evict()` reports (evicted keys' rows and formerly free rows now
    given to keys) get fresh initial values and zero optimizer state, after
    the optimizer step.

    Semantics vs `keras_embedding_plus.DynamicEmbedding`:

    * keys: int64 only; `2**63 - 1` marks free slots (as ours). The last row
      (`capacity - 1`) is TorchRec's shared, trainable row for every key not
      held, so at most `capacity - 1` keys are held (ours: `capacity` keys,
      and a zero, untrained row for keys not held).
    * admission: in training mode the module records the batch's keys; every
      `eviction_interval`-th training call it counts the keys of the window and
      admits new keys into free slots, and when full, keeps the `capacity - 1`
      keys of highest score `count / (iterations since last seen + 1)`
      (existing keys win ties). With `eviction_interval=1` (the default here)
      a key is admitted in the call that first meets it, as ours with
      `min_count=1`; admission happens before the lookup of that same call.
    * eviction: DistanceLFU as above (ours: exact LRU or LFU, ties least
      recently used). Counts add up over the key's life in the table.
    * the window buffer is sized by the first training call: calls with more
      than `batch_keys` keys would silently drop keys, so `train_step`
      refuses them.
    * not compiled: eager PyTorch (the module keeps Python-side counters).

    Args:
        capacity: Rows of the table (`zch_size`).
        dim: Row width.
        fill_keys: Unique int64 keys admitted before timing, by training-mode
            calls of the module alone (chunks of `batch_keys` keys).
        seed: Seed of `torch.manual_seed` (initial rows, `Linear`).
        batch_keys: Most keys one `train_step` / `lookup` call will pass.
        eviction_interval: Training calls between admissions.
        sparse: If true, `nn.Embedding(sparse=True)` and `torch.optim.SparseAdam`
            for the table (lazy Adam: only the rows looked up move); else a
            dense gradient and `torch.optim.Adam` over the whole table.

    Returns:
        An object with `lookup(keys) -> rows` (eval mode: no recording, no
        admission; a `torch.Tensor` of shape `keys.shape + (dim,)`),
        `remap(keys) -> row indices` (eval mode), `train_step(keys, targets)
        -> loss` (`keys` of shape `(batch, ids)`, `targets` of shape
        `(batch, 1)`; NumPy or torch), `keys_held() -> int`, and `prefill_s`,
        the seconds the pre-fill took.
    """
    import time

    import torch
    from torchrec.modules.mc_modules import (
        DistanceLFU_EvictionPolicy,
        MCHManagedCollisionModule,
    )
    from torchrec.sparse.jagged_tensor import JaggedTensor

    torch.manual_seed(seed)
    device = torch.device("cpu")
    mch = MCHManagedCollisionModule(
        zch_size=capacity,
        device=device,
        eviction_policy=DistanceLFU_EvictionPolicy(),
        eviction_interval=eviction_interval,
        input_hash_size=2**63 - 1,
    )
    embedding = torch.nn.Embedding(capacity, dim, sparse=sparse)
    torch.nn.init.uniform_(embedding.weight, -INIT_LIMIT, INIT_LIMIT)
    dense = torch.nn.Linear(dim, 1)
    if sparse:
        optimizers = [
            torch.optim.SparseAdam(embedding.parameters(), lr=1e-3),
            torch.optim.Adam(dense.parameters(), lr=1e-3),
        ]
    else:
        optimizers = [
            torch.optim.Adam([*embedding.parameters(), *dense.parameters()], lr=1e-3)
        ]
    table_optimizer = optimizers[0]

    def jagged(flat):
        return JaggedTensor(values=flat, lengths=torch.tensor([flat.numel()]))

    def as_keys(keys):
        keys = torch.as_tensor(keys)
        if keys.dtype != torch.int64:
            raise ValueError(f"keys must be int64; received {keys.dtype}.")
        if keys.numel() > batch_keys:
            raise ValueError(
                f"keys: {keys.numel()} keys, more than batch_keys={batch_keys} "
                "(the size of the module's history window)."
            )
        return keys

    @torch.no_grad()
    def reset_reported_rows():
        rows = mch.evict()
        if rows is None or rows.numel() == 0:
            return
        rows = rows.long()
        embedding.weight[rows] = torch.empty(
            (rows.numel(), dim), dtype=embedding.weight.dtype
        ).uniform_(-INIT_LIMIT, INIT_LIMIT)
        state = table_optimizer.state.get(embedding.weight, {})
        for name in ("exp_avg", "exp_avg_sq"):
            if name in state:
                state[name][rows] = 0

    start = time.perf_counter()
    mch.train()
    with torch.no_grad():
        calls, last = 0, None
        for last in _prefill_chunks(fill_keys, batch_keys):
            mch({"f": jagged(torch.from_numpy(last))})
            calls += 1
        while calls % eviction_interval:  # close the window: admit its keys
            mch({"f": jagged(torch.from_numpy(last))})
            calls += 1
    reset_reported_rows()
    mch.eval()
    prefill_s = time.perf_counter() - start

    class TorchrecMCH:
        """TorchRec MCH remap + `nn.Embedding` (see `torchrec_mch`)."""

        def __init__(self):
            self.prefill_s = prefill_s
            self.module = mch
            self.embedding = embedding
            self.dense = dense

        def remap(self, keys):
            """Row indices of `keys` (eval mode, no admission)."""
            keys = as_keys(keys)
            mch.eval()
            with torch.no_grad():
                rows = mch({"f": jagged(keys.reshape(-1))})["f"].values()
            return rows.reshape(keys.shape)

        def lookup(self, keys):
            """Rows of `keys` (eval mode, no admission), `keys.shape + (dim,)`."""
            rows = self.remap(keys)
            with torch.no_grad():
                return torch.nn.functional.embedding(rows, embedding.weight)

        def train_step(self, keys, targets):
            """One Adam step of remap -> embedding -> mean -> Linear -> MSE."""
            keys = as_keys(keys)
            targets = torch.as_tensor(targets, dtype=torch.float32)
            mch.train()
            rows = mch({"f": jagged(keys.reshape(-1))})["f"].values()
            vectors = embedding(rows.reshape(keys.shape)).mean(dim=1)
            loss = torch.nn.functional.mse_loss(dense(vectors), targets)
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
            reset_reported_rows()
            return loss.detach()

        def keys_held(self):
            """How many keys hold a row."""
            return int(capacity - 1 - int(mch.open_slots()))

    return TorchrecMCH()


# ---- tf-keras -------------------------------------------------------------------


def tfkeras_dynamic(
    capacity,
    dim,
    fill_keys,
    seed=0,
    *,
    batch_keys=BATCH_KEYS,
    update_every=1,
    string_keys=False,
    max_compare_bytes=2**31,
):
    """tf-keras's experimental `DynamicEmbedding` in a tf-keras model.

    Peer API: `tf_keras.layers.experimental.DynamicEmbedding(input_dim=capacity,
    output_dim=dim, initial_vocabulary=..., eviction_policy="LFU",
    embedding_initializer="uniform")` in `Input((ids,)) -> DynamicEmbedding ->
    GlobalAveragePooling1D -> Dense(1)`, compiled with tf-keras `Adam(1e-3)` and
    `"mse"`; `train_step` is `model.train_on_batch` (a `tf.function`; the
    layer's counting runs inside it). The vocabulary is refreshed by
    `tf_keras.callbacks.experimental.UpdateEmbeddingCallback(layer,
    interval).on_interval()`, the callback's own update (normally run on a timer
    thread every `interval` seconds), called here synchronously after every
    `update_every`-th `train_step`: it is eager Python (NumPy lists, a dict of
    the whole vocabulary), so it cannot be inside the `tf.function`.

    How the layer works (`tf_keras/src/layers/experimental/dynamic_lookup.py`):
    `call(keys, learn_vocab=True)` counts every distinct key of the batch in a
    frequency table of `1.2 * capacity` entries (new keys enter with count 1;
    when that table overflows, its lowest counts leave), then maps each key to
    its position in the `capacity`-key vocabulary by comparing every input key
    with every vocabulary key (`tf.equal` of `(n, 1, 1)` with `(capacity,)`):
    time and memory O(n * capacity) per call, and the counting compares the
    frequency table with the batch's distinct keys, O(capacity * distinct). The
    callback's update replaces the vocabulary by the `capacity` keys of highest
    count (`tf.nn.top_k`), moves the rows of keys kept, gives new keys fresh
    initial rows, and zeroes ALL optimizer slots of the table.

    Semantics vs `keras_embedding_plus.DynamicEmbedding`:

    * admission: only at a vocabulary update, never inside the training step:
      a new key maps to the shared out-of-vocabulary row (`capacity`, the
      table has `capacity + 1` rows, trainable) until the next update (ours:
      admitted in the step that meets it; keys not held get a zero row).
    * eviction: LFU over all counts ever recorded, ties by `top_k` order
      (ours: LRU or LFU, ties least recently used). The pre-filled keys start
      with count 0, so any key met in training outranks them.
    * keys: int64 or string. With int64 keys the upstream update fails (it
      concatenates the int64 vocabulary with a string `"UNK"` OOV token:
      `InvalidArgumentError`), so the vocabulary would never change; with
      `string_keys=False` (default) the adapter uses a subclass whose
      `update_embeddings` is upstream's with an int64 OOV token (-2) instead,
      nothing else changed. `string_keys=True` runs the layer unmodified on
      `tf.strings.as_string(keys)` (conversion inside the step).
    * the vocabulary is a fixed-size variable: the pre-fill is passed as
      `initial_vocabulary`, padded to `capacity` with placeholders (-1, or
      `"unk"` for strings) that the layer treats as empty.
    * `lookup(keys)` calls the layer with `learn_vocab=False` in a
      `tf.function`: no counting, no admission.

    Args:
        capacity: Vocabulary size (`input_dim`); the table has `capacity + 1`
            rows.
        dim: Row width.
        fill_keys: Unique int64 keys (at most `capacity`) put in the initial
            vocabulary.
        seed: Seed of `tf_keras.utils.set_random_seed`.
        batch_keys: Most keys one call will pass (for the memory check).
        update_every: `train_step`s between vocabulary updates (0: never).
        string_keys: Feed the keys as strings to the unmodified layer.
        max_compare_bytes: Refuse (`ValueError`) a size whose key comparisons
            (`batch_keys * 1.2 * capacity` booleans) would take more bytes:
            they are materialized whole, and past a few GB they exhaust
            memory.

    Returns:
        An object with `lookup(keys) -> rows` (a `tf.Tensor` of shape
        `keys.shape + (dim,)`), `train_step(keys, targets) -> loss` (the float
        `train_on_batch` returns; `keys` `(batch, ids)` int64, NumPy or
        tensor), `update_vocabulary()`, `keys_held() -> int`, `prefill_s`.
    """
    import time

    import tensorflow as tf
    import tf_keras
    from tf_keras.callbacks.experimental import UpdateEmbeddingCallback
    from tf_keras.layers.experimental import DynamicEmbedding

    compare_bytes = int(batch_keys * capacity * 1.2)
    if compare_bytes > max_compare_bytes:
        raise ValueError(
            f"tf-keras DynamicEmbedding at capacity={capacity} and "
            f"batch_keys={batch_keys} compares {compare_bytes / 2**30:.1f} GiB of "
            f"key pairs per call, above max_compare_bytes={max_compare_bytes}; "
            "use a smaller capacity or batch."
        )
    fill_keys = np.asarray(fill_keys, dtype=np.int64).ravel()
    if fill_keys.size > capacity:
        raise ValueError(
            f"fill_keys: {fill_keys.size} keys, more than capacity={capacity}."
        )
    tf_keras.utils.set_random_seed(seed)

    start = time.perf_counter()
    if string_keys:
        placeholder = "unk"
        initial = tf.strings.as_string(fill_keys)
        layer_cls = DynamicEmbedding
    else:
        placeholder = -1
        initial = tf.constant(fill_keys)
        layer_cls = _int64_dynamic_embedding_class()
    pad = capacity - fill_keys.size
    initial = tf.concat(
        [initial, tf.fill([pad], tf.constant(placeholder, initial.dtype))], 0
    )

    layer = layer_cls(
        input_dim=capacity,
        output_dim=dim,
        initial_vocabulary=initial,
        eviction_policy="LFU",
        embedding_initializer="uniform",
        name="dynamic_embedding",
    )
    inputs = tf_keras.Input((None,), dtype="int64")
    x = tf.strings.as_string(inputs) if string_keys else inputs
    x = tf_keras.layers.GlobalAveragePooling1D()(layer(x))
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(1)(x))
    model.compile(tf_keras.optimizers.Adam(1e-3), "mse")
    callback = UpdateEmbeddingCallback(layer, interval=1)  # thread never started
    callback.set_model(model)
    prefill_s = time.perf_counter() - start

    if string_keys:

        @tf.function
        def lookup_fn(keys):
            return layer(tf.strings.as_string(keys), learn_vocab=False)

    else:

        @tf.function
        def lookup_fn(keys):
            return layer(keys, learn_vocab=False)

    class TfKerasDynamic:
        """tf-keras `DynamicEmbedding` (see `tfkeras_dynamic`)."""

        def __init__(self):
            self.prefill_s = prefill_s
            self.layer = layer
            self.model = model
            self.steps = 0

        def lookup(self, keys):
            """Rows of `keys` (`learn_vocab=False`), `keys.shape + (dim,)`."""
            return lookup_fn(tf.convert_to_tensor(keys, dtype=tf.int64))

        def train_step(self, keys, targets):
            """One `train_on_batch`; every `update_every`-th, a vocabulary update."""
            loss = model.train_on_batch(keys, targets)
            self.steps += 1
            if update_every and self.steps % update_every == 0:
                self.update_vocabulary()
            return loss

        def update_vocabulary(self):
            """The callback's update: top-`capacity` vocabulary, slots zeroed."""
            callback.on_interval()

        def keys_held(self):
            """How many vocabulary entries are keys (not placeholders)."""
            vocab = layer.get_vocabulary()
            return int(tf.reduce_sum(tf.cast(vocab != placeholder, tf.int32)))

    return TfKerasDynamic()


def _int64_dynamic_embedding_class():
    """tf-keras's `DynamicEmbedding` with `update_embeddings` fixed for int64
    vocabularies: upstream's body (less its parameter-server branch), but the
    OOV token appended to the new vocabulary is -2 instead of the string
    `"UNK"`, which `tf.concat` cannot join to int64 keys. Like `"UNK"`, -2 is
    no vocabulary entry (-1 is the placeholder), so the OOV row is
    re-initialized at every update, as upstream's."""
    import tensorflow as tf
    import tf_keras
    from tf_keras.layers.experimental import DynamicEmbedding

    class Int64DynamicEmbedding(DynamicEmbedding):
        def update_embeddings(self, strategy):
            lookup = self.dynamic_lookup_layer
            keys, values = lookup.vocabulary_table_keys, lookup.vocabulary_table_values
            old_vocab = lookup.vocabulary
            new_vocab = self.get_top_vocabulary(keys, values, lookup.vocabulary_size)
            oov_token = tf.fill([self.num_oov_indices], tf.constant(-2, tf.int64))
            updated_new_vocab = tf.concat([new_vocab, oov_token], axis=0)
            embedding_matrix = tf_keras.utils.warmstart_embedding_matrix(
                base_vocabulary=list(old_vocab.numpy()),
                new_vocabulary=updated_new_vocab,
                base_embeddings=self.embedding_layer.embeddings,
                new_embeddings_initializer=self.embedding_initializer,
            )
            lookup.vocabulary.assign(new_vocab)
            self.embedding_layer.embeddings.assign(embedding_matrix)

    return Int64DynamicEmbedding
