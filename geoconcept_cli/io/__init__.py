"""Files: atomic artifacts and the cache, photos, archives of photos, and tables."""
