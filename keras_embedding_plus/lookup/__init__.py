"""The lookup pipeline: ids -> policy -> gather -> storage -> row transforms.

It knows no layer class: a layer describes itself in a `LookupSpec`
(`lookup.spec`) and `lookup.pipeline.compose` builds its `Lookup` from that.
The modules here call the running backend (`keras_embedding_plus.backends`) and
never import a layer.
"""
