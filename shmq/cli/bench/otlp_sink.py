"""``python -m shmq.cli.bench.otlp_sink``: an OTLP/HTTP endpoint that answers every trace export and
keeps nothing, for the tracing sidecar of ``--compare sidecar=traces`` (sidecar.py). It stands in for a
collector on another host, so it runs at nice 19 and takes only CPU the row leaves idle. Prints its port.
"""

from __future__ import annotations

import http.server
import os


class _Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")  # an empty ExportTraceServiceResponse: all accepted
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def main() -> None:
    os.nice(19)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    print(server.server_port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
