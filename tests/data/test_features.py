"""embed-images: feature shards, reruns that skip finished ones, ranks, refusals; and `subset`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import one_line_error, shared_data
from PIL import ExifTags, Image
from typer.testing import CliRunner

from geoconcept_cli.cli.app import app
from geoconcept_cli.data.features import check_features_clip, load_features, shard_path
from geoconcept_cli.errors import GeoconceptError
from geoconcept_cli.model.checkpoints import check_trained_on
from geoconcept_cli.model.clip_id import ClipId

runner = CliRunner()


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """20 real Im2GPS3k rows, plus a missing image, bad coordinates and a broken file."""
    labels = pd.read_csv(shared_data("im2gps3k", "im2gps3k_places365.csv")).head(20)
    images = shared_data("im2gps3k", "images")
    root = tmp_path_factory.mktemp("manifest")
    (root / "broken.jpg").write_text("not a jpeg")
    for name in labels["IMG_ID"]:
        (root / name).symlink_to(images / name)
    extra = pd.DataFrame({"IMG_ID": ["gone.jpg", labels["IMG_ID"][0], "broken.jpg"],
                          "LAT": [1.0, 123.0, 5.0], "LON": [2.0, 0.0, 6.0]})  # fmt: skip
    path = root / "manifest.csv"
    pd.concat([labels[["IMG_ID", "LAT", "LON"]], extra]).to_csv(path, index=False)
    return path


def _embed(manifest, out, tiny_clip):
    return runner.invoke(app, ["embed-images", str(manifest), "--out", str(out),
                               "--shard-size", "8", "--batch-size", "4", "--workers", "0",
                               "--clip-model", tiny_clip, "--clip-pretrained", "none"])  # fmt: skip


def test_embed_images_shards_skips_and_resumes(manifest, tmp_path, tiny_clip):
    out = tmp_path / "feats"
    res = _embed(manifest, out, tiny_clip)
    assert res.exit_code == 0, res.output
    assert "gone.jpg: missing image" in res.stderr and "invalid coordinates" in res.stderr
    assert "skipped broken.jpg: " in res.stderr  # undecodable: named like the other skips
    # not a terminal (as in a SLURM log): progress is plain lines, with the rate
    assert re.search(r"^embedding images: 21/21 \(100%\), [\d,.]+ images/s$", res.stderr, re.M)
    assert "20 images embedded" in res.stdout and "3 rows skipped" in res.stdout
    data = load_features(out)
    assert len(data.ids) == 20 and "broken.jpg" not in data.ids  # undecodable: left out
    assert data.features.shape == (20, 768)
    labels = pd.read_csv(manifest).set_index("IMG_ID")
    assert data.latlon[3].tolist() == pytest.approx(labels.loc[data.ids[3], ["LAT", "LON"]])
    # the uint8 worker path gives exactly the features of open_clip's own preprocessing
    from geoconcept_cli.io.images import load_image
    from geoconcept_cli.model.clip import load_clip

    with pytest.warns(UserWarning):
        clip = load_clip(tiny_clip, "none")
    direct = clip.encode_images(clip.preprocess(load_image(manifest.parent / data.ids[5]))[None])
    torch.testing.assert_close(data.features[5], direct[0])
    meta = json.loads((out / "meta.json").read_text())
    assert meta["shards"] == 3 and len(meta["skipped"]) == 2
    # an interrupted run: the middle shard is missing; a rerun recomputes only that one
    stamps = {s: shard_path(out, s).stat().st_mtime_ns for s in (0, 2)}
    shard_path(out, 1).unlink()
    res = _embed(manifest, out, tiny_clip)
    assert res.exit_code == 0 and "8 images embedded" in res.stdout and "(12 already" in res.stdout
    assert "embedding images: 8/8 (100%)" in res.stderr  # progress counts only the work left
    assert {s: shard_path(out, s).stat().st_mtime_ns for s in (0, 2)} == stamps
    torch.testing.assert_close(load_features(out).features, data.features)
    # a finished folder: nothing to do, and CLIP is not even loaded (no random-weights warning)
    res = _embed(manifest, out, tiny_clip)
    assert res.exit_code == 0 and "is complete: 20 images in 3 shards" in res.stdout
    assert "random weights" not in res.stderr
    # shards without a meta.json are of unknown origin: refused, left as they are
    (out / "meta.json").unlink()
    res = _embed(manifest, out, tiny_clip)
    assert res.exit_code == 2 and "shards but no meta.json" in res.stderr
    assert not (out / "meta.json").exists()
    assert {s: shard_path(out, s).stat().st_mtime_ns for s in (0, 2)} == stamps


@pytest.mark.distributed
def test_two_torchrun_ranks_split_the_shards_and_match_one_process(manifest, tmp_path, tiny_clip):
    """embed-images started by torchrun (gloo on CPU): rank 0 writes shards 0 and 2, rank 1
    shard 1; together the features of one process, and one rank reports."""
    from geoconcept_cli.runtime.distributed import free_port

    one, two = tmp_path / "one", tmp_path / "two"
    assert _embed(manifest, one, tiny_clip).exit_code == 0
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "-m", "geoconcept_cli",
                          "embed-images", str(manifest), "--out", str(two), "--shard-size", "8",
                          "--batch-size", "4", "--workers", "0", "--clip-model", tiny_clip,
                          "--clip-pretrained", "none"],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("images embedded") == 1 and "20 images embedded" in res.stdout
    # rank 0 shows its own share: shards 0 and 2, 8 + 5 rows
    assert res.stderr.count("embedding images (rank 0: 2 of 3 shards): 13/13 (100%)") == 1
    a, b = load_features(one), load_features(two)
    assert b.ids == a.ids and json.loads((two / "meta.json").read_text())["shards"] == 3
    torch.testing.assert_close(b.features, a.features)
    torch.testing.assert_close(b.latlon, a.latlon)


def test_features_of_another_model_are_refused(manifest, tmp_path, tiny_clip):
    out = tmp_path / "feats"
    assert _embed(manifest, out, tiny_clip).exit_code == 0
    other = tmp_path / "other-768.json"  # another 768-d model: refused for its name
    other.write_text(Path(tiny_clip).read_text())
    res = runner.invoke(app, ["embed-images", str(manifest), "--out", str(out),
                              "--shard-size", "8", "--clip-model", str(other),
                              "--clip-pretrained", "none"])  # fmt: skip
    assert res.exit_code == 2 and "feats holds features of CLIP tiny-clip-768 (none), not " \
        "other-768 (none); use a new folder" in res.stderr  # fmt: skip
    res = runner.invoke(
        app,
        [
            "embed-images",
            str(manifest),
            "--out",
            str(out),
            "--clip-model",
            tiny_clip,
            "--clip-pretrained",
            "none",
        ],
    )  # default shard size
    assert res.exit_code == 2 and "embedded with --shard-size 8; repeat it" in res.stderr


def test_a_model_config_of_the_same_name_but_other_content_is_another_model(
    manifest, tmp_path, tiny_clip
):
    out = tmp_path / "feats"
    assert _embed(manifest, out, tiny_clip).exit_code == 0
    twin = tmp_path / "twin" / Path(tiny_clip).name  # same file name, one more vision layer
    twin.parent.mkdir()
    cfg = json.loads(Path(tiny_clip).read_text())
    cfg["vision_cfg"]["layers"] += 1
    twin.write_text(json.dumps(cfg))
    assert ClipId.of(str(twin), "none").model == ClipId.of(tiny_clip, "none").model
    assert ClipId.of("ViT-L-14", "openai").config is None  # built-in: open_clip's to change
    res = _embed(manifest, out, str(twin))  # a rerun would mix shards of two models
    assert res.exit_code == 2
    assert "another model config of that name; use a new folder" in res.stderr
    made_by = "CLIP tiny-clip-768 \\(none\\) from another model config of that name"
    with pytest.raises(GeoconceptError, match=f"holds features of {made_by}$"):
        check_features_clip(out, ClipId.of(str(twin), "none"))
    check_features_clip(out, ClipId.of(tiny_clip, "none"))  # the config it was made with
    # a checkpoint records the config of its features; one from before config hashes does not
    ckpt = {"clip": ClipId.of(tiny_clip, "none").as_meta(prefix="")}
    with pytest.raises(GeoconceptError, match=f"run was trained on features of {made_by}$"):
        check_trained_on(ckpt, ClipId.of(str(twin), "none"), "run", hint=True)
    check_trained_on({"clip": {"model": "tiny-clip-768", "pretrained": "none"}},
                     ClipId.of(str(twin), "none"), "run")  # fmt: skip


def test_subset_is_seeded_and_sized(manifest, tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    for out in (a, b):
        res = runner.invoke(app, ["subset", str(manifest), "--fraction", "0.5", "--out", str(out)])
        assert res.exit_code == 0, res.output
    assert a.read_text() == b.read_text()
    assert len(pd.read_csv(a)) == round(0.5 * len(pd.read_csv(manifest)))
    bad = runner.invoke(app, ["subset", str(manifest), "--fraction", "2", "--out", str(a)])
    assert bad.exit_code == 2 and "--fraction" in bad.stderr


def test_non_numeric_coordinates_are_invalid_rows(tmp_path):
    from geoconcept_cli.gallery.store import load_gallery

    pd.DataFrame({"LAT": ["abc", "10"], "LON": ["1", "2"]}).to_csv(tmp_path / "g.csv", index=False)
    with pytest.raises(GeoconceptError, match="invalid coordinates"):
        load_gallery(tmp_path / "g.csv")


def test_embed_images_refuses_when_the_kept_rows_changed(manifest, tmp_path, tiny_clip):
    out = tmp_path / "feats"
    first = pd.read_csv(manifest).iloc[0]["IMG_ID"]
    hidden = manifest.parent / first
    target = hidden.readlink()
    hidden.unlink()  # one image missing on the first run ...
    try:
        assert _embed(manifest, out, tiny_clip).exit_code == 0
    finally:
        hidden.symlink_to(target)  # ... back for the second
    res = _embed(manifest, out, tiny_clip)
    assert res.exit_code == 2 and "some appeared or went missing" in res.stderr


def test_embed_images_bad_input_is_one_line_and_writes_nothing(manifest, tmp_path, tiny_clip):
    out = tmp_path / "feats"
    args = ["embed-images", str(manifest), "--out", str(out), "--clip-model", tiny_clip,
            "--clip-pretrained", "none"]  # fmt: skip
    res = runner.invoke(app, [*args, "--images", str(tmp_path / "typo")])
    assert res.exit_code == 2 and "typo: no such folder or archive" in res.stderr
    res = runner.invoke(app, ["embed-images", str(tmp_path), *args[2:]])  # a folder, not a table
    assert res.exit_code == 2 and "is a folder, expected a CSV or Parquet table" in res.stderr
    (tmp_path / "elsewhere").mkdir()  # a real folder without the photos: every row missing
    res = runner.invoke(app, [*args, "--images", str(tmp_path / "elsewhere")])
    assert res.exit_code == 2 and "none of its 23 rows is usable" in res.stderr
    assert not out.exists()
    if not torch.cuda.is_available():
        res = runner.invoke(app, [*args, "--gpus", "1"])
        assert res.exit_code == 2 and "this machine has 0 CUDA GPUs" in res.stderr
    (tmp_path / "file").write_text("")
    res = runner.invoke(app, [*args[:3], str(tmp_path / "file" / "x"), *args[4:]])
    assert res.exit_code == 2 and "error: [Errno 20] Not a directory" in res.stderr
    res = runner.invoke(app, [*args[:3], str(tmp_path / "file"), *args[4:]])  # --out a file
    assert res.exit_code == 2 and "file: a file; give a folder for the feature shards" in res.stderr
    res = runner.invoke(app, [*args, "--device", "gpu"])
    assert res.exit_code == 2 and "--device gpu: not a torch device" in res.stderr


def _geotagged(photo: Path, out: Path, lat: float, lon: float) -> None:
    """``photo`` saved as a JPEG whose EXIF GPS tags say (lat, lon), as a phone writes them."""

    def dms(v: float) -> tuple[float, float, float]:
        d, m = int(abs(v)), (abs(v) % 1) * 60
        return (float(d), float(int(m)), round((m % 1) * 60, 4))

    exif = Image.Exif()
    exif[ExifTags.IFD.GPSInfo] = {1: "N" if lat >= 0 else "S", 2: dms(lat),
                                  3: "E" if lon >= 0 else "W", 4: dms(lon)}  # fmt: skip
    Image.open(photo).convert("RGB").save(out, exif=exif.tobytes())


def test_a_folder_of_geotagged_photos_is_its_own_manifest(tmp_path, tiny_clip):
    """`embed-images DIR --labels exif`: a phone's collection, no CSV to write; photos
    without GPS are skipped and counted."""
    labels = pd.read_csv(shared_data("im2gps3k", "im2gps3k_places365.csv")).head(6)
    images = shared_data("im2gps3k", "images")
    folder = tmp_path / "phone"
    folder.mkdir()
    for name, lat, lon in labels[["IMG_ID", "LAT", "LON"]].itertuples(index=False):
        _geotagged(images / name, folder / name, lat, lon)
    shutil.copy(images / labels["IMG_ID"][0], folder / "no-gps.jpg")  # Im2GPS3k's: no EXIF
    res = runner.invoke(app, ["embed-images", str(folder), "--labels", "exif", "--out",
                              str(tmp_path / "feats"), "--workers", "0", "--clip-model",
                              tiny_clip, "--clip-pretrained", "none"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "6 images embedded" in res.stdout and "1 row skipped" in res.stdout
    assert "no-gps.jpg: no EXIF GPS" in res.stderr
    data = load_features(tmp_path / "feats")
    got = pd.DataFrame(data.latlon.numpy(), index=data.ids, columns=["lat", "lon"])
    want = labels.set_index("IMG_ID").loc[data.ids, ["LAT", "LON"]]
    assert np.allclose(got.to_numpy(), want.to_numpy(), atol=1e-4)  # seconds to 4 decimals
    for args in (["--labels", "gps"], ["--labels", "exif", "--images", str(folder)]):
        res = runner.invoke(app, ["embed-images", str(folder), *args, "--out",
                                  str(tmp_path / "other"), "--clip-model", tiny_clip])  # fmt: skip
        assert "--labels" in one_line_error(res)
    assert not (tmp_path / "other").exists()
