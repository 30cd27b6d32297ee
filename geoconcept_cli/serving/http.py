"""`geoconcept serve`: HTTP over a service (:class:`~.service.GeoService`, or an ONNX bundle's
:class:`~.onnx_service.OnnxService`), and the page.

Only HTTP lives here: reading uploads within a size limit, query options, the API key, and
turning every failure into a 4xx (or, for a bug, 500) JSON ``{"error": "<one line>"}``. The
answers are the service's, which are the CLI's JSON. No endpoint takes a path on the server:
photos arrive as bytes, and the page is the package's own static files.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
import warnings
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.responses import Response

from .._version import __version__
from ..errors import GeoconceptError, first_line
from ..geo.limits import Limits
from ..inference.request import (
    HINT_WEIGHT,
    MAX_HINT_WEIGHT,
    MAX_MERGE_KM,
    MAX_SHOWN,
    MERGE_KM,
    MIN_DRAWS,
)
from ..inference.request import Request as Asked  # fastapi's Request is the HTTP one
from ..model.spec import ModelSpec
from ..runtime.progress import Log, Report, quiet, silent
from .photo_answers import Photo, Service

STATIC = Path(__file__).parent / "static"
PUBLIC = ("/healthz", "/")  # and /static/...: they need no key, they hold no data
log = logging.getLogger("geoconcept.serve")

IMAGE_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["image"],
        "properties": {"image": {"type": "string", "format": "binary",
                                 "description": "the photo (JPEG, PNG, WebP, TIFF...)"}},
    }}},
}  # fmt: skip


MAX_ALBUM = 16  # photos in one album upload
ALBUM_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["image"],
        "properties": {"image": {"type": "array", "items": {"type": "string", "format": "binary"},
                                 "description": f"2 to {MAX_ALBUM} photos of one place"}},
    }}},
}  # fmt: skip


TopK = Annotated[int, Query(ge=1, le=MAX_SHOWN, description="How many candidates.")]
MergeKm = Annotated[
    float, Query(ge=0, le=MAX_MERGE_KM, description="Gallery points this close are one candidate.")
]


def asked_limits(
    within: Annotated[
        list[str] | None,
        Query(description="Country, continent or region; repeatable (the union is searched)."),
    ] = None,
    near: Annotated[list[str] | None, Query(description="LAT,LON; repeatable.")] = None,
    radius: Annotated[list[float] | None, Query(description="Km around each near.")] = None,
    bbox: Annotated[list[str] | None, Query(description="S,W,N,E; repeatable.")] = None,
) -> Limits:
    """Where the answer may lie, as the commands' --within/--near/--radius/--bbox say it (a
    bad value: 400 with the commands' one-line error)."""
    return Limits.parse(within, near, radius, bbox)


Limited = Annotated[Limits, Depends(asked_limits)]
Hints = Annotated[list[str] | None, Query(description="What is known in words; repeatable.")]
HintWeight = Annotated[float, Query(gt=0, le=MAX_HINT_WEIGHT,
                                    description="A hint's weight against the photo.")]  # fmt: skip
AbstainBelow = Annotated[float | None, Query(
    ge=0, lt=1, description="Confidence below which the answer is 'not localizable' "
    "(default: the calibration's level; 0: always answer).")]  # fmt: skip


class _TooLarge(Exception):
    pass


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class _ApiKey(BaseHTTPMiddleware):
    """Every path but PUBLIC wants ``Authorization: Bearer <key>``."""

    def __init__(self, app: Any, key: str):
        super().__init__(app)
        self.expected = f"Bearer {key}".encode()

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        path = request.url.path
        public = path in PUBLIC or path.startswith("/static/")
        given = request.headers.get("authorization", "").encode()
        if not public and not secrets.compare_digest(given, self.expected):
            response = _error(401, "this server wants an API key: Authorization: Bearer <key>")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        return await call_next(request)


async def read_photos(request: Request, limit_bytes: int, most: int = 1) -> list[Photo]:
    """The photos in the multipart field ``image`` (repeated for an album: at most ``most``),
    refusing (4xx) a wrong content type, a malformed body, a missing field or more than
    ``limit_bytes`` a photo (counted as the body arrives)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise HTTPException(415, "send the photo as multipart/form-data in the field 'image'")
    too_large = f"upload over the server's limit of {limit_bytes / 2**20:g} MB (--max-upload-mb)"
    allowed = most * limit_bytes + 2**16  # allowance for the multipart
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > allowed:
        raise HTTPException(413, too_large)

    async def counted() -> AsyncGenerator[bytes, None]:
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > allowed:
                raise _TooLarge
            yield chunk

    parser = MultiPartParser(request.headers, counted(), max_files=most, max_fields=16)
    try:
        form = await parser.parse()
    except _TooLarge:
        raise HTTPException(413, too_large) from None
    except MultiPartException as exc:
        raise HTTPException(400, f"malformed multipart body: {exc.message}") from None
    try:
        fields = form.getlist("image")
        if not fields:
            raise HTTPException(400, "no field 'image': send the photo in the field 'image'")
        photos = []
        for field in fields:
            if not isinstance(field, UploadFile):
                raise HTTPException(400, "the field 'image' must be a file, not text")
            data = await field.read()
            if len(data) > limit_bytes:
                raise HTTPException(413, too_large)
            photos.append(Photo(data, Path(field.filename or "upload").name[:200] or "upload"))
        return photos
    finally:
        await form.close()


async def read_photo(request: Request, limit_bytes: int) -> Photo:
    """The one photo of a request (:func:`read_photos`)."""
    return (await read_photos(request, limit_bytes))[0]


def create_app(
    service: Service,
    api_key: str | None = None,
    max_upload_mb: float = 20,
    tiles: str | None = None,
) -> FastAPI:
    """The ASGI app: the JSON API (documented at /openapi.json) and the page at /."""
    # no /docs or /redoc: Swagger UI and ReDoc load their scripts from a CDN
    app = FastAPI(
        title="geoconcept", version=__version__, docs_url=None, redoc_url=None,
        description="Where a photo was taken, and why. Errors are {\"error\": \"<one line>\"}.",
    )  # fmt: skip
    limit = int(max_upload_mb * 2**20)
    if api_key:
        app.add_middleware(_ApiKey, key=api_key)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        response = _error(exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})  # 405's Allow
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        e = exc.errors()[0]
        where = ".".join(str(p) for p in e.get("loc", ())[1:]) or "request"
        return _error(422, f"{where}: {e.get('msg', 'invalid')}")

    @app.exception_handler(GeoconceptError)
    async def refused(request: Request, exc: GeoconceptError) -> JSONResponse:
        return _error(400, first_line(exc))

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); the server log has details")

    @app.get("/healthz", summary="What is loaded (no key needed)")
    def healthz() -> dict[str, Any]:
        return service.health()

    @app.get("/world", summary="Points that draw the world offline, and the optional tile URL")
    def world() -> JSONResponse:
        return JSONResponse({"points": service.world, "tiles": tiles})

    @app.post("/predict", openapi_extra={"requestBody": IMAGE_BODY},
              summary="Top-k places: `geoconcept predict --json`, plus `map`")  # fmt: skip
    async def predict(request: Request, limits: Limited, top_k: TopK = 5,
                      merge_km: MergeKm = MERGE_KM, hint: Hints = None,
                      hint_weight: HintWeight = HINT_WEIGHT,
                      abstain_below: AbstainBelow = None) -> JSONResponse:  # fmt: skip
        asked = Asked(top_k=top_k, merge_km=merge_km, limits=limits, hints=tuple(hint or ()),
                      hint_weight=hint_weight, abstain_below=abstain_below)  # fmt: skip
        service.check(asked)  # e.g. a level without a calibration: before reading the upload
        photo = await read_photo(request, limit)
        answer = await run_in_threadpool(service.predict, photo, asked)
        return JSONResponse(answer)

    @app.post("/explain", openapi_extra={"requestBody": IMAGE_BODY},
              summary="Where and why: `geoconcept explain --json`, plus `map`")  # fmt: skip
    async def explain(
        request: Request,
        limits: Limited,
        top_k: TopK = 5,
        concepts_shown: Annotated[int, Query(ge=1, le=MAX_SHOWN)] = 8,
        check: Annotated[bool, Query(description="Deletion test against random.")] = False,
        m: Annotated[int, Query(ge=1, description="Concepts removed by check.")] = 3,
        draws: Annotated[int, Query(ge=MIN_DRAWS, le=1000)] = MIN_DRAWS,
        merge_km: MergeKm = MERGE_KM,
        hint: Hints = None,
        hint_weight: HintWeight = HINT_WEIGHT,
        abstain_below: AbstainBelow = None,
    ) -> JSONResponse:
        asked = Asked(top_k=top_k, concepts_shown=concepts_shown, check=check, m=m, draws=draws,
                      merge_km=merge_km, limits=limits, hints=tuple(hint or ()),
                      hint_weight=hint_weight, abstain_below=abstain_below)  # fmt: skip
        service.check(asked)
        photo = await read_photo(request, limit)
        answer = await run_in_threadpool(service.explain, photo, asked)
        return JSONResponse(answer)

    @app.post("/album", openapi_extra={"requestBody": ALBUM_BODY},
              summary="Photos of one place together: `geoconcept predict DIR --together "
                      "--json`, plus `map`")  # fmt: skip
    async def album(request: Request, limits: Limited, top_k: TopK = 5,
                    merge_km: MergeKm = MERGE_KM, hint: Hints = None,
                    hint_weight: HintWeight = HINT_WEIGHT) -> JSONResponse:  # fmt: skip
        asked = Asked(top_k=top_k, merge_km=merge_km, limits=limits, hints=tuple(hint or ()),
                      hint_weight=hint_weight)  # fmt: skip
        service.check_album(asked)  # before the uploads are read
        photos = await read_photos(request, limit, MAX_ALBUM)
        if len(photos) < 2:
            raise HTTPException(400, "an album is 2 or more photos, each in a field 'image'")
        return JSONResponse(await run_in_threadpool(service.album, photos, asked))

    @app.get("/where", summary="Where a text or concept points: `geoconcept where --json`")
    def where(
        text: Annotated[str, Query(min_length=1, max_length=300)],
        limits: Limited,
        top_k: Annotated[int, Query(ge=1, le=MAX_SHOWN)] = 10,
        countries: Annotated[int, Query(ge=1, le=MAX_SHOWN)] = 10,
        merge_km: MergeKm = MERGE_KM,
    ) -> JSONResponse:
        asked = Asked(top_k=top_k, countries=countries, merge_km=merge_km, limits=limits)
        return JSONResponse(service.where(text, asked))

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``, taken before the models load, so that an address in
    use is refused at once, in one line, not after the loading."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise GeoconceptError(f"--host {host}: no such address ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise GeoconceptError(f"cannot listen on {host}:{port} ({exc.strerror}); give another "
                              "--port, or stop what holds it") from None  # fmt: skip
    return sock


def run_server(app: FastAPI, sock: socket.socket) -> None:
    """Serve on a :func:`bind` socket until Ctrl-C (uvicorn, one process: the models are
    loaded once)."""
    import uvicorn

    config = uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=5)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how it stops: exit 0
        uvicorn.Server(config).run(sockets=[sock])


LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def serve(spec: ModelSpec = ModelSpec(), host: str = "127.0.0.1", port: int = 8000,
          api_key: str | None = None, max_upload_mb: float = 20, tiles: str | None = None,
          report: Report = silent, log: Log = quiet) -> None:  # fmt: skip
    """`geoconcept serve`: take ``host:port`` first (an address in use is refused at once),
    load ``spec``'s explainer once, ``log`` the URL, and answer until Ctrl-C. Anything but a
    local ``host`` is warned about (and more loudly without an ``api_key``)."""
    if tiles is not None and not (
        tiles.startswith(("http://", "https://")) and all(f"{{{v}}}" in tiles for v in "zxy")
    ):
        raise GeoconceptError(f"--tiles {tiles}: an http(s) tile URL with {{z}}, {{x}} and {{y}}")
    with bind(host, port) as sock:  # a port in use stops us before the loading
        if host not in LOCAL_HOSTS:
            warnings.warn(f"--host {host}: the server is reachable from other machines"
                          + ("" if api_key else "; anyone who can reach it can use it (set "
                             "--api-key or $GEOCONCEPT_API_KEY)"), stacklevel=2)  # fmt: skip
        service = load_service(spec, report)
        app = create_app(service, api_key, max_upload_mb, tiles)
        shown = f"[{host}]" if ":" in host else host
        log(f"geoconcept serving {service.health()['mode']} at http://{shown}:{port}/ "
            "(Ctrl-C stops)")  # fmt: skip
        run_server(app, sock)


def load_service(spec: ModelSpec, report: Report = silent) -> Service:
    """The service of ``spec``'s runtime: torch's GeoService, or an ONNX bundle's OnnxService
    (which loads no torch)."""
    from ..inference.loading import check_runtime, load_onnx_predictor

    check_runtime(spec)
    if spec.runtime != "torch":
        from ..inference.onnx_explainer import OnnxExplainer
        from .onnx_service import OnnxService

        return OnnxService(OnnxExplainer(load_onnx_predictor(spec, prepack=True)))
    from ..inference.factory import load_explainer
    from .service import GeoService

    return GeoService(load_explainer(spec, report))
