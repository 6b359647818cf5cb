"""Search-by-example routes of the web app: "more like this" on an indexed image, and search by an uploaded photo.
Both go through `Retriever.search_by_example` (the query photo checked by the child detector) and `public_result`."""
from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from retrieval.errors import ImageDecodeError, InvalidQueryError
from retrieval.index.imageio import decode_image
from retrieval.limits import MAX_UPLOAD_BYTES, MAX_UPLOAD_REQUEST_BYTES
from retrieval.server.access import UploadGate, UploadTooLargeError
from retrieval.server.images import ImageService, parse_count, parse_min_score, public_result

_NO_STORE = {"Cache-Control": "no-store"}


def example_router(retriever: Any, policy: str, images: ImageService) -> APIRouter:
    router = APIRouter()
    uploads = UploadGate()

    def searcher() -> Any:
        search = getattr(retriever, "search_by_example", None)
        if search is None:
            raise InvalidQueryError("this server's index does not support search by example")
        return search

    @router.get("/api/similar/{image_id}")
    def similar(image_id: str, k: str | None = None, under: str | None = None,
                min_score: str | None = None) -> JSONResponse:
        """Images like an indexed one ("more like this"): its stored vector, no re-embedding; a withheld source
        is 451 like its image."""
        images.path_of(image_id)  # 404 unknown id, 451 withheld under this policy
        raw = searcher()(like_row=int(image_id), k=parse_count(k, "k", 10), under=under or None,
                         min_score=parse_min_score(min_score))
        return JSONResponse(public_result(raw, policy), headers=_NO_STORE)

    @router.post("/api/search")
    async def search_by_photo(request: Request) -> JSONResponse:
        """Multipart form: `image` (a photo, at most MAX_UPLOAD_BYTES), optional `q`, `k`, `under`, `min_score`: images like the
        photo (steered by q). The photo is decoded by the same safe decoder and checked by the child detector."""
        length = request.headers.get("content-length", "")
        if not length.isdigit() or int(length) > MAX_UPLOAD_REQUEST_BYTES:  # refuse before anything is read
            raise UploadTooLargeError(f"send the photo with a Content-Length of at most {MAX_UPLOAD_BYTES // 2**20} MB")
        uploads.admit(request.client.host if request.client else "")
        form = await request.form(max_files=1, max_fields=8)
        photo = form.get("image")
        if photo is None or isinstance(photo, str):
            raise InvalidQueryError("send the photo as a multipart field named `image` (and optionally q, k, under)")
        data = await photo.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            raise UploadTooLargeError(f"photo over {MAX_UPLOAD_BYTES // 2**20} MB; send a smaller one")
        k_val = parse_count(str(form.get("k") or "") or None, "k", 10)  # an empty form field means the default
        ms_val = parse_min_score(str(form.get("min_score") or "") or None)
        search = searcher()
        try:
            image = decode_image(data)
        except ImageDecodeError as err:
            raise InvalidQueryError(f"the uploaded file is not a usable photo: {err}") from None
        text = " ".join(str(form.get("q") or "").split()) or None
        raw = await asyncio.to_thread(search, [image], text=text, k=k_val, under=str(form.get("under") or "") or None,
                                      min_score=ms_val)
        return JSONResponse(public_result(raw, policy), headers=_NO_STORE)

    return router
