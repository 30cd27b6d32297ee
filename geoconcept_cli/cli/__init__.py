"""The ``geoconcept`` command: a module per group of commands, each thin over the library."""
