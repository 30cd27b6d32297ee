"""`serve`: the JSON API over the real app (tiny CLIP, GeoCLIP's real head and 100K gallery)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import TINY_CLIP, heic_of, shared_data, tiny_spec
from fastapi.testclient import TestClient
from PIL import ExifTags, Image
from serving import abstaining_below, live_server

from geoconcept_cli import GeoService, Photo, Request, load_explainer
from geoconcept_cli.geo.distance import haversine_km
from geoconcept_cli.serving.http import create_app


@pytest.fixture(scope="module")
def service() -> GeoService:
    with pytest.warns(UserWarning):  # random CLIP weights
        return GeoService(load_explainer(tiny_spec()))


@pytest.fixture(scope="module")
def client(service) -> TestClient:
    return TestClient(create_app(service, max_upload_mb=1), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def photos() -> list[Path]:
    return sorted(shared_data("im2gps3k", "images").iterdir())[:2]


def jpeg(size=(96, 64), colour="teal", gps=None) -> bytes:
    """A small JPEG, with EXIF GPS tags when ``gps`` is (lat_dms, lat_ref, lon_dms, lon_ref)."""
    exif = Image.Exif()
    if gps is not None:
        exif[ExifTags.IFD.GPSInfo] = {1: gps[1], 2: gps[0], 3: gps[3], 4: gps[2]}
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG", exif=exif)
    return buf.getvalue()


def upload(data: bytes, name="photo.jpg") -> dict:
    return {"image": (name, data, "image/jpeg")}


def without_map(answer: dict) -> dict:
    return {k: v for k, v in answer.items() if k != "map"}


def test_healthz_says_what_is_loaded(client):
    h = client.get("/healthz").json()
    assert h["mode"] == "zero-shot" and h["clip_model"] == "tiny-clip-768"
    assert h["gallery_size"] == 100_000 and 90_000 < h["places"] < 100_000
    assert h["concepts"] == 645 and h["calibrated"] is False


def test_explain_is_the_cli_json_plus_the_map(client, service, photos):
    """Per point (merge_km=0) the top candidate is the heatmap's first point."""
    r = client.post("/explain?top_k=4&concepts_shown=5&merge_km=0",
                    files=upload(photos[0].read_bytes(), photos[0].name))  # fmt: skip
    assert r.status_code == 200
    got = r.json()
    asked = Request(top_k=4, concepts_shown=5, merge_km=0)
    want = service.explainer.explain(photos[0], asked).to_json()
    want["image"] = photos[0].name  # the upload's name: the server has no path
    assert json.loads(json.dumps(without_map(got))) == json.loads(json.dumps(want))
    heat = np.array(got["map"]["heat"])
    assert heat.shape == (2000, 3) and np.all(np.diff(heat[:, 2]) <= 0)
    top = got["predictions"][0]
    assert heat[0, :2] == pytest.approx([top["lat"], top["lon"]], abs=1e-5)
    assert heat[0, 2] == pytest.approx(top["prob"], rel=1e-6)
    assert got["map"]["heat_mass"] == pytest.approx(heat[:, 2].sum())
    assert len(got["map"]["names"]) == 2000 and got["map"]["names"][0] == top["place"]
    assert "truth" not in got["map"]  # the Im2GPS3k photos carry no EXIF GPS


def test_predict_is_the_cli_json_plus_the_map(client, service, photos):
    got = client.post("/predict?top_k=3", files=upload(photos[1].read_bytes())).json()
    want = service.predictor.predict(photos[1], Request(top_k=3)).to_json()
    assert without_map(got) == json.loads(json.dumps({**want, "image": "photo.jpg"}))
    assert len(got["map"]["heat"]) == 2000


def test_exif_gps_gives_the_true_location_and_the_error(client):
    sydney = ((33.0, 52.0, 4.0), "S", (151.0, 12.0, 36.0), "E")
    got = client.post("/explain", files=upload(jpeg(gps=sydney))).json()
    truth, top = got["map"]["truth"], got["predictions"][0]
    assert (truth["lat"], truth["lon"]) == pytest.approx((-33.867778, 151.21), abs=1e-5)
    assert "AU" in truth["place"]
    assert truth["error_km"] == pytest.approx(
        float(haversine_km(top["lat"], top["lon"], truth["lat"], truth["lon"])), rel=1e-9
    )


def test_an_iphone_heic_upload_is_explained_with_its_gps(client, service, photos):
    sydney = ((33.0, 52.0, 4.0), "S", (151.0, 12.0, 36.0), "E")
    r = client.post("/explain?top_k=2", files=upload(heic_of(photos[0], 6, sydney), "IMG_1.HEIC"))
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["image"] == "IMG_1.HEIC" and len(got["predictions"]) == 2
    assert (got["map"]["truth"]["lat"], got["map"]["truth"]["lon"]) == pytest.approx(
        (-33.867778, 151.21), abs=1e-5
    )


def bomb() -> bytes:
    """A 96-megapixel PNG of a few KB: more pixels than PIL will decode."""
    buf = io.BytesIO()
    Image.new("1", (12_000, 8_000)).save(buf, "PNG")
    return buf.getvalue()


def truncated(photos) -> bytes:
    data = photos[0].read_bytes()
    return data[: len(data) // 3]


BAD_UPLOADS = {
    "not an image": (lambda p: {"files": upload(b"just some text\n" * 10)}, 400),
    "zero bytes": (lambda p: {"files": upload(b"")}, 400),
    "truncated": (lambda p: {"files": upload(truncated(p))}, 400),
    "html": (lambda p: {"files": upload(b"<!doctype html><html><body>hi</body></html>",
                                        "x.html")}, 400),  # fmt: skip
    "decompression bomb": (lambda p: {"files": upload(bomb(), "bomb.png")}, 400),
    "over the upload limit": (lambda p: {"files": upload(os.urandom(1_200_000))}, 413),
    "missing field": (lambda p: {"files": {"photo": ("p.jpg", jpeg(), "image/jpeg")}}, 400),
    "text in the field": (lambda p: {"files": {"other": ("p.jpg", jpeg(), "image/jpeg")},
                                     "data": {"image": "photo.jpg"}}, 400),  # fmt: skip
    "wrong content type": (lambda p: {"content": jpeg(),
                                      "headers": {"content-type": "image/jpeg"}}, 415),
    "json body": (lambda p: {"json": {"image": "/etc/passwd"}}, 415),
    "malformed multipart": (lambda p: {
        "content": b"--zzz\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nabc",
        "headers": {"content-type": "multipart/form-data; boundary=other"}}, 400),
    "two files": (lambda p: {"files": [("image", ("a.jpg", jpeg(), "image/jpeg")),
                                       ("image", ("b.jpg", jpeg(), "image/jpeg"))]}, 400),
    "bad option": (lambda p: {"params": {"top_k": "many"}, "files": upload(jpeg())}, 422),
    "option out of range": (lambda p: {"params": {"draws": 3}, "files": upload(jpeg())}, 422),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_uploads_get_a_one_line_4xx_and_the_server_keeps_serving(client, photos, case):
    make, status = BAD_UPLOADS[case]
    r = client.post("/explain", **make(photos))
    assert r.status_code == status, r.text
    body = r.json()
    assert list(body) == ["error"] and "\n" not in body["error"] and body["error"]
    assert "Traceback" not in r.text
    ok = client.post("/predict?top_k=1", files=upload(jpeg()))
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 1


def test_a_check_on_a_zero_shot_model_is_refused_saying_what_it_needs(client):
    """As the command refuses --check without a concept-aware run (it once answered, with a
    note at the end of the explanation)."""
    r = client.post("/explain?check=true", files=upload(jpeg()))
    assert r.status_code == 400 and "give a concept-aware --checkpoint" in r.json()["error"]


def test_the_api_lists_at_most_what_the_command_does(client):
    """One rule for both: at most MAX_SHOWN (100) places, concepts or countries."""
    r = client.post("/predict?top_k=101", files=upload(jpeg()))
    assert r.status_code == 422 and "less than or equal to 100" in r.json()["error"]


def test_where_answers_text_and_refuses_empty_text(client):
    asked = {"text": "rice terraces", "top_k": 3}
    got = client.get("/where", params={**asked, "merge_km": 0}).json()
    assert got["mode"] == "zero-shot text as image" and len(got["places"]) == 3
    assert got["map"]["heat"][0][2] == pytest.approx(got["places"][0]["score"], abs=1e-6)
    merged = client.get("/where", params=asked).json()  # nearby points summed: 5 km apart
    lat, lon = (np.array([p[c] for p in merged["places"]]) for c in ("lat", "lon"))
    assert (
        merged["merge_km"] == 5
        and haversine_km(lat[:, None], lon[:, None], lat, lon)[np.triu_indices(3, 1)].min() > 5
    )
    assert merged["places"][0]["score"] >= got["places"][0]["score"]
    r = client.get("/where", params={**asked, "merge_km": -1})
    assert r.status_code == 422 and list(r.json()) == ["error"]
    for params in ({"text": "   "}, {"text": ""}, {}):
        r = client.get("/where", params=params)
        assert r.status_code in (400, 422) and list(r.json()) == ["error"]


def test_no_endpoint_takes_a_server_path(client):
    spec = client.get("/openapi.json").json()
    for path, ops in spec["paths"].items():
        for op in ops.values():
            names = [p["name"] for p in op.get("parameters", [])]
            assert not {"path", "file", "filename"} & set(names), (path, names)
    body = spec["paths"]["/explain"]["post"]["requestBody"]["content"]
    assert body["multipart/form-data"]["schema"]["properties"]["image"]["format"] == "binary"
    for sneaky in ("/static/%2e%2e/server.py", "/static/..%2fserver.py", "/static/%2e%2e%2fcli.py"):
        r = client.get(sneaky)  # percent-encoded: httpx would resolve a plain "../" itself
        assert r.status_code == 404 and "def " not in r.text
    assert client.get("/docs").status_code == 404  # Swagger UI would need a CDN


def test_unknown_paths_and_methods_answer_json(client):
    assert client.get("/nowhere").json() == {"error": "Not Found"}
    r = client.get("/explain")
    assert r.status_code == 405 and list(r.json()) == ["error"] and r.headers["allow"] == "POST"


def test_the_upload_limit_is_counted_as_the_body_arrives(client):
    """No Content-Length to trust (chunked), or one within the multipart allowance: the
    bytes themselves are counted (the limit here is 1 MB)."""
    boundary = "b0undary"

    def chunked(size: int):
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
            f'filename="big.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        ).encode()
        for _ in range(size // 65536):
            yield b"\0" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    r = client.post("/explain", content=chunked(3 * 2**20), headers=headers)
    assert r.status_code == 413 and "--max-upload-mb" in r.json()["error"]
    just_over = upload(os.urandom(2**20 + 10_000))  # passes the header check, not the count
    r = client.post("/explain", files=just_over)
    assert r.status_code == 413 and "--max-upload-mb" in r.json()["error"]


def test_api_key_guards_every_endpoint_but_healthz_and_the_page(service):
    c = TestClient(create_app(service, api_key="s3cret"))
    assert c.get("/healthz").status_code == 200
    assert c.get("/").status_code == 200 and c.get("/static/app.js").status_code == 200
    for method, path in (("post", "/explain"), ("post", "/predict"), ("get", "/where?text=x"),
                         ("get", "/world"), ("get", "/openapi.json")):  # fmt: skip
        r = getattr(c, method)(path)
        assert r.status_code == 401 and "API key" in r.json()["error"]
        assert r.headers["www-authenticate"] == "Bearer"
        wrong = getattr(c, method)(path, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
    ok = c.post("/predict", files=upload(jpeg()), headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.e2e
@pytest.mark.slow
def test_concurrent_clients_good_and_bad_mixed(service, photos):
    """8 clients x 20 requests over real HTTP: every good answer is the serial one, every bad
    one a 4xx, no 5xx, and memory does not grow with the requests."""
    good = [p.read_bytes() for p in photos]
    serial = [service.explain(Photo(d, "p.jpg"), Request(top_k=3)) for d in good]
    bad = [(upload(b"not an image"), 400), (upload(os.urandom(1_200_000)), 413),
           ({"photo": ("p.jpg", good[0], "image/jpeg")}, 400)]  # fmt: skip
    results: list[tuple[str, int, object]] = []
    lock = threading.Lock()

    def client_run(base: str, seed: int, n: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(base_url=base, timeout=120) as http:
            for _ in range(n):
                if rng.random() < 0.6:
                    i = int(rng.integers(len(good)))
                    r = http.post("/explain?top_k=3", files=upload(good[i]))
                    out = ("good", r.status_code, (i, r.json() if r.status_code == 200 else r.text))
                else:
                    files, want = bad[int(rng.integers(len(bad)))]
                    r = http.post("/explain", files=files)
                    out = ("bad", r.status_code, (want, r.json()))
                with lock:
                    results.append(out)

    def round_of(base: str, n: int, seed: int) -> None:
        threads = [threading.Thread(target=client_run, args=(base, seed + t, n)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    with live_server(create_app(service, max_upload_mb=1)) as base:
        round_of(base, 20, 100)  # warm-up: allocator pools, thread pool, caches
        before = rss_mb()
        results.clear()
        round_of(base, 20, 0)
        grown = rss_mb() - before
    assert len(results) == 160
    assert not [r for r in results if r[1] >= 500]
    for kind, status, payload in results:
        if kind == "good":
            i, answer = payload
            assert status == 200, answer
            assert answer["predictions"] == serial[i]["predictions"]
            assert answer["photo_concepts"] == serial[i]["photo_concepts"]
        else:
            want, body = payload
            assert status == want and list(body) == ["error"]
    assert sum(r[0] == "good" for r in results) > 60
    assert grown < 32, f"memory grew {grown:.0f} MB over 160 requests"


@pytest.mark.e2e
def test_cli_serve_starts_answers_and_stops_cleanly_on_ctrl_c(tmp_path, small_gallery):
    port = 18000 + os.getpid() % 1000
    cmd = [
        sys.executable,
        "-m",
        "geoconcept_cli",
        "serve",
        "--clip-model",
        TINY_CLIP,
        "--clip-pretrained",
        "none",
        "--gallery",
        str(small_gallery),
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                h = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline, "serve did not come up"
                time.sleep(0.3)
        assert h.json()["gallery_size"] == 500
        page = httpx.get(f"http://127.0.0.1:{port}/")
        assert "<canvas" in page.text and "cdn" not in page.text.lower()
        proc.send_signal(signal.SIGINT)
        out, errs = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, errs
    assert f"http://127.0.0.1:{port}/" in out


@pytest.mark.e2e
def test_cli_serve_warns_when_bound_beyond_this_machine(small_gallery):
    """The warning comes first, before the models load; the test stops it there."""
    cmd = [sys.executable, "-m", "geoconcept_cli", "serve", "--host", "0.0.0.0",
           "--port", "1", "--clip-model", TINY_CLIP, "--clip-pretrained", "none",
           "--gallery", str(small_gallery)]  # fmt: skip
    env = {**os.environ, "GEOCONCEPT_API_KEY": ""}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)  # fmt: skip
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
    finally:
        proc.kill()
        proc.communicate()
    assert "--host 0.0.0.0: the server is reachable from other machines" in line
    assert "--api-key" in line


def test_cli_serve_refuses_a_port_in_use_before_loading_anything(monkeypatch):
    """Before, uvicorn found the port taken only after the models had loaded, and said so
    among its own log lines with exit code 3."""
    import socket

    from typer.testing import CliRunner

    import geoconcept_cli.serving.http
    from geoconcept_cli.cli.app import app

    def no_loading(*args, **kwargs):
        raise AssertionError("loaded the models for a port it cannot listen on")

    monkeypatch.setattr(geoconcept_cli.serving.http, "load_service", no_loading)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = CliRunner().invoke(app, ["serve", "--port", str(port)])
    assert r.exit_code == 2, r.output
    assert r.output.strip() == (f"error: cannot listen on 127.0.0.1:{port} (Address already in "
                                "use); give another --port, or stop what holds it")  # fmt: skip
    r = CliRunner().invoke(app, ["serve", "--host", "no-such-host.invalid"])
    assert r.exit_code == 2 and r.output.startswith(
        "error: --host no-such-host.invalid: no such address"
    )
    assert len(r.output.strip().splitlines()) == 1


def test_cli_serve_refuses_bad_options_in_one_line():
    from typer.testing import CliRunner

    from geoconcept_cli.cli.app import app

    r = CliRunner().invoke(app, ["serve", "--tiles", "https://example.org/tile.png"])
    assert r.exit_code == 2 and "{z}, {x} and {y}" in r.output
    assert len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(app, ["serve", "--tiles", "/tiles/{z}/{x}/{y}.png"])
    assert r.exit_code == 2 and "http(s)" in r.output


def test_a_search_limited_to_a_country_answers_from_inside_it(client, photos):
    """The commands' --within/--near/--radius as query parameters; a bad one is a 400 with
    the commands' one line."""
    got = client.post("/predict?top_k=3&within=France", files=upload(photos[1].read_bytes()))
    body = got.json()
    assert got.status_code == 200, body
    lat, lon = (np.array([c[k] for c in body["predictions"]]) for k in ("lat", "lon"))
    from geoconcept_cli.geo.geocode import reverse_geocode

    assert set(reverse_geocode(np.stack([lat, lon], 1)).country) == {"FR"}
    assert body["probabilities"]["limited_to"].startswith("France (FR)")
    heat = np.array(body["map"]["heat"])
    assert set(reverse_geocode(heat[:, :2]).country) == {"FR"}  # the heatmap inside too
    near = client.get("/where", params={"text": "harbour", "near": "35.0,135.7", "radius": 50})
    assert near.status_code == 200
    for p in near.json()["places"]:
        assert haversine_km(35.0, 135.7, p["lat"], p["lon"]) <= 50
    for params in ({"within": "Atlantis"}, {"near": "1,2"}, {"near": "0,-30", "radius": 1}):
        r = client.get("/where", params={"text": "harbour", **params})
        assert r.status_code == 400 and list(r.json()) == ["error"], r.json()


def test_hints_go_with_a_photos_question(client, photos):
    """`hint` (repeatable) and `hint_weight` as the commands' --hint/--hint-weight: the answer
    says what each hint maps onto and gave; a weight out of range is a 422."""
    files = upload(photos[1].read_bytes())
    got = client.post("/explain?top_k=3&hint=red telephone box&hint=qwzx blorp", files=files)
    named, nonsense = got.json()["hints"]
    assert named["applied"] and named["concepts"][0]["concept"] == "red telephone box"
    assert -1 <= named["share"] <= 1 and not nonsense["applied"]
    plain = client.post("/predict?top_k=3", files=files).json()["predictions"]
    hinted = client.post("/predict?top_k=3&hint=red telephone box&hint_weight=4", files=files)
    assert hinted.json()["hints"][0]["weight"] == 4
    assert hinted.json()["predictions"] != plain  # a weight of 4 moves a random photo's answer
    r = client.post("/predict?hint=x&hint_weight=0", files=files)
    assert r.status_code == 422 and list(r.json()) == ["error"]


def test_an_album_upload_is_located_together(client, service, photos):
    """Several files in the field 'image' (2 to 16): `predict DIR --together --json` of them,
    with a map of each photo's own answer; one photo, or too many, is a 400."""
    files = [("image", (p.name, p.read_bytes(), "image/jpeg")) for p in photos[:2]]
    got = client.post("/album?top_k=3&within=Europe", files=files)
    body = got.json()
    assert got.status_code == 200, body
    assert body["images"] == [p.name for p in photos[:2]] and len(body["predictions"]) == 3
    assert [ph["image"] for ph in body["photos"]] == body["images"]
    assert all(len(ph["concepts"]) == 3 for ph in body["photos"])
    assert body["probabilities"]["limited_to"].startswith("Europe")
    assert len(body["map"]["heat"]) == 2 and len(body["map"]["names"]) == 2
    r = client.post("/album", files=files[:1])
    assert r.status_code == 400 and "2 or more photos" in r.json()["error"]
    r = client.post("/album", files=files * 9)  # 18 files
    assert r.status_code == 400 and list(r.json()) == ["error"]


def test_a_photo_below_the_abstention_level_is_not_localizable(client, service):
    """abstain_below goes with a photo's question; below the level (the calibration's by
    default) the answer says so and still carries the best guess."""
    r = client.post("/predict?abstain_below=1.5", files=upload(jpeg()))
    assert r.status_code == 422  # not a probability below 1
    r = client.post("/predict?abstain_below=0.5", files=upload(jpeg()))
    assert r.status_code == 400 and "run geoconcept calibrate first" in r.json()["error"]
    with abstaining_below(service.predictor, 0.99):
        for path in ("/predict", "/explain"):
            a = client.post(path, files=upload(jpeg())).json()
            c = a["confidence"]
            assert c["answered"] is False and c["level"] == 0.99 and 0 <= c["probability"] < 0.99
            assert c["guarantee"].startswith("with 90% certainty") and len(a["predictions"]) == 5
            assert a["region"]["coverage"] == pytest.approx(0.9)
        a = client.post("/predict?abstain_below=0", files=upload(jpeg())).json()
        assert a["confidence"]["answered"] is True and a["confidence"]["guarantee"] is None
    assert "confidence" not in client.post("/predict", files=upload(jpeg())).json()
