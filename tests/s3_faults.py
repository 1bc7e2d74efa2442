"""A fault-injecting HTTP proxy in front of the real moto S3 server, for throttling and 5xx tests.

Requests are forwarded to moto unchanged, except the next N matching ones, which get an S3 error
answer (status, code, XML body) as AWS sends it: botocore parses and retries it as it would in
production. Every request is recorded, so tests can count the attempts.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

__all__ = ["FaultProxy", "fault_proxy"]


@dataclass
class FaultProxy:
    """The proxy's endpoint, the faults still to inject and what it saw (method, path, status)."""

    endpoint_url: str
    faults: list[tuple[str, int, str]] = field(default_factory=list)  # (method, status, code)
    seen: list[tuple[str, str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def inject(self, method: str, status: int, code: str, *, times: int = 1) -> None:
        """Answer the next *times* requests of *method* with *status* and S3 error *code*."""
        with self.lock:
            self.faults.extend([(method, status, code)] * times)

    def _take(self, method: str) -> tuple[int, str] | None:
        with self.lock:
            for i, (fault_method, status, code) in enumerate(self.faults):
                if fault_method == method:
                    del self.faults[i]
                    return status, code
        return None


@contextmanager
def fault_proxy(upstream_url: str) -> Iterator[FaultProxy]:
    """Run the proxy on a free 127.0.0.1 port in front of *upstream_url*; stop it afterwards."""
    upstream = urlsplit(upstream_url)
    state: dict[str, FaultProxy] = {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
            return

        def _serve(self) -> None:
            proxy = state["proxy"]
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            fault = proxy._take(self.command)
            if fault is not None:
                status, code = fault
                payload = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                           f"<Message>injected {code}</Message></Error>").encode()
                # recorded before the answer is sent: a client that gives up on this answer must find it in
                # `seen` (appended after the write, the test could read `seen` first and miss the last try)
                with proxy.lock:
                    proxy.seen.append((self.command, self.path, status))
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
                return
            conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
            conn.request(self.command, self.path, body=body or None, headers=headers)
            answer = conn.getresponse()
            data = answer.read()
            with proxy.lock:
                proxy.seen.append((self.command, self.path, answer.status))
            self.send_response(answer.status)
            for key, value in answer.getheaders():
                if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            conn.close()

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _serve  # noqa: N815 - http.server's names

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    host, port = httpd.server_address[:2]
    state["proxy"] = FaultProxy(endpoint_url=f"http://{host!s}:{port}")
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield state["proxy"]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
