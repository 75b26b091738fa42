"""A fake Slicer API for the client and CLI unit tests: a route table that keeps the requests it answers.

``Recorder`` is an ``httpx.MockTransport`` handler; ``serve`` puts the same table behind a real HTTP server
(uvicorn on a unix socket, in a thread), for code that sends without httpx (``SocketExecClient``, the CLI's
``vm exec``) or runs in another process.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn


class Recorder:
    def __init__(self, routes: dict[tuple[str, str], Any] | None = None) -> None:
        self.routes = routes or {}
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        key = (request.method, request.url.path)
        if key not in self.routes:
            return httpx.Response(404, json={"error": f"no route {request.url.path}", "code": "not_found"})
        answer = self.routes[key]
        if callable(answer):
            response: httpx.Response = answer(request)
            return response
        if isinstance(answer, httpx.Response):
            return answer
        return httpx.Response(200, json=answer)

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]

    async def asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """The table as an ASGI app: the whole request body is read, then answered (no full duplex)."""
        if scope["type"] != "http":
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        url = httpx.URL(path=scope["path"], query=scope["query_string"])
        request = httpx.Request(scope["method"], url, headers=scope["headers"], content=bytes(body))
        response = self(request)
        response.read()
        await send({"type": "http.response.start", "status": response.status_code, "headers": response.headers.raw})
        await send({"type": "http.response.body", "body": response.content})


@contextlib.contextmanager
def serve(recorder: Recorder, directory: Path) -> Iterator[str]:
    """``recorder`` behind uvicorn on ``directory/api.sock``; yields the socket path (a slicer URL)."""
    path = directory / "api.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(16)
    config = uvicorn.Config(recorder.asgi, interface="asgi3", log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.started, "the fake API did not start"
        yield str(path)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
