"""Installed as users install it: the wheel, in a fresh environment, outside the repository.
`pip wheel .` then `pip install` of that wheel (not editable) must give a command that
explains a photo with the shipped concept set and serves its page: the concept set and the
page's files travel inside the package, read through importlib.resources."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import TINY_CLIP, shared_data

from geoconcept_cli.inference.reasons import ZERO_SHOT_PLACE
from geoconcept_cli.runtime.distributed import free_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding only the built wheel; the dependencies come from this one's
    site-packages through a .pth line (a fresh download of torch is no part of the test)."""
    root = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
         "-w", str(root / "dist"), "-q"], capture_output=True, text=True)  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next((root / "dist").glob("geoconcept-*.whl"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps",
                          "-q", str(wheel)], capture_output=True, text=True)  # fmt: skip
    assert pip.returncode == 0, pip.stderr[-2000:]
    return venv


def run_installed(venv: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GEOCONCEPT_CACHE": str(cwd / "cache"), "PYTHONPATH": ""}
    return subprocess.run([str(venv / "bin" / "geoconcept"), *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=600)  # fmt: skip


@pytest.mark.slow
@pytest.mark.e2e
def test_the_installed_wheel_explains_a_photo_with_its_concepts(installed, tmp_path,
                                                                 small_gallery):  # fmt: skip
    photo = sorted(shared_data("im2gps3k", "images").iterdir())[0]
    shutil.copy(TINY_CLIP, tmp_path / "tiny.json")
    where = run_installed(installed, ["--help"], tmp_path)
    assert where.returncode == 0
    code = "import geoconcept_cli; print(geoconcept_cli.__file__)"
    found = subprocess.run([str(installed / "bin" / "python"), "-c", code], capture_output=True,
                           text=True, cwd=tmp_path, check=True).stdout  # fmt: skip
    assert str(installed) in found and str(ROOT) not in found  # the wheel's, not the checkout
    res = run_installed(installed, ["explain", str(photo), "--json", "--clip-model", "tiny.json",
                                    "--clip-pretrained", "none", "--gallery",
                                    str(small_gallery)], tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    exp = json.loads(res.stdout)
    assert exp["mode"] == "zero-shot" and len(exp["photo_concepts"]) == 8
    assert exp["place_concepts_source"] == ZERO_SHOT_PLACE


@pytest.mark.slow
@pytest.mark.e2e
def test_the_installed_wheel_serves_its_page(installed, tmp_path, small_gallery):
    photo = sorted(shared_data("im2gps3k", "images").iterdir())[0]
    shutil.copy(TINY_CLIP, tmp_path / "tiny.json")
    port = free_port()
    env = {**os.environ, "GEOCONCEPT_CACHE": str(tmp_path / "cache"), "PYTHONPATH": ""}
    server = subprocess.Popen(
        [str(installed / "bin" / "geoconcept"), "serve", "--port", str(port), "--clip-model",
         "tiny.json", "--clip-pretrained", "none", "--gallery", str(small_gallery)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                health = json.load(urllib.request.urlopen(f"{url}/healthz", timeout=2))
                break
            except OSError:
                assert server.poll() is None, server.stderr.read() if server.stderr else ""
                time.sleep(0.5)
        assert health["concepts"] == 645  # the shipped set, from inside the wheel
        page = urllib.request.urlopen(f"{url}/", timeout=10).read().decode()
        assert "<html" in page.lower()
        for name in ("app.js", "style.css"):
            assert urllib.request.urlopen(f"{url}/static/{name}", timeout=10).status == 200
        boundary = "geoconcept-test"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
                f"filename=\"{photo.name}\"\r\nContent-Type: image/jpeg\r\n\r\n").encode() \
            + photo.read_bytes() + f"\r\n--{boundary}--\r\n".encode()  # fmt: skip
        request = urllib.request.Request(f"{url}/explain", data=body, headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}"})  # fmt: skip
        answer = json.load(urllib.request.urlopen(request, timeout=120))
        assert answer["image"] == photo.name and answer["photo_concepts"]
    finally:
        server.terminate()
        server.wait(timeout=30)
