"""Running the app: `serve` for `retrieve serve`, `background_server` for tests (real uvicorn on a free port)."""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from retrieval.policy.apply import validate_policy


def load_app(index_dir: str | Path, model_dir: str | Path | None = None, policy: str = "strict",
             token: str | None = None) -> Any:
    """Open the index and model once (`Retriever.open`) and wrap them in the web app (`token`: see `access`)."""
    from retrieval.search import Retriever
    from retrieval.server.app import create_app

    policy = validate_policy(policy)
    retriever = Retriever.open(index_dir, model_dir)
    warm = getattr(retriever.text_encoder, "warm", None)
    if warm is not None:  # compile the fast text path before the first request, not during it
        warm()
    return create_app(retriever, policy, token=token)


def serve(app: Any, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve `app` with uvicorn until interrupted (one process: the index and model are loaded once)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)


@contextmanager
def background_server(app: Any, host: str = "127.0.0.1", timeout: float = 20.0) -> Iterator[str]:
    """Run `app` on a free port of `host` in a thread; yields its base URL and stops it on exit."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=0, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"uvicorn did not start on {host} within {timeout:.0f} s")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
