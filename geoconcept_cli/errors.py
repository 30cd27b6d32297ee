"""The one exception type that carries a user-facing message (the CLI prints it, exit 2)."""


class GeoconceptError(Exception):
    """Bad input or a missing resource, explained in one line a user can act on."""
