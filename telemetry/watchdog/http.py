"""The watchdog's HTTP endpoints: ``/metrics`` for Prometheus and ``/healthz`` for probes.

``/healthz`` answers 200 while no alert is active and 503 with a JSON body
listing the active alerts otherwise, so a Kubernetes readiness probe takes the
pod out of service while its queue is stuck. It also answers 503 when the
watchdog's own poll loop has stopped polling, since then "no alert" means nothing.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

DEFAULT_ADDR = "127.0.0.1"
DEFAULT_PORT = 9465


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a hung client must not keep the watchdog from exiting


class HttpServer:
    """Binds at once (so its URL is known); ``serve(health)`` then answers from a background thread.

    `health()` returns (healthy, JSON body) for /healthz.
    """

    def __init__(self, registry: CollectorRegistry, *, addr: str = DEFAULT_ADDR, port: int = DEFAULT_PORT) -> None:
        self._health: Callable[[], tuple[bool, dict]] | None = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server protocol
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
                elif path == "/healthz":
                    healthy, body = server._health()
                    self._send(200 if healthy else 503, "application/json", json.dumps(body).encode())
                else:
                    self._send(404, "text/plain", b"shmq watchdog: /metrics or /healthz\n")

            def _send(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass  # probes every few seconds would flood the log

        self._server = _Server((addr, port), Handler)
        self.addr = addr
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="shmq-watchdog-http", daemon=True)

    def serve(self, health: Callable[[], tuple[bool, dict]]) -> None:
        self._health = health
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()
