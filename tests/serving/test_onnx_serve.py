"""`serve --runtime onnx`: the torch server's answers from an ONNX bundle, with no torch loaded,
and a 400 in one line for what the bundle cannot answer."""

from __future__ import annotations

import pytest
from conftest import assert_close_json, tiny_spec, without_torch
from conftest import im2gps_photos as photos
from fastapi.testclient import TestClient

from geoconcept_cli.model.spec import ModelSpec
from geoconcept_cli.serving.http import create_app, load_service


@pytest.fixture(scope="module")
def clients(onnx_bundle):
    """(the ONNX bundle's client, the torch server's client over the same exported model)."""
    folder, world = onnx_bundle
    onnx = load_service(ModelSpec(checkpoint=folder, runtime="onnx"))
    with pytest.warns(UserWarning):  # random CLIP weights
        torch = load_service(tiny_spec(checkpoint=folder, gallery=world["gallery"]))
    return (TestClient(create_app(onnx), raise_server_exceptions=False),
            TestClient(create_app(torch), raise_server_exceptions=False))  # fmt: skip


def upload(photo) -> dict:
    return {"image": (photo.name, photo.read_bytes(), "image/jpeg")}


# equal-probability points may list in another order in either runtime
ORDERLESS = (".region.points", ".map.heat", ".map.names")


def test_the_bundle_serves_the_torch_servers_answers(clients):
    onnx, torch = clients
    h = onnx.get("/healthz").json()
    assert h["runtime"] == "onnx" and h["mode"] == "concept-aware checkpoint"
    assert {k: v for k, v in h.items() if k != "runtime"} == {
        k: v for k, v in torch.get("/healthz").json().items() if k != "runtime"}  # fmt: skip
    assert len(onnx.get("/world").json()["points"]) > 10  # the bundle's gallery drawn
    for photo in photos(4):
        for path in ("/predict?merge_km=0", "/explain?top_k=3&concepts_shown=5",
                     "/predict?near=20,100&radius=3000&abstain_below=0.2"):  # fmt: skip
            got, want = onnx.post(path, files=upload(photo)), torch.post(path, files=upload(photo))
            assert got.status_code == want.status_code == 200, got.text
            got, want = got.json(), want.json()
            assert_close_json(got, want, abs=1e-4, rel=1e-6, skip=ORDERLESS)
            heat = sorted(zip(got["map"]["heat"], got["map"]["names"], strict=True))
            assert_close_json([list(h) for h in heat], [list(h) for h in sorted(zip(
                want["map"]["heat"], want["map"]["names"], strict=True))], abs=1e-4)  # fmt: skip


def test_what_the_bundle_cannot_answer_is_a_400_in_one_line(clients):
    onnx, _ = clients
    photo = photos(1)[0]
    for path, said in (
        ("/explain?check=true", "--check: hints, albums, the deletion check"),
        ("/predict?hint=a%20harbour", "--hint: hints, albums"),
        ("/predict?merge_km=2", "this bundle holds sites of 5 km"),
    ):
        r = onnx.post(path, files=upload(photo))
        assert r.status_code == 400 and said in r.json()["error"], (path, r.text)
        assert "\n" not in r.json()["error"]
    r = onnx.post("/album", files=[("image", (p.name, p.read_bytes(), "image/jpeg"))
                                   for p in photos(2)])  # fmt: skip
    assert r.status_code == 400 and r.json()["error"].startswith("albums: hints, albums")
    r = onnx.get("/where?text=rice%20terraces")
    assert r.status_code == 400 and "text tower is not in the bundle" in r.json()["error"]
    assert onnx.get("/healthz").status_code == 200  # and it goes on answering


def test_serving_the_bundle_loads_no_torch(onnx_bundle, tmp_path):
    folder, _ = onnx_bundle
    photo = photos(1)[0]
    script = (
        "from fastapi.testclient import TestClient\n"
        "from geoconcept_cli.model.spec import ModelSpec\n"
        "from geoconcept_cli.serving.http import create_app, load_service\n"
        f"spec = ModelSpec(checkpoint={str(folder)!r}, runtime='onnx')\n"
        "client = TestClient(create_app(load_service(spec)))\n"
        f"data = open({str(photo)!r}, 'rb').read()\n"
        "codes = [client.post(p, files={'image': ('p.jpg', data, 'image/jpeg')}).status_code\n"
        "         for p in ('/predict', '/explain')]\n"
        "print(codes)\n"
    )  # fmt: skip
    assert without_torch(script, tmp_path).strip() == "[200, 200]"
