"""Who may see what: an access token for servers that expose the library.

`retrieve serve` needs a token when it listens beyond loopback (anyone who can reach the port would see every
photo) and always under `--policy audit` (it shows withheld images and takes review decisions). Without `--token` /
$RETRIEVAL_TOKEN it makes one and prints the URL that carries it. A request proves it knows the token by an
`Authorization: Bearer` header (API clients), the `retrieval_token` cookie, or `?token=` once in the page URL
(which sets that cookie, so thumbnails and API calls from the page carry it); anything else gets 401 JSON.
"""
from __future__ import annotations

import ipaddress
import os
import secrets
import threading
import time
from collections import deque
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse

from retrieval.errors import RetrievalError
from retrieval.limits import MAX_UPLOAD_REQUEST_BYTES, UPLOADS_PER_MINUTE

TOKEN_ENV = "RETRIEVAL_TOKEN"
COOKIE = "retrieval_token"
#: Request bodies above this size are refused (413) before they are read: the review API takes a few fields;
#: a search-by-photo upload (POST /api/search) may carry up to `limits.MAX_UPLOAD_REQUEST_BYTES`.
MAX_BODY_BYTES = 16 * 1024


class UploadTooLargeError(RetrievalError):
    """An uploaded photo over the size limit (HTTP 413)."""


class UploadRateError(RetrievalError):
    """Too many uploads from one client (HTTP 429)."""


class UploadGate:
    """At most UPLOADS_PER_MINUTE search-by-photo uploads per client address in any 60 s (a sliding window)."""

    def __init__(self, per_minute: int = UPLOADS_PER_MINUTE) -> None:
        self.per_minute = per_minute
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def admit(self, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            times = self._seen.setdefault(client, deque())
            while times and now - times[0] > 60.0:
                times.popleft()
            if len(times) >= self.per_minute:
                raise UploadRateError(f"more than {self.per_minute} photo searches a minute from this client; wait a "
                                      "little and retry")
            times.append(now)


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serving_token(host: str, policy: str, token: str | None = None) -> str | None:
    """The token a server must require: the given one (or $RETRIEVAL_TOKEN); else a fresh one when the server
    listens beyond loopback or runs the audit view; None for a strict/off server on loopback."""
    given = token or os.environ.get(TOKEN_ENV) or None
    if given:
        return given
    if policy == "audit" or not is_loopback(host):
        return secrets.token_urlsafe(24)
    return None


def require_token(app: FastAPI, token: str) -> None:
    """Every route answers only requests that carry `token` (see module docstring)."""

    def known(request: Request) -> bool:
        auth = request.headers.get("authorization", "")
        offered = [auth[7:] if auth.lower().startswith("bearer ") else "", request.cookies.get(COOKIE, ""),
                   request.query_params.get("token", "")]
        return any(o and secrets.compare_digest(o, token) for o in offered)

    @app.middleware("http")
    async def _check(request: Request, call_next: Any) -> Any:
        length = request.headers.get("content-length")
        cap = MAX_UPLOAD_REQUEST_BYTES if request.url.path == "/api/search" else MAX_BODY_BYTES
        if length and length.isdigit() and int(length) > cap:
            return JSONResponse({"error": f"request body over {cap} bytes; send less"}, status_code=413)
        if not known(request):
            return JSONResponse({"error": "this server needs its access token: open the URL `retrieve serve` printed "
                                          "(it ends in ?token=...) or send `Authorization: Bearer TOKEN`"},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        if request.query_params.get("token") and request.url.path == "/":
            # move the token from the URL into a cookie, so it leaves the address bar and history
            response = RedirectResponse("/", status_code=303)
        else:
            response = await call_next(request)
        if request.cookies.get(COOKIE) != token:
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return response
