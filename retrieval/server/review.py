"""Operator review routes of the web app (audit servers only; 403 elsewhere): record a decision about an image,
list the review queue. Decisions go through `retrieval.review`, sharing the retriever's own image policy, so an
answer shows in the next search."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from retrieval.errors import InvalidQueryError, RetrievalError
from retrieval.policy.types import RawResult
from retrieval.review import OpenedIndex, decide_row, next_for_review
from retrieval.server.images import ImageService, image_threshold, parse_count, public_result

_NO_STORE = {"Cache-Control": "no-store"}


class ReviewForbiddenError(RetrievalError):
    """Review routes on a server that does not show flagged images (HTTP 403)."""


def review_router(retriever: Any, policy: str, images: ImageService) -> APIRouter:
    router = APIRouter()

    def reviewable() -> OpenedIndex:
        if policy != "audit":
            raise ReviewForbiddenError("operator review needs a server started with `retrieve serve --policy audit`")
        if not hasattr(retriever, "policy"):
            raise ReviewForbiddenError("this server's index does not support operator review")
        return OpenedIndex(Path(retriever.store.folder), retriever.store, retriever.model, retriever.policy)

    def audit_hits(ids: list[int]) -> list[dict[str, Any]]:
        hits = [replace(images.hit(i), rank=r + 1) for r, i in enumerate(ids)]
        raw = RawResult(query="", query_child=False, hits=hits, image_threshold=image_threshold(retriever))
        return public_result(raw, policy)["hits"]

    @router.post("/api/review")
    async def review(request: Request) -> JSONResponse:
        opened = reviewable()
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise InvalidQueryError('send a JSON object {"id": N, "decision": "child"|"none"|"clear", "operator": "name"}')
        count = int(retriever.store.count)
        raw_id = body.get("id")
        if not isinstance(raw_id, int) or isinstance(raw_id, bool) or not 0 <= raw_id < count:
            raise InvalidQueryError(f"id must be an index row 0..{count - 1}; take it from a hit's url")
        decision = body.get("decision")
        if decision not in ("child", "none", "clear"):
            raise InvalidQueryError("decision must be 'child', 'none' or 'clear'")
        operator = body.get("operator")
        what, _ = decide_row(opened, raw_id, decision, operator if isinstance(operator, str) else None)
        return JSONResponse({"result": what, "hit": audit_hits([raw_id])[0]}, headers=_NO_STORE)

    @router.get("/api/review/queue")
    def review_queue(n: str | None = None) -> JSONResponse:
        opened = reviewable()
        ids = [int(d["id"]) for d in next_for_review(opened.folder, parse_count(n, "n", 20), opened=opened)]
        return JSONResponse({"hits": audit_hits(ids)}, headers=_NO_STORE)

    return router
