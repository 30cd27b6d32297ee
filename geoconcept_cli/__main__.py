"""``python -m geoconcept_cli`` runs the ``geoconcept`` command."""

from .cli import app

app(prog_name="geoconcept")
