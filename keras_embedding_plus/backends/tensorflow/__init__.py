"""The TensorFlow backend, one module per concern: `core`, `ids`, `sparse`,
`placement`, `blocks`, `pooling`."""
