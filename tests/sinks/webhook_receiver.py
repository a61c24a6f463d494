"""A real HTTP receiver for the webhook sink's tests: the stdlib's threading server, on a free local port.

It takes batches as a careful receiver would: it recomputes the HMAC over ``<timestamp>.<body>`` with its own
secret (401 when it differs), refuses timestamps older than ``max_age_s`` (401), and takes a batch whose
``Idempotency-Key`` it already took only once. It can fail its first ``fail_first`` requests (``fail_status``)
or answer its first ``slow_first`` ones after ``delay_s``, after having taken the batch (an answer lost to the
client's timeout).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class WebhookReceiver:
    def __init__(self, secret: bytes, *, fail_first: int = 0, fail_status: int = 503, slow_first: int = 0,
                 delay_s: float = 0.0, max_age_s: float = 300.0) -> None:
        self.secret, self.fail_first, self.fail_status = secret, fail_first, fail_status
        self.slow_first, self.delay_s, self.max_age_s = slow_first, delay_s, max_age_s
        self.requests = 0
        self.refused: list[int] = []                 # statuses of the requests it refused
        self.keys_by_request: list[str] = []         # Idempotency-Key of every request, in order
        self.taken_batches: list[str] = []           # Idempotency-Keys taken, once each
        self.taken: Counter[str] = Counter()         # item key -> times taken
        self.uris: dict[str, list[str]] = {}         # run id -> URIs taken
        self.bodies: list[dict] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hooks/ood?token=not-for-logs"

    def start(self) -> "WebhookReceiver":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, headers: dict[str, str], body: bytes) -> tuple[int, float]:
        with self._lock:
            self.requests += 1
            n = self.requests
            self.keys_by_request.append(headers.get("Idempotency-Key", ""))
            if n <= self.fail_first:
                self.refused.append(self.fail_status)
                return self.fail_status, 0.0
            ts = headers.get("X-OOD-Audit-Timestamp", "")
            want = "sha256=" + hmac.new(self.secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
            fresh = ts.isdigit() and abs(time.time() - int(ts)) <= self.max_age_s
            if not fresh or not hmac.compare_digest(want, headers.get("X-OOD-Audit-Signature", "")):
                self.refused.append(401)
                return 401, 0.0
            doc, key = json.loads(body), headers.get("Idempotency-Key", "")
            if key not in self.taken_batches:
                self.taken_batches.append(key)
                self.bodies.append(doc)
                for item in doc["items"]:
                    self.taken[item["key"]] += 1
                    self.uris.setdefault(doc["run_id"], []).append(item["uri"])
            return 200, self.delay_s if n <= self.fail_first + self.slow_first else 0.0

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status, delay = receiver._answer(dict(self.headers.items()), body)
                time.sleep(delay)
                payload = b"bad signature" if status == 401 else b"ok" if status == 200 else b"try later"
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client gave up waiting: its retry carries the same batch

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        return Handler
