"""An HTTP proxy in front of a real server (MLflow), for the tests that lose or hold one request on the way.

A subclass decides per request through two hooks: :meth:`ForwardingProxy.before` (the request, before it
is forwarded: True when the hook has dealt with it) and :meth:`ForwardingProxy.after` (the upstream's
answer, before it is sent back: True when the hook has dealt with it, e.g. dropped the connection)."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ForwardingProxy:
    timeout_s = 60.0

    def __init__(self, upstream: str):
        self.upstream = upstream
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
                if proxy.before(self, body):
                    return
                request = urllib.request.Request(proxy.upstream + self.path, data=body, method=self.command,
                                                 headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
                try:
                    with urllib.request.urlopen(request, timeout=proxy.timeout_s) as response:
                        status, payload, kind = response.status, response.read(), response.headers.get("Content-Type", "")
                except urllib.error.HTTPError as error:
                    status, payload, kind = error.code, error.read(), error.headers.get("Content-Type", "")
                if proxy.after(self, status):
                    return
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def before(self, handler: BaseHTTPRequestHandler, body: bytes | None) -> bool:
        return False

    def after(self, handler: BaseHTTPRequestHandler, status: int) -> bool:
        return False

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
