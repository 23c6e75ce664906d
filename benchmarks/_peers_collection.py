"""The peers of `bench_collection.py`: FBGEMM's table-batched embedding (TBE) on
CPU and 26 `torch.nn.EmbeddingBag`, each wrapped as an object with `forward()`
and `train_step(targets)` over one fixed batch, so that the benchmark can
interleave them with `keras_embedding_plus.EmbeddingCollection`. Nothing is
timed here. Runs in the venv `/work/peers/torchrec` (torch 2.13.0+cpu,
fbgemm-gpu-cpu 1.8.0, torchrec 1.8.0; see `peers_README.md`), never in tox.

Both build the benchmark's model: the 26 tables' sum-pooled bags, concatenated
in the benchmark's feature order -> `Linear(26 * 64, 1)` -> MSE, the head
trained by `torch.optim.Adagrad(lr=0.01, initial_accumulator_value=0.1,
eps=1e-7)` (Keras's `Adagrad(0.01)`), table rows initialized uniformly in
[-0.05, 0.05] (Keras's `"uniform"`).

Inputs: the benchmark's batch (`bench_collection._data`, same seed), as real
bags: per table, the ids of weight 1 (the first `length` of each padded row)
as flat values, and the bags' offsets from their lengths. The padding, which
ours gets as dense `(batch, L)` ids with weight 0, is not passed (it is 60% of
the dense ids); the real ids all have weight 1, so the bags are unweighted
sums: the same sums as ours. Each module imports its framework inside its
function.
"""

import numpy as np

# Keras's "uniform" initializer: U(-0.05, 0.05).
INIT_LIMIT = 0.05
LEARNING_RATE = 0.01


def flat_bags(ids, weights, names):
    """`(values, offsets)` per feature of `names`: the ids of weight > 0 of
    each padded row, row after row (int64), and the start of each bag in them
    with the total appended (`batch + 1` entries, int64)."""
    bags = []
    for name in names:
        keep = np.asarray(weights[name]) > 0
        values = np.asarray(ids[name])[keep].astype(np.int64)
        lengths = keep.sum(axis=1)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        bags.append((values, offsets))
    return bags


def _head(tables, dim):
    """`Linear(tables * dim, 1)` and its Adagrad (Keras's defaults)."""
    import torch

    linear = torch.nn.Linear(tables * dim, 1)
    optimizer = torch.optim.Adagrad(
        linear.parameters(),
        lr=LEARNING_RATE,
        initial_accumulator_value=0.1,
        eps=1e-7,
    )
    return linear, optimizer


def fbgemm_tbe(rows, dim, bags, seed=0):
    """FBGEMM's CPU TBE over `len(bags)` tables of `rows x dim`, FP32, row-wise
    Adagrad fused into the backward pass.

    Peer API (fbgemm_gpu 1.8.0,
    `split_table_batched_embeddings_ops_training.py`):
    `SplitTableBatchedEmbeddingBagsCodegen(embedding_specs=[(rows, dim,
    EmbeddingLocation.HOST, ComputeDevice.CPU)] * tables,
    optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD, learning_rate=0.01,
    weights_precision=SparseType.FP32, output_dtype=SparseType.FP32,
    pooling_mode=PoolingMode.SUM, device="cpu")`, everything else its default
    (`eps=1e-8`, `weight_decay=0`, `bounds_check_mode=WARNING`: one pass that
    checks the ids, as ours does), rows set by `init_embedding_weights_uniform`.
    Called as `tbe(indices, offsets)`: every table's values one after the
    other (ids local to their table), and `offsets` of `tables * batch + 1`
    entries, table-major (`offsets[t * batch + b]` starts bag `b` of table
    `t`), both int64; it returns the pooled `(batch, tables * dim)`, tables in
    order.

    Its `parameters()` include the table (`weights_host`) and the row-wise
    accumulator (`momentum1_host`): the TBE updates them itself in backward,
    so only the head's parameters go to a torch optimizer.

    Semantics vs ours (`EmbeddingCollection(sparse=True)` + `LazyAdagrad`):
    row-wise Adagrad keeps one accumulator a row (the mean of the squared
    gradient over the row's 64 entries), Keras's Adagrad one per entry; the
    first step differs too (FBGEMM's accumulator starts at 0, Keras's at 0.1).
    The cost compared is that of the same sizes of state read and written per
    touched row, less the accumulator's width.

    Args:
        rows: Rows of each table.
        dim: Row width (a multiple of 4).
        bags: `(values, offsets)` per table (`flat_bags`), all of one batch.
        seed: Seed of `torch.manual_seed` (rows, head).

    Returns:
        An object with `forward() -> np.ndarray` (the head's `(batch, 1)`
        output, under `no_grad`, as `predict_on_batch` returns it) and
        `train_step(targets) -> loss` (forward, MSE, backward with the fused
        table update, the head's Adagrad step).
    """
    import torch
    from fbgemm_gpu.split_embedding_configs import EmbOptimType, SparseType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import (
        ComputeDevice,
        EmbeddingLocation,
        PoolingMode,
    )
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        SplitTableBatchedEmbeddingBagsCodegen,
    )

    torch.manual_seed(seed)
    tables = len(bags)
    tbe = SplitTableBatchedEmbeddingBagsCodegen(
        embedding_specs=[(rows, dim, EmbeddingLocation.HOST, ComputeDevice.CPU)]
        * tables,
        optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD,
        learning_rate=LEARNING_RATE,
        weights_precision=SparseType.FP32,
        output_dtype=SparseType.FP32,
        pooling_mode=PoolingMode.SUM,
        device=torch.device("cpu"),
    )
    tbe.init_embedding_weights_uniform(-INIT_LIMIT, INIT_LIMIT)
    indices = torch.from_numpy(np.concatenate([values for values, _ in bags]))
    lengths = np.concatenate([np.diff(offsets) for _, offsets in bags])
    offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)]))
    offsets = offsets.to(torch.int64)
    linear, optimizer = _head(tables, dim)

    class FbgemmTBE:
        """FBGEMM CPU TBE + `Linear` head (see `fbgemm_tbe`)."""

        def __init__(self):
            self.module = tbe
            self.head = linear

        def pooled(self):
            """The pooled `(batch, tables * dim)` (no autograd)."""
            with torch.no_grad():
                return tbe(indices, offsets)

        def forward(self):
            with torch.no_grad():
                return linear(tbe(indices, offsets)).numpy()

        def train_step(self, targets):
            targets = torch.as_tensor(targets, dtype=torch.float32)
            loss = torch.nn.functional.mse_loss(linear(tbe(indices, offsets)), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return loss.detach()

    return FbgemmTBE()


def torch_embedding_bags(rows, dim, bags, seed=0, *, sparse=True):
    """One `torch.nn.EmbeddingBag(rows, dim, mode="sum")` per table, trained by
    `torch.optim.Adagrad` (Keras's `Adagrad(0.01)` settings).

    Peer API: `torch.nn.EmbeddingBag(rows, dim, mode="sum", sparse=sparse)`
    called as `bag(values, offsets[:-1])` per table; the pooled tables
    concatenated -> the head. With `sparse=True` (default) each table's
    gradient is a sparse COO tensor and `torch.optim.Adagrad`, which takes
    sparse gradients, updates the looked-up rows only: for Adagrad (no weight
    decay) the same values as a dense step, since a zero gradient moves neither
    a row nor its accumulator. `sparse=False`: a dense gradient of every table
    and a dense Adagrad step, as Keras's 26 layers take.

    Args:
        rows: Rows of each table.
        dim: Row width.
        bags: `(values, offsets)` per table (`flat_bags`), all of one batch.
        seed: Seed of `torch.manual_seed` (rows, head).
        sparse: Sparse table gradients (see above).

    Returns:
        An object with `forward() -> np.ndarray` and `train_step(targets) ->
        loss`, as `fbgemm_tbe`'s.
    """
    import warnings

    import torch

    # torch.optim.Adagrad builds its sparse update without the invariant checks.
    warnings.filterwarnings("ignore", message="Sparse invariant checks")
    torch.manual_seed(seed)
    modules = torch.nn.ModuleList(
        torch.nn.EmbeddingBag(rows, dim, mode="sum", sparse=sparse) for _ in bags
    )
    for module in modules:
        torch.nn.init.uniform_(module.weight, -INIT_LIMIT, INIT_LIMIT)
    inputs = [
        (torch.from_numpy(values), torch.from_numpy(offsets[:-1]))
        for values, offsets in bags
    ]
    linear, head_optimizer = _head(len(bags), dim)
    table_optimizer = torch.optim.Adagrad(
        modules.parameters(),
        lr=LEARNING_RATE,
        initial_accumulator_value=0.1,
        eps=1e-7,
    )
    optimizers = (table_optimizer, head_optimizer)

    def pooled():
        return torch.cat(
            [
                module(values, offsets)
                for module, (values, offsets) in zip(modules, inputs, strict=True)
            ],
            dim=1,
        )

    class TorchEmbeddingBags:
        """26 `torch.nn.EmbeddingBag` + `Linear` head (see
        `torch_embedding_bags`)."""

        def __init__(self):
            self.modules = modules
            self.head = linear

        def pooled(self):
            """The pooled `(batch, tables * dim)` (no autograd)."""
            with torch.no_grad():
                return pooled()

        def forward(self):
            with torch.no_grad():
                return linear(pooled()).numpy()

        def train_step(self, targets):
            targets = torch.as_tensor(targets, dtype=torch.float32)
            loss = torch.nn.functional.mse_loss(linear(pooled()), targets)
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
            return loss.detach()

    return TorchEmbeddingBags()
