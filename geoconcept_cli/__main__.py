"""``python -m geoconcept_cli`` runs the ``geoconcept`` command."""

from .cli.app import app

app(prog_name="geoconcept")
