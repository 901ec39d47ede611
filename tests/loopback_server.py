"""A stand-in for the public hosts: an HTTP server on 127.0.0.1 that the test starts and stops, serving
files from a dict and counting every request; plus a socket guard that refuses any other address."""
from __future__ import annotations

import http.server
import socket
import threading
import time
from collections import Counter


class Loopback:
    """``with Loopback({"/a/b.json": b"..."}) as srv``: ``srv.url`` is the base, ``srv.requests`` counts
    requests per path (every method), ``srv.files`` may be changed while it runs."""

    def __init__(self, files: dict[str, bytes], delay_s: float = 0.0):
        self.files = dict(files)
        self.delay_s = delay_s  # before each answer: lets concurrent clients overlap
        self.requests: Counter = Counter()

    def __enter__(self) -> "Loopback":
        srv = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                srv.requests[self.path] += 1
                time.sleep(srv.delay_s)
                body = srv.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_HEAD(self):  # noqa: N802
                srv.requests[self.path] += 1
                self.send_response(200 if self.path in srv.files else 404)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    @property
    def total(self) -> int:
        return sum(self.requests.values())


def only_loopback(monkeypatch) -> None:
    """Any connection to an address other than 127.0.0.1 fails the test."""
    real_connect = socket.socket.connect

    def connect(self, address, *args, **kwargs):
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] != "127.0.0.1":
            raise AssertionError(f"network access attempted: {address!r}")
        return real_connect(self, address, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
