"""Data: manifests of photos, the feature store of ``embed-images``, and the embedding itself."""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .embedding import EmbedOptions as EmbedOptions
    from .embedding import EmbedResult as EmbedResult
    from .embedding import embed_images as embed_images
    from .features import Features as Features
    from .features import load_features as load_features
    from .manifests import subset_manifest as subset_manifest

__getattr__ = lazy_exports(
    __name__,
    {
        "EmbedOptions": "embedding",
        "EmbedResult": "embedding",
        "embed_images": "embedding",
        "subset_manifest": "manifests",
        "Features": "features",
        "load_features": "features",
    },
)
