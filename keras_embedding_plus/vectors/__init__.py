"""Pretrained vectors in (`load_vectors`, `Vectors`); `nearest`, the projector
export and plots out (`insight`)."""
