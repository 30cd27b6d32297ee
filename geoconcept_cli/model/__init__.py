"""Models: the CLIP backbone, GeoCLIP's heads, the concept-aware head, its losses, concept
embeddings, checkpoints and bundles, and the ``ModelSpec`` that names a model."""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .checkpoints import KINDS as KINDS
    from .concept_embeddings import DEFAULT_TEMPLATES as DEFAULT_TEMPLATES
    from .concept_embeddings import embed_concept_set as embed_concept_set
    from .spec import ModelSpec as ModelSpec
    from .spec import StoredFeatures as StoredFeatures

__getattr__ = lazy_exports(
    __name__,
    {
        "ModelSpec": "spec",
        "StoredFeatures": "spec",
        "embed_concept_set": "concept_embeddings",
        "DEFAULT_TEMPLATES": "concept_embeddings",
        "KINDS": "checkpoints",
    },
)
