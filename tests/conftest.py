"""Shared fixtures: a tiny 768-d open_clip config, a session-wide cache, small galleries."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pillow_heif
import pytest
from PIL import ExifTags, Image

from geoconcept_cli.model.spec import ModelSpec

TESTS = Path(__file__).resolve().parent
TINY_CLIP = str(TESTS / "data" / "tiny-clip-768.json")
SHARED_DATA = TESTS.parent.parent / "shared" / "data"


def tiny_spec(**fields) -> ModelSpec:
    """A model reading photos with the tiny random CLIP (fields: the rest of the spec)."""
    return ModelSpec(clip_model=TINY_CLIP, clip_pretrained="none", **fields)


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason it is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} (a fresh clone has no ../shared)")
    return path


def heic_of(photo: Path, orientation: int = 1, gps: tuple | None = None) -> bytes:
    """``photo`` saved as HEIC (as an iPhone would), with an EXIF orientation and, when ``gps``
    is (lat_dms, lat_ref, lon_dms, lon_ref), GPS tags: made at run time from a real photo."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    if gps is not None:
        exif[ExifTags.IFD.GPSInfo] = {1: gps[1], 2: gps[0], 3: gps[3], 4: gps[2]}
    buf = io.BytesIO()  # pillow-heif's writer, not its Pillow opener: the code under test opens
    pillow_heif.from_pillow(Image.open(photo)).save(buf, quality=90, exif=exif.tobytes())
    return buf.getvalue()


def one_line_error(res) -> str:
    """The one ``error:`` line of a refused command (exit 2, no traceback); lines of
    ``warning:`` (random CLIP weights, say) may come before it."""
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.strip().splitlines() if not ln.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert "Traceback" not in res.output
    return lines[0]


def im2gps_photos(n: int) -> list[Path]:
    """The first ``n`` Im2GPS3k photos (the test skips where the shared data is absent)."""
    return sorted(shared_data("im2gps3k", "images").iterdir())[:n]


def without_torch(script: str, cwd: Path) -> str:
    """Run ``script`` in a fresh Python process, assert that it ran and imported neither torch
    nor open_clip, and return what it printed."""
    probe = ("\nimport sys\nprint('\\nTORCH-FREE', not {'torch', 'open_clip'} & "
             "sys.modules.keys())\n")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", script + probe], capture_output=True,
                         text=True, timeout=300, cwd=cwd)  # fmt: skip
    said = out.stdout[-2000:] + out.stderr[-2000:]
    assert out.returncode == 0 and out.stdout.rstrip().endswith("TORCH-FREE True"), said
    return out.stdout[: out.stdout.rindex("\nTORCH-FREE")]


def cli_without_torch(args: list[str], cwd: Path) -> str:
    """What ``geoconcept ARGS`` prints in a fresh process (:func:`without_torch`), exit 0."""
    out = without_torch("import sys\nfrom geoconcept_cli.cli.app import app\n"
                        f"sys.argv = ['geoconcept', *{args!r}]\n"
                        "try:\n    app()\nexcept SystemExit as e:\n    assert not e.code, e.code\n",
                        cwd)  # fmt: skip
    return out


def assert_close_json(got, want, abs: float, rel: float = 0.0, skip: tuple[str, ...] = (),
                      path: str = "") -> None:  # fmt: skip
    """Equal JSON trees: the same keys and lengths, floats within ``abs``/``rel``; the paths in
    ``skip`` (as ``.key[i]``) are not compared."""
    if path in skip:
        return
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), path
        for k in want:
            assert_close_json(got[k], want[k], abs, rel, skip, f"{path}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), path
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            assert_close_json(a, b, abs, rel, skip, f"{path}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=rel, abs=abs), path
    else:
        assert got == want, path


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory) -> Path:
    """One cache for the whole run, so GeoCLIP's 100K gallery is encoded at most once."""
    cache = tmp_path_factory.mktemp("cache")
    os.environ["GEOCONCEPT_CACHE"] = str(cache)
    os.environ["HF_HUB_OFFLINE"] = "1"  # never wait on a hub that cannot be reached
    return cache


@pytest.fixture(scope="session")
def tiny_clip() -> str:
    return TINY_CLIP


@pytest.fixture(scope="session")
def small_gallery(tmp_path_factory) -> Path:
    """500 points of GeoCLIP's real gallery, as a CSV with lower-case headers."""
    from geoconcept_cli.gallery.store import default_gallery_path

    df = pd.read_csv(default_gallery_path()).iloc[::200].reset_index(drop=True)
    path = tmp_path_factory.mktemp("gallery") / "gallery.csv"
    df.rename(columns={"LAT": "lat", "LON": "lon"}).to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def small_world(tmp_path_factory) -> dict[str, Path]:
    """A tiny synthetic world (4 regions x 16 photos, 12 concepts, the tiny CLIP's width),
    for the tests that only read it."""
    from synthetic import make_world

    return make_world(tmp_path_factory.mktemp("small-world"), n_regions=4, per_region=16, k=12,
                      clip_model="tiny-clip-768")  # fmt: skip


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def planted_world(tmp_path_factory):
    """12 regions of 3 concepts each, a concept-aware run trained on them for 150 steps, and
    its held-out photos made noisy, so that the photo alone finds its region about 70% of the
    time: (predictor over stored features, features, true (lat, lon), region, the world)."""
    import torch
    from synthetic import make_world

    from geoconcept_cli.data.features import load_features
    from geoconcept_cli.inference.factory import load_predictor
    from geoconcept_cli.model.clip_id import ClipId
    from geoconcept_cli.model.spec import StoredFeatures
    from geoconcept_cli.training.config import TrainConfig
    from geoconcept_cli.training.loop import train

    root = tmp_path_factory.mktemp("planted")
    world = make_world(root, n_regions=12, per_region=64, k=40, clip_model="tiny-clip-768",
                       gallery_per_center=20)  # fmt: skip
    train(TrainConfig(features=str(world["train"]), out=str(root / "run"),
                      concepts=str(world["concepts"]), max_steps=150, batch_size=64, lr=3e-3,
                      warmup_steps=5, queue_size=64))  # fmt: skip
    stored = StoredFeatures(ClipId("tiny-clip-768", "none"), 768)
    p = load_predictor(ModelSpec(checkpoint=str(root / "run"), gallery=str(world["gallery"]),
                                 features=stored))  # fmt: skip
    test = load_features(world["test"])
    gen = torch.Generator().manual_seed(1)
    feats = test.features + 1.5 * torch.randn(test.features.shape, generator=gen)
    truth = torch.as_tensor(world["centers"], dtype=torch.float32)[world["test_region"]]
    return p, feats, truth, world["test_region"], world


@pytest.fixture(scope="session")
def onnx_bundle(tmp_path_factory):
    """A concept-aware run of the tiny CLIP's width, calibrated, exported with --onnx and an
    INT8 graph: (the bundle folder, the world)."""
    import json

    from synthetic import tiny_trained_world
    from typer.testing import CliRunner

    from geoconcept_cli.cli.app import app

    runner = CliRunner()
    root = tmp_path_factory.mktemp("onnx")
    world = tiny_trained_world(root)
    run = world["run"]
    gallery = ["--gallery", str(world["gallery"])]
    res = runner.invoke(app, ["calibrate", str(world["train"]), str(run), *gallery])
    assert res.exit_code == 0, res.output
    # regions per continent and an abstention level, as --by and --target-accuracy store them
    # (this small world has too few photos to fit them)
    cal = json.loads((run / "calibration.json").read_text())
    cal |= {"by": "continent", "groups": {"Asia": 0.5, "Europe": 0.99},
            "abstention": {"level": 0.3, "target": 0.8, "delta": 0.1, "photos": 96,
                           "kept": 0.4, "accuracy": 0.85}}  # fmt: skip
    (run / "calibration.json").write_text(json.dumps(cal))
    res = runner.invoke(app, ["export", str(run), "--out", str(root / "model"), "--onnx",
                              "--quantize", "int8", "--clip-model", TINY_CLIP,
                              "--clip-pretrained", "none", *gallery])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "ONNX bundle (model.int8.onnx and model.onnx, tiny-clip-768)" in res.stdout
    return root / "model", world
