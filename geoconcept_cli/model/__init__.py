"""Models: the CLIP backbone, GeoCLIP's heads, the concept-aware head, its losses, concept
embeddings, checkpoints and bundles, and the ``ModelSpec`` that names a model."""
