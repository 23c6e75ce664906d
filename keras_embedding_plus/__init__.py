"""keras_embedding_plus: a drop-in replacement for `keras.layers.Embedding`."""

from keras_embedding_plus import optimizers, training
from keras_embedding_plus._saving import load_model
from keras_embedding_plus.embedding import Embedding

__version__ = "0.1.0"

__all__ = [
    "Embedding",
    "load_model",
    "optimizers",
    "training",
    "__version__",
]
