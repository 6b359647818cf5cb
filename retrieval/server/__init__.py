"""Web demo and HTTP API: `create_app(retriever, policy)` (FastAPI), run by `retrieve serve`."""
from __future__ import annotations

from retrieval.server.app import create_app
from retrieval.server.images import public_result
from retrieval.server.run import background_server, load_app, serve

__all__ = ["create_app", "public_result", "load_app", "serve", "background_server"]
