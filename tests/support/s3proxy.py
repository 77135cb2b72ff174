"""A tiny HTTP proxy in front of a real S3 server, to make it misbehave on purpose.

Tests point AWS_ENDPOINT_URL at it. It forwards every request as is (the Host header too,
so request signatures still match) and can, per test: answer the next N requests with 503
SlowDown (throttling), hold the second half of big ranged GETs' bodies (a slow link), or
act as a store that ignores If-None-Match (as rclone's S3 server does): a create refused
with 412 is answered 200 instead. (The header itself cannot be dropped: it is part of the
request's signature.) It counts requests by kind, like the server does.
"""

from __future__ import annotations

import http.server
import threading
from collections import Counter
from urllib.parse import parse_qs, urlsplit

import httpx

_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
        "proxy-connection", "content-length"}


def request_kind(method: str, target: str) -> str:
    """PUT, GET (HEAD too), LIST or DELETE, as SeaweedFS's metrics count them."""
    parts = urlsplit(target)
    query = parse_qs(parts.query, keep_blank_values=True)
    path = parts.path.strip("/")
    if method == "POST" and "delete" in query:
        return "DELETE"
    if method in ("GET", "HEAD") and ("list-type" in query or "/" not in path):
        return "LIST"
    return {"HEAD": "GET"}.get(method, method)


class S3Proxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.throttle = 0  # answer this many next requests with 503 SlowDown
        self.ignore_if_none_match = False
        # while set: a ranged GET with a body over 2 MiB sends its first half, then holds
        # the rest (held is set) until release is set, as a slow link would
        self.hold_bodies = False
        self.held = threading.Event()
        self.release = threading.Event()
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy._lock:
                    proxy.counts[request_kind(self.command, self.path)] += 1
                    throttled = proxy.throttle > 0
                    if throttled:
                        proxy.throttle -= 1
                if throttled:
                    msg = (b'<?xml version="1.0"?><Error><Code>SlowDown</Code>'
                           b"<Message>Please reduce your request rate.</Message></Error>")
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _HOP]
                with httpx.Client(timeout=60) as client:
                    r = client.request(self.command, proxy.upstream + self.path,
                                       headers=headers, content=body)
                data, status = r.content, r.status_code
                if status == 412 and proxy.ignore_if_none_match:
                    data, status = b"", 200
                    r.headers["ETag"] = '"ignored-if-none-match"'
                self.send_response(status)
                for k, v in r.headers.items():
                    if k.lower() not in _HOP and k.lower() != "content-encoding":
                        self.send_header(k, v)
                if self.command == "HEAD":  # the object's length, not the empty body's
                    self.send_header("Content-Length", r.headers.get("content-length", "0"))
                    self.end_headers()
                    return
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if (proxy.hold_bodies and self.command == "GET" and "Range" in self.headers
                        and len(data) > 2 << 20):
                    half = len(data) // 2
                    self.wfile.write(data[:half])
                    self.wfile.flush()
                    proxy.held.set()
                    proxy.release.wait(30)
                    data = data[half:]
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3Proxy:
        self._thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
