"""Albums: photos of one place located together beat them one by one, and a stray is flagged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import one_line_error, shared_data
from typer.testing import CliRunner

from geoconcept_cli.cli.app import app
from geoconcept_cli.errors import GeoconceptError
from geoconcept_cli.geo.distance import haversine_km
from geoconcept_cli.geo.limits import Limits
from geoconcept_cli.inference.album import locate_album
from geoconcept_cli.inference.request import Request

runner = CliRunner()


def within_25km(truth, lat, lon) -> bool:
    return bool(haversine_km(*truth.tolist(), lat, lon) <= 25)


def test_an_album_of_one_place_beats_its_photos_alone_and_flags_a_stray(planted_world):
    p, feats, truth, region, _ = planted_world
    alone, together, flagged, kept, pulled = [], [], [], [], []
    for r in range(12):
        mine = torch.nonzero(region == r)[:, 0][:4]  # 4 photos of one place
        stray = int(torch.nonzero(region == (r + 6) % 12)[0, 0])  # one of another, far away
        for i in mine.tolist():
            c = p.predict_features(feats[i : i + 1], Request(top_k=1)).predictions[0]
            alone.append(within_25km(truth[i], c.lat, c.lon))
        album = locate_album(p, feats[mine], [f"p{i}" for i in mine.tolist()], Request(top_k=1))
        top = album.predictions[0]
        together.append(within_25km(truth[mine[0]], top.lat, top.lon))
        with_stray = torch.cat([mine, torch.tensor([stray])])
        album = locate_album(p, feats[with_stray], [*map(str, with_stray.tolist())], Request())
        *rest, odd = album.photos
        if within_25km(truth[stray], odd["lat"], odd["lon"]):  # alone, it points home: far
            flagged.append(odd["disagrees"])
            if within_25km(truth[mine[0]], album.predictions[0].lat, album.predictions[0].lon):
                pulled.append(odd["share"] < 0)  # it pulls away from the album's answer
        if within_25km(truth[mine[0]], album.predictions[0].lat, album.predictions[0].lon):
            kept += [not ph["disagrees"] for ph in rest  # those that alone point home too
                     if within_25km(truth[mine[0]], ph["lat"], ph["lon"])]  # fmt: skip
        assert abs(sum(abs(ph["share"]) for ph in album.photos) - 1) < 1e-4
    assert np.mean(together) > np.mean(alone) + 0.1, (np.mean(together), np.mean(alone))
    assert (
        len(flagged) >= 6 and np.mean(flagged) >= 0.9 and len(kept) >= 10 and np.mean(kept) >= 0.9
    ), (flagged, kept)


def test_predict_together_answers_once_for_a_folder(tmp_path, tiny_clip, small_gallery):
    images = shared_data("im2gps3k", "images")
    folder = tmp_path / "album"
    folder.mkdir()
    for photo in sorted(images.iterdir())[:3]:
        (folder / photo.name).symlink_to(photo)
    (folder / "broken.jpg").write_text("not a photo")
    model = ["--clip-model", tiny_clip, "--clip-pretrained", "none", "--gallery",
             str(small_gallery)]  # fmt: skip
    res = runner.invoke(app, ["predict", str(folder), "--together", "--json", "--top-k", "2",
                              *model])  # fmt: skip
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert len(got["images"]) == 3 and len(got["predictions"]) == 2 and len(got["photos"]) == 3
    assert "product of the 3 photos' distributions, tempered by sqrt(3)" in got["probabilities"][
        "album"]  # fmt: skip
    assert all(len(ph["concepts"]) == 3 for ph in got["photos"])  # what each photo shows
    assert "skipped" in res.stderr and "broken.jpg" in res.stderr
    for bad, said in ((["--out", str(tmp_path / "o.parquet")], "--out"),
                      (["--gpus", "1"], "--gpus")):  # fmt: skip
        assert said in one_line_error(runner.invoke(app, ["predict", str(folder), "--together",
                                                          *bad]))  # fmt: skip
    photo = next(iter(sorted(images.iterdir())))
    assert "a folder of photos" in one_line_error(
        runner.invoke(app, ["predict", str(photo), "--together"]))  # fmt: skip


def test_a_manifest_grouped_by_a_column_is_a_row_per_album(tmp_path, tiny_clip, small_gallery):
    names = [p.name for p in sorted(shared_data("im2gps3k", "images").iterdir())[:5]]
    manifest = tmp_path / "trip.csv"
    days = ["mon", "mon", "tue", "tue", "tue", "wed"]
    pd.DataFrame({"IMG_ID": [*names, "gone.jpg"], "day": days}).to_csv(manifest, index=False)
    model = ["--clip-model", tiny_clip, "--clip-pretrained", "none", "--gallery",
             str(small_gallery)]  # fmt: skip
    out = tmp_path / "albums.parquet"
    res = runner.invoke(app, ["predict", str(manifest), "--together", "--group-by", "day",
                              "--images", str(shared_data("im2gps3k", "images")), "--out",
                              str(out), *model])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "2 albums located" in res.stdout and "skipped group wed" in res.stderr
    table = pd.read_parquet(out)
    assert table["group"].tolist() == ["mon", "tue"] and table["photos"].tolist() == [2, 3]
    parts = json.loads(table["parts"][1])
    assert [Path(ph["image"]).name for ph in parts] == names[2:5]
    assert table["disagreeing"].between(0, 3).all() and table["prob"].between(0, 1).all()
    for bad in (["--group-by", "night", "--out", str(tmp_path / "x.parquet")],
                ["--group-by", "day"]):  # fmt: skip
        res = runner.invoke(app, ["predict", str(manifest), "--together", *bad, *model])
        assert "--group-by" in one_line_error(res)


def test_the_joint_is_the_product_tempered_by_the_square_root_of_the_photos(planted_world):
    p, feats, _, _, _ = planted_world
    three = feats[:3]
    album = locate_album(p, three, ["a", "b", "c"], Request(top_k=2, merge_km=0))
    lp = (p.logits(three) / p.temperature).log_softmax(1).sum(0) / 3**0.5
    want = lp.softmax(0)[p.places].topk(2)
    assert [c.gallery_index for c in album.predictions] == p.places[want.indices].tolist()
    assert [c.prob for c in album.predictions] == pytest.approx(want.values.tolist(), rel=1e-4)


def test_an_album_inside_a_small_limit_has_no_rival_and_no_nan(planted_world):
    """Under a limit with no place 200+ km from the answer, the shares are 0, never NaN."""
    p, feats, truth, region, _ = planted_world
    lat, lon = truth[0].tolist()
    tight = Request(limits=Limits.parse(near=[f"{lat},{lon}"], radius=[50]))
    album = locate_album(p, feats[:3], ["a", "b", "c"], tight)
    assert album.rival_gallery_index is None
    assert [ph["share"] for ph in album.photos] == [0.0, 0.0, 0.0]
    json.dumps(album.to_json(), allow_nan=False)


def test_an_album_refuses_to_abstain_in_one_line(planted_world):
    p, feats, *_ = planted_world
    with pytest.raises(GeoconceptError, match="answered as a whole") as err:
        locate_album(p, feats[:3], ["a", "b", "c"], Request(abstain_below=0.5))
    assert "\n" not in str(err.value)
