"""A real HTTP receiver on 127.0.0.1 for webhook tests: records every POST and answers
with a scripted status per path: the n-th request for one event (X-Event-Id) gets the
n-th status of the path's list (the last one from then on)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    def __init__(self, script: dict[str, list[int]]) -> None:
        self.script = {k: list(v) for k, v in script.items()}
        self.seen: dict[tuple[str, str], int] = {}
        self.hits: list[Hit] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with outer.lock:
                    outer.hits.append(Hit(self.path, {k.lower(): v for k, v in
                                                      self.headers.items()}, body))
                    plan = outer.script.get(self.path, [200])
                    key = (self.path, self.headers.get("X-Event-Id", ""))
                    n = outer.seen[key] = outer.seen.get(key, 0) + 1
                    status = plan[min(n, len(plan)) - 1]
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> Receiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def at(self, path: str) -> list[Hit]:
        with self.lock:
            return [h for h in self.hits if h.path == path]
