"""A small HTTP server on 127.0.0.1 that replays recorded catalogue answers, for tests.

Routes map (method, path) to a responder: a function of the recorded request that returns a
:class:`Reply`. Helpers serve the recorded files of ``../shared/data/catalogue`` with their
absolute URLs (``@odata.nextLink``, STAC ``next`` links) rewritten to this server, so the
clients follow real paging over real HTTP. Every request is recorded for assertions.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["Recorded", "Reply", "ReplayServer", "file_reply", "json_reply", "replay_server", "sequence"]


@dataclass(frozen=True, slots=True)
class Recorded:
    """One request the server received."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


@dataclass(frozen=True, slots=True)
class Reply:
    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)


Responder = Callable[[Recorded], Reply]


def json_reply(payload: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> Reply:
    return Reply(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})


def file_reply(path: Path, *, rewrite: Mapping[str, str] | None = None, status: int = 200) -> Reply:
    """Serve a recorded file, replacing each ``rewrite`` key (an absolute URL prefix) by its value."""
    text = path.read_text(encoding="utf-8")
    for old, new in (rewrite or {}).items():
        text = text.replace(old, new)
    return Reply(status, text.encode(), {"Content-Type": "application/json"})


def sequence(replies: Sequence[Reply]) -> Responder:
    """A responder giving ``replies`` one after the other; the last one repeats."""
    lock = threading.Lock()
    state = {"next": 0}

    def respond(_: Recorded) -> Reply:
        with lock:
            index = min(state["next"], len(replies) - 1)
            state["next"] += 1
        return replies[index]

    return respond


class ReplayServer:
    """A threaded HTTP server on an ephemeral 127.0.0.1 port."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Responder] = {}
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="catalogue-replay", daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def route(self, method: str, path: str, responder: Responder) -> None:
        self.routes[(method.upper(), path)] = responder

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _dispatch(self, recorded: Recorded) -> Reply:
        with self._lock:
            self.requests.append(recorded)
        responder = self.routes.get((recorded.method, recorded.path))
        if responder is None:
            return json_reply({"detail": f"no route for {recorded.method} {recorded.path}"}, status=404)
        return responder(recorded)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                recorded = Recorded(
                    method=self.command,
                    path=parts.path,
                    query=parse_qs(parts.query, keep_blank_values=True),
                    body=body,
                    headers={key: value for key, value in self.headers.items()},
                )
                reply = server._dispatch(recorded)
                try:
                    self.send_response(reply.status)
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client gave up (timeout tests)

            do_GET = do_POST = _serve

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
                pass

        return Handler


@contextmanager
def replay_server() -> Iterator[ReplayServer]:
    """Start a :class:`ReplayServer`; stop it when the block ends."""
    server = ReplayServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
