"""The PyTorch backend, one module per concern: `core`, `ids`, `sparse`,
`placement`, `blocks`, `pooling`."""
