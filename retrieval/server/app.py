"""HTTP API and web page over one loaded Retriever.

`create_app(retriever, policy)` receives its parts (tests pass a fake retriever). Routes:
    GET /                  the search page (static/index.html + app.js + style.css; no CDN, works offline)
    GET /api/search        q, k (1..100), min_score (0..1), under -> the `apply_policy` object; visible hits gain url/thumb
    GET /api/health        {"status", "count", "model_id", "policy"}
    GET /api/image/{id}    the original file of index row id (404 unknown id, 451 withheld by policy)
    GET /api/thumb/{id}    a cached JPEG thumbnail of it (same rules)
    GET /api/similar/{id}  k, under, min_score -> images like row id ("more like this"; calibrated image-to-image
                           `score` plus the raw cosine `similarity`)
    POST /api/search       multipart image (+ q, k, under, min_score) -> images like the uploaded photo (413 too big,
                           429 too many uploads from one client)
  audit servers only (operator review, `retrieval.review`; 403 under strict/off):
    POST /api/review       {"id", "decision": child|none|clear, "operator"} -> the hit as the policy now sees it
    GET /api/review/queue  n (1..100) -> {"hits": [...]}: unreviewed images most worth a look, best first
Every error is JSON {"error": "<one line naming the fix>"} with a 4xx/5xx status.
"""
from __future__ import annotations

import asyncio
import mimetypes
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from retrieval import __version__
from retrieval.errors import USER_ERRORS, ImageDecodeError, InvalidQueryError
from retrieval.limits import MAX_QUERY_CHARS
from retrieval.policy.apply import validate_policy
from retrieval.server.access import UploadRateError, UploadTooLargeError, require_token
from retrieval.server.batcher import SearchBatcher, ServerBusyError
from retrieval.server.examples import example_router
from retrieval.server.images import (ImageNotFoundError, ImageService, ImageWithheldError, parse_count,
                                     parse_min_score, public_result)
from retrieval.server.review import ReviewForbiddenError, review_router


STATIC_DIR = Path(__file__).resolve().parent / "static"
#: The only files /static serves (a fixed table: no client-given path ever reaches the file system).
STATIC_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
_STATUS = {UploadTooLargeError: 413, UploadRateError: 429, ReviewForbiddenError: 403, InvalidQueryError: 400, ImageNotFoundError: 404, ImageWithheldError: 451, ServerBusyError: 503,
           ImageDecodeError: 500}
_NO_STORE = {"Cache-Control": "no-store"}
_IMAGE_HEADERS = {"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"}


def model_id(retriever: Any) -> str | None:
    """A short name for the loaded model: the retriever's `model_id`, else encoders + the heads' sha256 prefix."""
    explicit = getattr(retriever, "model_id", None)
    if explicit:
        return str(explicit)
    config = getattr(getattr(retriever, "model", None), "config", None)
    if config is None:
        return None
    parts = [str(getattr(config, name)) for name in ("image_encoder", "text_encoder") if getattr(config, name, None)]
    checksum = getattr(config, "model_id", None) or getattr(config, "checksum", None)
    if checksum:
        parts.append(str(checksum)[:12])
    return "|".join(parts) or None


def parse_search_params(q: str | None, k: str | None, min_score: str | None) -> tuple[str, int, float]:
    """Validate the raw query-string values; raises InvalidQueryError naming the bad value and the fix."""
    text = " ".join((q or "").split())
    if not text:
        raise InvalidQueryError("missing query; pass ?q=some+words, e.g. /api/search?q=a+dog+on+a+beach")
    if len(text) > MAX_QUERY_CHARS:
        raise InvalidQueryError(f"query is {len(text)} characters long; the limit is {MAX_QUERY_CHARS}, shorten q")
    return text, parse_count(k, "k", 10), parse_min_score(min_score)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error becomes JSON {"error": one line naming the fix} with its status (`_STATUS`, else 500)."""

    async def _user_error(_req: Request, err: Exception) -> JSONResponse:
        status = next((code for cls, code in _STATUS.items() if isinstance(err, cls)), 500)
        return _error(status, str(err))

    for kind in USER_ERRORS:
        app.add_exception_handler(kind, _user_error)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(req: Request, err: StarletteHTTPException) -> JSONResponse:
        message = f"no route {req.url.path[:80]!r}; open / for the search page" if err.status_code == 404 else str(err.detail)
        return _error(err.status_code, message, getattr(err, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_req: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(422, f"invalid {where or 'request'}: {first.get('msg', 'bad value')}")


def create_app(retriever: Any, policy: str = "strict", *, thumb_dir: str | Path | None = None,
               thumb_size: int = 256, max_batch: int = 32, batch_window_ms: float = 2.0,
               token: str | None = None) -> FastAPI:
    """Build the web app over an opened retriever (anything with search_many, store.count and a hit lookup).
    With `token`, every request must carry it (`server.access`)."""
    policy = validate_policy(policy)
    if thumb_dir is None:
        from retrieval.config import cache_dir

        thumb_dir = cache_dir() / "thumbs"

    def new_batcher() -> SearchBatcher:
        return SearchBatcher(retriever.search_many, max_batch=max_batch, window_s=batch_window_ms / 1000.0)

    batcher = new_batcher()
    images = ImageService(retriever, policy, Path(thumb_dir), thumb_size)
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    static = {name: (STATIC_DIR / name).read_bytes() for name in STATIC_FILES}

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if app.state.batcher.closed:  # a restarted lifespan (tests, reloaders) gets a fresh batcher
            app.state.batcher = new_batcher()
        yield
        app.state.batcher.close()

    app = FastAPI(title="retrieval", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/api/openapi.json")
    app.state.retriever, app.state.batcher, app.state.images, app.state.policy = retriever, batcher, images, policy

    _add_error_handlers(app)
    if token:
        require_token(app, token)

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(page, headers=_NO_STORE)

    @app.get("/static/{name}")
    def static_file(name: str) -> Response:
        if name not in static:
            return _error(404, f"no static file {name[:40]!r}; the page uses only {', '.join(STATIC_FILES)}")
        return Response(static[name], media_type=STATIC_FILES[name], headers=_NO_STORE)

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "count": int(retriever.store.count), "model_id": model_id(retriever),
                "policy": policy}

    @app.get("/api/search")
    async def search(q: str | None = None, k: str | None = None, min_score: str | None = None,
                     under: str | None = None) -> JSONResponse:
        text, k_val, ms_val = parse_search_params(q, k, min_score)
        raw = await asyncio.wrap_future(app.state.batcher.submit(text, k_val, ms_val, under or None))
        return JSONResponse(public_result(raw, policy), headers=_NO_STORE)

    app.include_router(review_router(retriever, policy, images))
    app.include_router(example_router(retriever, policy, images))

    @app.get("/api/image/{image_id}")
    def image(image_id: str) -> FileResponse:
        path = images.path_of(image_id)
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media, headers=_IMAGE_HEADERS)

    @app.get("/api/thumb/{image_id}")
    def thumb(image_id: str) -> Response:
        return Response(images.thumbnail(image_id), media_type="image/jpeg", headers=_IMAGE_HEADERS)

    return app
