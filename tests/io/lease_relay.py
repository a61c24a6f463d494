"""A small HTTP relay in front of an S3 endpoint that drops one request header, as a gateway that does not
know conditional writes would. The header is signed by the client (SigV4), so the relay signs what it
forwards again with the same keys, as such a gateway holding its own credentials does; the answer goes back
byte for byte."""
from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from ood_audit.io.fs import S3Config

_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection"}
_SIGNING = {"authorization", "x-amz-date", "x-amz-content-sha256", "x-amz-security-token", "host"}


class HeaderStrippingRelay:
    """``with HeaderStrippingRelay(upstream, "If-None-Match") as url:`` relays ``url`` to ``upstream``."""

    def __init__(self, s3: S3Config, header: str) -> None:
        self.upstream, self.header = urlsplit(s3.endpoint_url), header.lower()
        self.credentials = Credentials(s3.access_key, s3.secret_key, s3.session_token)
        self.region = s3.region
        self.stripped = 0
        relay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {}
                for k, v in self.headers.items():
                    if k.lower() == relay.header:
                        relay.stripped += 1
                    elif k.lower() not in _HOP and k.lower() not in _SIGNING:
                        headers[k] = v
                url = f"{relay.upstream.scheme}://{relay.upstream.netloc}{self.path}"
                request = AWSRequest(method=self.command, url=url, data=body or b"", headers=headers)
                S3SigV4Auth(relay.credentials, "s3", relay.region).add_auth(request)
                conn = http.client.HTTPConnection(relay.upstream.hostname, relay.upstream.port, timeout=30)
                try:
                    conn.request(self.command, self.path, body=body, headers=dict(request.headers.items()))
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in _HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self._thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
