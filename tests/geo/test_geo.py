import subprocess
import sys

import numpy as np
import torch

from geoconcept_cli.geo import geocode
from geoconcept_cli.geo.distance import (
    accuracy_at_thresholds,
    haversine_km,
    unit_vectors,
    valid_latlon,
)
from geoconcept_cli.geo.geocode import place_name, place_names, reverse_geocode


def test_paris_london_distance():
    d = haversine_km(48.8566, 2.3522, 51.5074, -0.1278)
    assert abs(float(d) - 343.5) < 0.6


def test_distance_symmetry_and_antipode():
    assert float(haversine_km(0, 0, 0, 180)) == np.float64(np.pi * 6371.0088)
    a = haversine_km([10, -33], [20, 151], [-5, 40], [100, -70])
    b = haversine_km([-5, 40], [100, -70], [10, -33], [20, 151])
    np.testing.assert_allclose(a, b)


def test_accuracy_at_thresholds():
    acc = accuracy_at_thresholds(np.array([0.5, 10, 100, 1000, 5000]))
    assert acc == {"1km": 20.0, "25km": 40.0, "200km": 60.0, "750km": 60.0, "2500km": 80.0}


def test_unit_vector_dot_ranks_like_distance(rng):
    pts = torch.tensor(np.c_[rng.uniform(-90, 90, 200), rng.uniform(-180, 180, 200)])
    q = pts[:1]
    by_dot = (unit_vectors(pts) @ unit_vectors(q).T).squeeze(1).argsort(descending=True)
    by_km = np.argsort(haversine_km(q[0, 0], q[0, 1], pts[:, 0], pts[:, 1]))
    assert by_dot.tolist() == by_km.tolist()


def test_valid_latlon():
    mask = valid_latlon([0, 91, np.nan, -90], [0, 0, 0, 181])
    assert mask.tolist() == [True, False, False, False]


def test_place_name_offline():
    assert place_name(48.8566, 2.3522).endswith("FR")
    assert "Hawaii, US" in place_name(22.07, -159.32)


def test_place_names_come_from_the_one_gazetteer_searched_on_the_sphere():
    """Names are the nearest settlement on the sphere, as the countries of batch predict and
    the page's heatmap: the package's own search, in raw degrees, names Ørnes here (18.7 km
    away) for Glomfjord (15.8 km). A point with no town within 200 km gets its coordinates."""
    north = (66.70136, 13.732452)
    assert place_name(*north) == "Glomfjord, Nordland, NO"
    assert 15 < float(reverse_geocode(np.array([north])).place_km[0]) < 16.5
    assert place_names([north, (0.0, -140.0)]) == [
        "Glomfjord, Nordland, NO",
        "0.00, -140.00 (no town within 200 km)",
    ]
    assert place_names([]) == []
    # a place or region whose own name holds a '/' keeps it whole
    assert place_name(46.59, 14.7989) == "Bleiburg/Pliberk, Carinthia, AT"
    assert place_name(10.6525, -61.3888) == "Tunapuna, Tunapuna/Piarco, TT"


def test_reverse_geocoding_is_on_the_sphere():
    """Across the date line the nearest place in degrees is not the nearest on Earth: at
    16 S 179.9 W a search in raw degrees finds Leava, Wallis and Futuna, 266 km away, while a
    Fijian settlement across the line is 92 km away."""
    places = reverse_geocode(np.array([[-16.0, -179.9], [78.22, 15.65]]))
    assert places.country[0] == "FJ" and places.place_km[0] < 100
    assert places.country[1] == "SJ"  # Longyearbyen, Svalbard


def test_the_gazetteer_is_parsed_once_then_read_from_the_cache(tmp_path, monkeypatch):
    """The first process parses the package's JSON and keeps its arrays; the next reads them
    (no parse) and names places as the parse did. A damaged cache file is parsed again and
    replaced; a cache that cannot be written only costs the parse."""
    points = np.array([[66.70136, 13.732452], [46.59, 14.7989], [10.6525, -61.3888],
                       [0.0, -140.0], [-16.0, -179.9], [35.68, 139.69]])  # fmt: skip
    monkeypatch.setenv("GEOCONCEPT_CACHE", str(tmp_path / "cache"))
    parses = []
    parse = geocode._parse
    monkeypatch.setattr(geocode, "_parse", lambda source: parses.append(source) or parse(source))

    def fresh() -> geocode.Places:  # as a new process would load it
        geocode._gazetteer.cache_clear()
        return reverse_geocode(points)

    first = fresh()
    (cached,) = (tmp_path / "cache" / "gazetteer").glob("*.npz")
    again = fresh()
    assert len(parses) == 1  # the second load read the file
    for field in ("country", "region", "city", "continent", "place_km"):
        assert getattr(again, field).tolist() == getattr(first, field).tolist()
    assert place_names(points[:3]) == ["Glomfjord, Nordland, NO", "Bleiburg/Pliberk, Carinthia, AT",
                                       "Tunapuna, Tunapuna/Piarco, TT"]  # fmt: skip

    cached.write_bytes(cached.read_bytes()[:1000])  # cut short
    assert fresh().city.tolist() == first.city.tolist() and len(parses) == 2
    assert geocode._read(cached) is not None  # written whole again
    whole = {
        "unit": np.zeros((1, 3)),
        "country": np.array(["FR"]),
        "regions": np.array(["FR/"]),
        "region_of": np.zeros(1, np.int32),
        "cities": np.frombuffer(b"Paris", np.uint8),
    }
    for damage in (
        {},
        {"unit": np.zeros((3, 3))},
        {"region_of": np.ones(1, np.int32)},
        {"region_of": np.zeros(1)},
        {"cities": np.frombuffer(b"\xff", np.uint8)},
    ):
        with cached.open("wb") as f:  # whole, then whole but damaged: read, then refused
            np.savez(f, **{**whole, **damage})
        read = geocode._read(cached)
        if damage:
            assert read is None  # so the next process parses again, as above
        else:
            assert read is not None and read.city.tolist() == ["Paris"]

    monkeypatch.setenv("GEOCONCEPT_CACHE", str(cached))  # a file where the folder should be
    assert fresh().city.tolist() == first.city.tolist() and len(parses) == 3
    geocode._gazetteer.cache_clear()


def test_a_few_points_are_searched_as_the_tree_searches_many(rng):
    """Fewer than FEW_POINTS points are searched by one product (a one-photo command imports no
    scipy), more in the KD-tree: both find the same places at the same distances, for random
    points and for points at and near the gazetteer's own places."""
    unit = geocode._gazetteer().unit[::100]
    places = np.c_[
        np.degrees(np.arcsin(unit[:, 2])), np.degrees(np.arctan2(unit[:, 1], unit[:, 0]))
    ]
    points = np.r_[np.c_[rng.uniform(-90, 90, 1500), rng.uniform(-180, 180, 1500)], places,
                   places + rng.normal(scale=0.01, size=places.shape)]  # fmt: skip
    many = reverse_geocode(points)
    step = geocode.FEW_POINTS - 1
    few = [reverse_geocode(points[i : i + step]) for i in range(0, len(points), step)]
    for field in ("country", "region", "city", "place_km"):
        assert (
            np.concatenate([getattr(f, field) for f in few]).tolist()
            == getattr(many, field).tolist()
        )
    assert (many.country != "").sum() > 3000  # most are near a town: the search had work to do
    g = geocode._gazetteer()
    assert len(np.unique(g.unit, axis=0)) == len(g.unit)  # no two places share a point


def test_a_point_that_is_not_finite_is_near_no_place():
    """Few points or many, a NaN or infinite coordinate is named by its coordinates (no town
    near it) and the others as ever."""
    for n in (3, 40):
        points = np.tile([[48.8566, 2.3522]], (n, 1))
        points[1] = [np.nan, 2.0]
        points[2] = [10.0, np.inf]
        places = reverse_geocode(points)
        assert places.country.tolist() == ["FR", "", "", *["FR"] * (n - 3)]
        assert np.isnan(places.place_km[1:3]).all() and places.place_km[0] < 5
        assert place_names(points[:2])[1] == "nan, 2.00 (no town within 200 km)"


def test_naming_a_few_places_imports_no_scipy(tmp_path):
    """A one-photo command names its candidates without scipy (a quarter of a second to import):
    a fresh process that names a few points has not loaded it."""
    script = ("import sys\nfrom geoconcept_cli.geo.geocode import place_names\n"
              "print(place_names([(48.8566, 2.3522), (66.70136, 13.732452)]), "
              "'scipy' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    names, loaded = out.stdout.strip().rsplit(" ", 1)
    assert names.endswith("'Glomfjord, Nordland, NO']") and "FR" in names and loaded == "False"
