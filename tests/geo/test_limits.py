"""Limits a person sets on a search: names resolved by the gazetteer, points inside them."""

from __future__ import annotations

import numpy as np
import pytest

from geoconcept_cli.errors import GeoconceptError
from geoconcept_cli.geo.geocode import reverse_geocode
from geoconcept_cli.geo.limits import Limits, resolve_area


@pytest.mark.parametrize(("text", "area"), [
    ("fr", "country:FR"), (" France ", "country:FR"), ("Europe", "continent:Europe"),
    ("Bavaria", "region:DE/Bavaria"), ("Texas, US", "region:US/Texas"),
    ("ile-de-france", "region:FR/Île-de-France"), ("Georgia", "country:GE"),
    ("Georgia, US", "region:US/Georgia"),
])  # fmt: skip
def test_names_resolve_to_the_gazetteers_areas(text, area):
    assert resolve_area(text) == area


def test_what_cannot_be_understood_is_refused_in_one_line():
    for bad, said in [("Atlantis", "no country, continent or first-level region"), ("", "needs")]:
        with pytest.raises(GeoconceptError, match=said):
            resolve_area(bad)
    for kwargs, said in [
        ({"near": ["48.85"], "radius": [5]}, "give LAT,LON"),
        ({"near": ["95,2"], "radius": [5]}, "±90"),
        ({"near": ["1,2", "3,4"], "radius": [1, 2, 3]}, "2 --near and 3 --radius"),
        ({"radius": [10]}, "needs a --near"), ({"near": ["1,2"], "radius": [0]}, "above 0"),
        ({"bbox": ["60,0,50,10"]}, "south below north"), ({"bbox": ["1,2,3"]}, "S,W,N,E"),
    ]:  # fmt: skip
        with pytest.raises(GeoconceptError, match=said):
            Limits.parse(**kwargs)


def test_the_allowed_points_are_the_union_of_the_limits():
    pts = np.array([[48.85, 2.35],    # Paris: France
                    [48.14, 11.58],   # Munich: Bavaria
                    [52.52, 13.40],   # Berlin: neither, 5 km from a circle's centre
                    [-17.7, 178.0],   # Fiji: in a box across the date line
                    [-17.7, 170.0],   # west of that box
                    [40.71, -74.0]])  # fmt: skip
    places = reverse_geocode(pts)
    assert Limits.parse(["France"]).mask(pts, places).tolist() == [1, 0, 0, 0, 0, 0]
    limits = Limits.parse(["FR", "Bavaria"], ["52.55,13.40"], [5.0], ["-20,175,-15,-175"])
    assert limits.mask(pts, places).tolist() == [1, 1, 1, 1, 0, 0]
    assert limits.describe() == ("France (FR) or DE: Bavaria or 5 km around 52.55,13.4 or box "
                                 "S-20 W175 N-15 E-175")  # fmt: skip
    assert not Limits() and Limits.parse(within=["FR", "fr"]).areas == ("country:FR",)
