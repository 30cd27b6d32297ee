"""Data: manifests of photos, the feature store of ``embed-images``, and the embedding itself."""
