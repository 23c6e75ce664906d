"""keras_embedding_plus: a drop-in replacement for `keras.layers.Embedding`."""

from keras_embedding_plus import optimizers, training
from keras_embedding_plus.data import BagDataset
from keras_embedding_plus.layers.bag import EmbeddingBag
from keras_embedding_plus.layers.collection import EmbeddingCollection
from keras_embedding_plus.layers.collection_config import FeatureConfig, TableConfig
from keras_embedding_plus.layers.dynamic import DynamicEmbedding
from keras_embedding_plus.layers.dynamic_bag import DynamicEmbeddingBag
from keras_embedding_plus.layers.embedding import Embedding
from keras_embedding_plus.layers.reversible import ReversibleEmbedding
from keras_embedding_plus.lookup.string_keys import hash_strings
from keras_embedding_plus.saving.convert import from_keras, to_keras
from keras_embedding_plus.saving.loading import (
    load_model,
    load_saved_model,
    load_weights,
)
from keras_embedding_plus.vectors.insight import (
    export_projector,
    nearest,
    plot_embeddings,
)
from keras_embedding_plus.vectors.pretrained import Vectors, load_vectors

__version__ = "0.1.0"

__all__ = [
    "BagDataset",
    "DynamicEmbedding",
    "DynamicEmbeddingBag",
    "Embedding",
    "EmbeddingBag",
    "EmbeddingCollection",
    "FeatureConfig",
    "ReversibleEmbedding",
    "TableConfig",
    "Vectors",
    "export_projector",
    "from_keras",
    "hash_strings",
    "load_model",
    "load_saved_model",
    "load_weights",
    "load_vectors",
    "nearest",
    "optimizers",
    "plot_embeddings",
    "to_keras",
    "training",
    "__version__",
]
