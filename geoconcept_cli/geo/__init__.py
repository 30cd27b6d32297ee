"""Geography: distances on the sphere, the offline gazetteer of place names, and region keys."""
