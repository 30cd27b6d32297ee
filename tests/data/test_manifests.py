"""Label files as they ship (Im2GPS3k, YFCC4k, OSV-5M): their columns found by name."""

from __future__ import annotations

import pytest
from PIL import Image
from typer.testing import CliRunner

from geoconcept_cli.cli.app import app
from geoconcept_cli.data.manifests import read_manifest
from geoconcept_cli.errors import GeoconceptError

runner = CliRunner()


# ------------------------------------------------------------------------- label files
def _photos(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (40, 30), (120, 80, 40)).save(folder / name)


def test_label_files_as_they_ship(tmp_path):
    _photos(tmp_path / "img", ["a.jpg", "b.jpg", "1234567890.jpg"])
    places365 = "IMG_ID,AUTHOR,LAT,LON,S3_Label,S16_Label,S365_Label,Prob_indoor,Prob_natural,"\
        "Prob_urban\na.jpg,x@N00,48.85,2.35,1,2,3,0.1,0.2,0.7\nb.jpg,y@N00,-33.9,151.2,1,2,3,"\
        "0.1,0.2,0.7\n"  # fmt: skip
    (tmp_path / "im2gps3k_places365.csv").write_text(places365)  # Im2GPS3k and Im2GPS
    yfcc = ("IMG_ID,AUTHOR,LON,LAT,S3_Label,S16_Label,S365_Label,Prob_indoor,Prob_natural,"
            "Prob_urban\na.jpg,x@N00,2.35,48.85,1,2,3,0.1,0.2,0.7\n")  # fmt: skip
    (tmp_path / "yfcc4k_places365.csv").write_text(yfcc)
    osv = ("id,latitude,longitude,thumb_original_url,country,sequence,captured_at,lon_bin,"
           "lat_bin,cell,land_cover,road_index,drive_side,climate,soil,dist_sea,region,"
           "sub-region,city,unique_country,unique_region,unique_sub-region,unique_city\n"
           "1234567890,48.85,2.35,https://x/y.jpg,FR,s1,1500000000,5,6,c,2,0.3,1,7,3,0.1,"
           "Ile-de-France,Paris,Paris,FR,FR_IDF,FR_IDF_75,FR_IDF_75_Paris\n")  # fmt: skip
    (tmp_path / "test.csv").write_text(osv)
    for name, columns, n in (("im2gps3k_places365.csv", ("IMG_ID", "LAT", "LON"), 2),
                             ("yfcc4k_places365.csv", ("IMG_ID", "LAT", "LON"), 1),
                             ("test.csv", ("id", "latitude", "longitude"), 1)):  # fmt: skip
        m = read_manifest(tmp_path / name, tmp_path / "img")
        assert m.source == "column {}, coordinates from {}, {}".format(*columns), name
        assert len(m.rows) == n and not m.skipped, name
        assert m.rows["lat"].iloc[0] == 48.85 and m.rows["lon"].iloc[0] == 2.35
    osv_row = read_manifest(tmp_path / "test.csv", tmp_path / "img").rows.iloc[0]
    assert osv_row["photo"].endswith("1234567890.jpg")  # OSV-5M ids name <id>.jpg
    (tmp_path / "both.csv").write_text("IMG_ID,lat,latitude,LON\na.jpg,1,1,2\n")
    with pytest.raises(GeoconceptError, match="columns lat and latitude could each be the "
                                              "latitude; keep one"):  # fmt: skip
        read_manifest(tmp_path / "both.csv", tmp_path / "img")


def test_embed_images_says_which_columns_it_used(tmp_path, tiny_clip):
    _photos(tmp_path / "img", ["1234567890.jpg"])
    (tmp_path / "test.csv").write_text("id,latitude,longitude,lon_bin,lat_bin,country\n"
                                       "1234567890,48.85,2.35,5,6,FR\n")  # fmt: skip
    res = runner.invoke(
        app,
        [
            "embed-images",
            str(tmp_path / "test.csv"),
            "--images",
            str(tmp_path / "img"),
            "--out",
            str(tmp_path / "f"),
            "--workers",
            "0",
            "--clip-model",
            tiny_clip,
            "--clip-pretrained",
            "none",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "image ids from column id, coordinates from latitude, longitude" in res.stderr
    assert "1 image embedded" in res.stdout
