"""Shared pytest fixtures: the read-only shared data folder and a local HTTP server."""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# Compiling backbones costs seconds per model; the tests build hundreds of tiny ones, so they run
# eager. tests/test_fast.py switches it on and checks that compiled and eager models agree.
os.environ["KSHOT_COMPILE"] = "0"
from kshot.runtime import settings

settings.compile = False

SHARED_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only shared data: ``$KSHOT_DATA_DIR`` or ``../shared/data``; skip if absent."""
    candidates = [Path(os.environ["KSHOT_DATA_DIR"])] if os.environ.get("KSHOT_DATA_DIR") else []
    candidates.append(SHARED_DATA_DIR)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    pytest.skip(f"shared data folder not found (looked in {', '.join(map(str, candidates))})")


@dataclass
class Route:
    """What the local server answers for one path: ``body``, announcing ``content_length`` bytes."""

    body: bytes
    content_length: int | None = None


@dataclass
class LocalHTTPServer:
    """A threaded HTTP server on 127.0.0.1 answering the routes registered with :meth:`serve`."""

    base_url: str
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def serve(self, path: str, body: bytes, content_length: int | None = None) -> str:
        """Serve ``body`` at ``path`` (announcing ``content_length`` if given); return its URL."""
        self.routes["/" + path.lstrip("/")] = Route(body, content_length)
        return self.url(path)

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"


@pytest.fixture
def http_server() -> Iterator[LocalHTTPServer]:
    """A local HTTP server for download tests; a lying ``content_length`` simulates truncation."""
    server_state: LocalHTTPServer

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            server_state.requests.append(self.path)
            route = server_state.routes.get(self.path)
            if route is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            length = len(route.body) if route.content_length is None else route.content_length
            self.send_header("Content-Length", str(length))
            self.end_headers()
            self.wfile.write(route.body)
            self.close_connection = True

        def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server_state = LocalHTTPServer(f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield server_state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def one_thread():
    """One CPU thread: tiny models gain nothing from more, and the machine may be shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
