"""An HTTP relay in front of SeaweedFS that refuses chosen requests with an S3 error, as a store would.

Every other request is forwarded unchanged (the Host header included, so SigV4 signatures still hold). A rule
gets the method and the path (``/bucket/key``, unquoted, without the query) and returns ``(status, code)``
to refuse it, or None to forward it. Used to make one key refused (``AccessDenied``, ``InvalidObjectState``)
while the bucket answers, or the whole bucket refused; and, with :func:`forward_all`, to count the requests a
reader sends (``methods``).
"""
from __future__ import annotations

import dataclasses
import http.client
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from ood_audit.io.fs import S3Config

Rule = Callable[[str, str], "tuple[int, str] | None"]


class _Relay(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str, rule: Rule) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream = urlsplit(upstream).netloc
        self.rule = rule
        self.refused: list[tuple[str, str]] = []
        self.methods: Counter[str] = Counter()  # every request, by method
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Relay

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        path = unquote(urlsplit(self.path).path)
        with self.server.lock:
            self.server.methods[self.command] += 1
        refusal = self.server.rule(self.command, path)
        if refusal is not None:
            with self.server.lock:
                self.server.refused.append((self.command, path))
            status, code = refusal
            xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                   f"<Message>refused by the test relay</Message><Resource>{path}</Resource></Error>").encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(xml)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(xml)
            return
        conn = http.client.HTTPConnection(self.server.upstream, timeout=30)
        try:
            conn.request(self.command, self.path, body=body, headers=dict(self.headers))
            resp = conn.getresponse()
            data = resp.read()
            self.send_response(resp.status)
            for key, value in resp.getheaders():
                if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(key, value)
            self.send_header("Content-Length", resp.getheader("Content-Length", "0") if self.command == "HEAD"
                             else str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        finally:
            conn.close()

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def relay(s3: S3Config, rule: Rule) -> Iterator[tuple[_Relay, S3Config]]:
    """A running relay in front of ``s3``'s endpoint, and the settings that go through it."""
    server = _Relay(s3.endpoint_url or "", rule)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, dataclasses.replace(s3, endpoint_url=f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        server.server_close()


def forward_all(method: str, path: str) -> None:
    """Refuse nothing."""
    return None


def deny_key(bucket: str, key: str, status: int = 403, code: str = "AccessDenied") -> Rule:
    """Refuse every GET of ``bucket/key`` (the object alone); forward everything else."""
    target = f"/{bucket}/{key}"
    return lambda method, path: (status, code) if method == "GET" and path == target else None


def deny_bucket(bucket: str, status: int = 403, code: str = "AccessDenied") -> Rule:
    """Refuse every request on ``bucket`` (its listing included), as a bucket policy or a revoked role does."""
    return lambda method, path: (status, code) if path == f"/{bucket}" or path.startswith(f"/{bucket}/") else None
