"""The layers: their arguments, weights and Keras hooks.

A layer checks its arguments, creates its variables and hands the lookup pipeline
(`keras_embedding_plus.lookup`) a `LookupSpec` of them; it never computes a lookup
itself.
"""
