"""Serving: the warm service behind `geoconcept serve`, its HTTP layer and the page's static
files."""
