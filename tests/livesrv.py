"""A real Civica server (uvicorn on a free loopback port) for tests that talk HTTP."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import uvicorn

from civica.api.auth import create_key
from civica.api.services import Services
from civica.app import create_app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class LiveServer:
    url: str
    services: Services
    admin_key: str

    def client(self, key: str | None = None, **headers: str) -> httpx.Client:
        hdrs = {"Authorization": f"Bearer {key or self.admin_key}", **headers}
        return httpx.Client(base_url=self.url, headers=hdrs, timeout=30.0)

    def key(self, role: str) -> str:
        return create_key(self.services.store, role, f"test {role}")


@contextmanager
def serve(services: Services) -> Iterator[LiveServer]:
    """Run the app in a background thread until the block ends."""
    port = free_port()
    config = uvicorn.Config(
        create_app(services), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield LiveServer(
            f"http://127.0.0.1:{port}", services, create_key(services.store, "admin", "test admin")
        )
    finally:
        server.should_exit = True
        thread.join(timeout=10)
