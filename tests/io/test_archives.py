"""embed-images reads photos where datasets ship them: zip, tar, msgpack shards, WebDataset."""

from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import msgpack
import pandas as pd
import pytest
import torch
from conftest import heic_of, shared_data
from PIL import Image
from typer.testing import CliRunner

from geoconcept_cli.cli.app import app
from geoconcept_cli.data.features import load_features, shard_path
from geoconcept_cli.io import archives as containers
from geoconcept_cli.io.archives import ArchiveIndex, Entry, open_photo, read_webdataset

runner = CliRunner()
N = 64


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """64 real Im2GPS3k photos as a folder, a zip, a tar, msgpack shards and WebDataset
    shards, with one manifest for the first three kinds."""
    labels = pd.read_csv(shared_data("im2gps3k", "im2gps3k_places365.csv")).head(N)
    images = shared_data("im2gps3k", "images")
    root = tmp_path_factory.mktemp("packed")
    data = {name: (images / name).read_bytes() for name in labels["IMG_ID"]}
    (root / "folder").mkdir()
    for name, raw in data.items():
        (root / "folder" / name).write_bytes(raw)
    labels[["IMG_ID", "LAT", "LON"]].to_csv(root / "manifest.csv", index=False)
    with zipfile.ZipFile(root / "photos.zip", "w") as zf:  # half stored, half deflated
        for n, (name, raw) in enumerate(data.items()):
            zf.writestr(name, raw, zipfile.ZIP_DEFLATED if n % 2 else zipfile.ZIP_STORED)
    with tarfile.open(root / "photos.tar", "w") as tf:  # photos under one top folder
        for name, raw in data.items():
            _add(tf, f"im2gps3k/{name}", raw)
    for s in range(2):
        with open(root / f"shard_{s}.msg", "wb") as f:
            for name in list(data)[s * 32 : (s + 1) * 32]:
                f.write(msgpack.packb({"id": name, "image": data[name]}))
        with tarfile.open(root / f"wds-{s:05d}.tar", "w") as tf:
            for i, row in labels.iloc[s * 32 : (s + 1) * 32].iterrows():
                key = row["IMG_ID"].removesuffix(".jpg")
                coords = {"LAT": row["LAT"], "LON": row["LON"]}
                if i % 2:  # img2dataset keeps whatever the input called them
                    coords = {"latitude": row["LAT"], "longitude": row["LON"], "caption": "x"}
                _add(tf, f"{key}.jpg", data[row["IMG_ID"]])
                _add(tf, f"{key}.json", json.dumps(coords).encode())
    return root, labels


def _add(tf: tarfile.TarFile, name: str, raw: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(raw)
    tf.addfile(info, io.BytesIO(raw))


def _embed(sources, out, tiny_clip, *extra):
    return runner.invoke(app, ["embed-images", *map(str, sources), "--out", str(out),
                               "--shard-size", "24", "--batch-size", "8", "--workers", "0",
                               "--clip-model", tiny_clip, "--clip-pretrained", "none",
                               *map(str, extra)])  # fmt: skip


def _by_id(folder: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    data = load_features(folder)
    return {i.removesuffix(".jpg"): (data.features[n], data.latlon[n])
            for n, i in enumerate(data.ids)}  # fmt: skip


def test_every_container_gives_the_features_of_the_folder(packed, tmp_path, tiny_clip):
    root, labels = packed
    manifest = root / "manifest.csv"
    runs = {
        "folder": ([manifest], ["--images", root / "folder"]),
        "zip": ([manifest], ["--images", root / "photos.zip", "--workers", "2"]),
        "tar": ([manifest], ["--images", root / "photos.tar"]),
        "msgpack": ([manifest], ["--images", root / "shard_*.msg"]),  # a quoted pattern
        "webdataset": ([root / "wds-00000.tar", root / "wds-00001.tar"], []),
    }
    feats = {}
    for kind, (sources, extra) in runs.items():
        res = _embed(sources, tmp_path / kind, tiny_clip, *extra)
        assert res.exit_code == 0, (kind, res.output)
        assert f"{N} images embedded" in res.stdout and "0 rows skipped" in res.stdout, kind
        feats[kind] = _by_id(tmp_path / kind)
    assert "image ids from sample keys, coordinates from each sample's .json" in res.stderr
    truth = {r.IMG_ID.removesuffix(".jpg"): (r.LAT, r.LON) for r in labels.itertuples()}
    folder = feats.pop("folder")
    assert set(folder) == set(truth)
    for kind, got in feats.items():
        assert set(got) == set(folder), kind
        for key, (f, latlon) in got.items():
            torch.testing.assert_close(f, folder[key][0], rtol=0, atol=0, msg=f"{kind} {key}")
            assert latlon.tolist() == pytest.approx(truth[key], abs=1e-4), (kind, key)


def test_an_unreadable_member_is_skipped_and_counted_and_a_rerun_resumes(
    packed, tmp_path, tiny_clip
):
    root, labels = packed
    shard = tmp_path / "wds.tar"
    with tarfile.open(root / "wds-00000.tar") as src, tarfile.open(shard, "w") as dst:
        for member in src:
            dst.addfile(member, src.extractfile(member))
        _add(dst, "broken.jpg", b"\xff\xd8 not really a jpeg")
        _add(dst, "broken.json", b'{"lat": 1, "lon": 2}')
        _add(dst, "nowhere.jpg", (root / "folder" / labels["IMG_ID"][0]).read_bytes())
        _add(dst, "nowhere.json", b'{"title": "no coordinates"}')
    out = tmp_path / "feats"
    res = _embed([shard], out, tiny_clip)
    assert res.exit_code == 0, res.output
    assert "skipped nowhere: no latitude/longitude in the .json" in res.stderr
    assert "wds.tar:broken.jpg: not an image file PIL can read" in res.stderr
    assert "32 images embedded" in res.stdout and "2 rows skipped" in res.stdout
    # an interrupted run: a shard is gone; the rerun encodes only that one
    first = load_features(out)
    stamp = shard_path(out, 0).stat().st_mtime_ns
    shard_path(out, 1).unlink()
    res = _embed([shard], out, tiny_clip)
    assert res.exit_code == 0 and "(24 already there)" in res.stdout, res.output
    assert shard_path(out, 0).stat().st_mtime_ns == stamp
    torch.testing.assert_close(load_features(out).features, first.features)


def test_truncated_archives_keep_what_precedes_the_damage(packed, tmp_path, tiny_clip):
    root, labels = packed
    raw = (root / "photos.tar").read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(raw[: len(raw) // 2])  # a download that stopped half way
    index = ArchiveIndex([cut])
    assert 0 < len(index.entries) < N
    readable = [e for e in index.entries.values() if e.offset + e.size <= len(raw) // 2]
    assert open_photo(readable[0]).size[0] > 0
    bad_zip = tmp_path / "cut.zip"
    bad_zip.write_bytes((root / "photos.zip").read_bytes()[:5000])  # no central directory
    res = _embed([root / "manifest.csv"], tmp_path / "f", tiny_clip, "--images", cut,
                 "--images", bad_zip)  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "cut.zip: unreadable archive (BadZipFile" in res.stderr
    assert "missing image" in res.stderr
    embedded = len(load_features(tmp_path / "f").ids)
    assert embedded == sum(e.offset + e.size <= len(raw) // 2 for e in index.entries.values())


def test_one_process_indexes_each_archive_once(packed, tmp_path, tiny_clip, monkeypatch):
    root, _ = packed
    indexed = []
    index = containers._index

    def counted(path, bad):
        indexed.append(path.name)
        return index(path, bad)

    monkeypatch.setattr(containers, "_index", counted)
    res = _embed([root / "manifest.csv"], tmp_path / "f", tiny_clip, "--images",
                 root / "shard_*.msg")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert sorted(indexed) == ["shard_0.msg", "shard_1.msg"]  # the CLI's read, reused


def test_archives_beyond_the_open_handle_bound_are_reopened(packed, tmp_path, monkeypatch):
    root, _ = packed
    monkeypatch.setattr(containers, "MAX_OPEN", 1)
    with zipfile.ZipFile(tmp_path / "z.zip", "w") as zf:  # names of its own: z/...
        for path in sorted((root / "folder").iterdir())[:16]:
            zf.write(path, f"z/{path.name}")
    index = ArchiveIndex([root / "shard_0.msg", root / "photos.tar", tmp_path / "z.zip"])
    entries = list(index.entries.values())
    assert len({e.archive for e in entries}) == 3 and len(entries) == 32 + N + 16
    for e in entries[::5] + entries[::-7]:  # back and forth between the three archives
        name = e.name.rsplit("/", 1)[-1]
        assert open_photo(e).tobytes() == open_photo(str(root / "folder" / name)).tobytes()
    assert sum(pid == os.getpid() for pid, _ in containers._handles) <= 1


def test_a_photo_cut_short_inside_an_archive_is_a_one_line_error(tmp_path):
    entry = Entry(str(tmp_path / "a.tar"), "x.jpg", 512, 10_000)
    (tmp_path / "a.tar").write_bytes(b"\0" * 1024)
    with pytest.raises(Exception, match=r"a.tar:x.jpg: cannot read it from the archive"):
        open_photo(entry)


def test_webdataset_keys_and_coordinate_spellings(tmp_path):
    with tarfile.open(tmp_path / "s.tar", "w") as tf:
        _add(tf, "dir/a.b.jpg", b"x")  # key dir/a, extension b.jpg
        _add(tf, "dir/a.json", b'{"GPS_Latitude": 10, "gps_longitude": "20.5"}')
        _add(tf, "c.png", b"y")
        _add(tf, "c.json", b'{"lat": 95, "lon": 0}')
        _add(tf, "d.json", b'{"lat": 1, "lon": 2}')
    found = read_webdataset([tmp_path / "s.tar"])
    assert found.ids == ["dir/a"] and found.photos[0].name == "dir/a.b.jpg"
    assert (found.lat[0], found.lon[0]) == (10.0, 20.5)
    assert found.skipped == [("c", "invalid coordinates"), ("d", "no image in the sample")]


def test_an_iphone_heic_in_a_shard_is_read_upright(tmp_path):
    photo = sorted(shared_data("im2gps3k", "images").iterdir())[0]
    with tarfile.open(tmp_path / "s.tar", "w") as tf:
        _add(tf, "img.heic", heic_of(photo, orientation=6))
        _add(tf, "img.json", b'{"lat": 10, "lon": 20}')
    found = read_webdataset([tmp_path / "s.tar"])
    assert found.ids == ["img"] and found.skipped == []
    img = open_photo(found.photos[0])
    width, height = Image.open(photo).size
    assert img.mode == "RGB" and img.size == (height, width)  # turned a quarter, as its EXIF says


@pytest.mark.parametrize(
    "args, message",
    [
        (["x.tar.gz"], "x.tar.gz: a compressed tar cannot be read in place"),
        (["manifest.csv", "wds-00000.tar"], "give one manifest (CSV/Parquet), or WebDataset"),
        (["wds-00000.tar", "--images", "folder"], "--images is for a manifest"),
        (["manifest.csv", "--images", "nothing-*.zip"], "nothing-*.zip: no file matches"),
        (["manifest.csv", "--images", "manifest.csv"], "not a folder, .zip, .tar or .msg"),
        (["manifest.csv", "--images", "x.tgz"], "decompress it once to .tar"),
    ],
)
def test_containers_that_cannot_be_read_are_one_line_errors(packed, tmp_path, tiny_clip,
                                                            args, message):  # fmt: skip
    root, _ = packed
    (root / "x.tar.gz").write_bytes(b"")
    (root / "x.tgz").write_bytes(b"")
    args = [a if a.startswith("--") else str(root / a) for a in args]
    res = _embed(args, tmp_path / "out", tiny_clip)
    assert res.exit_code == 2 and message in res.stderr, res.output
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
