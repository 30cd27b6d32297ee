"""The package root is the API a notebook lives in: every stage is importable from it, typed,
without loading torch until it is used, and the README's notebook example runs as written."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_CLIP, shared_data

import geoconcept_cli

ROOT = Path(__file__).resolve().parents[1]


def test_every_name_the_root_exports_is_there():
    for name in geoconcept_cli.__all__:
        assert getattr(geoconcept_cli, name) is not None, name
    with pytest.raises(AttributeError):
        geoconcept_cli.no_such_name  # noqa: B018


@pytest.mark.e2e
def test_the_command_starts_without_torch():
    """`geoconcept --help` and the import of every command's module load no torch (3 s)."""
    code = (
        "import sys; import geoconcept_cli.cli.app; "
        "print(sorted(m for m in ('torch', 'open_clip', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert out.strip() == "[]"


@pytest.mark.slow
def test_the_readmes_notebook_example_runs_as_written(tmp_path, monkeypatch, capsys):
    labels = shared_data("im2gps3k", "im2gps3k_places365.csv")
    images = shared_data("im2gps3k", "images")
    rows = pd.read_csv(labels).iloc[:48]
    (tmp_path / "photos").mkdir()
    for name in rows["IMG_ID"]:
        (tmp_path / "photos" / name).symlink_to(images / name)
    rows.to_csv(tmp_path / "photos.csv", index=False)
    pd.read_csv(labels)[["LAT", "LON"]].iloc[::6].to_csv(tmp_path / "gallery.csv", index=False)
    shutil.copy(TINY_CLIP, tmp_path / "tiny-clip-768.json")
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"<!-- notebook-example -->\n```python\n(.*?)```", readme, re.S)
    assert code is not None, "the README's notebook example is marked"
    monkeypatch.chdir(tmp_path)
    names: dict[str, object] = {}
    with pytest.warns(UserWarning, match="random weights"):
        exec(compile(code.group(1), "README.md", "exec"), names)
    assert names["last"]["step"] == 8  # type: ignore[index]
    scores = names["scores"]
    assert set(scores) >= {"1km", "25km", "200km", "750km", "2500km", "median_km"}  # type: ignore[arg-type]
    explanation = names["explanation"]
    assert explanation.mode == "concept-aware checkpoint"  # type: ignore[attr-defined]
    assert explanation.image == str(
        sorted((tmp_path / "photos").iterdir())[0].relative_to(tmp_path)
    )  # type: ignore[attr-defined]
    assert str(names["last"]["step"]) in capsys.readouterr().out  # type: ignore[index]
    assert (tmp_path / "model" / "model.safetensors").is_file()
