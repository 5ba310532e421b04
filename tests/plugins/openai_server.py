"""Fixture ``openai_server``: a real OpenAI-compatible HTTP server on 127.0.0.1 for the openai backend.

A stdlib ``ThreadingHTTPServer`` answers ``POST /v1/chat/completions`` and ``/v1/completions`` by running
the tiny model through medssr's transformers backend. A ``logit_bias`` of +100 is honoured the way
such a bias acts on a real server: only those tokens can be picked (sent to the backend as
``allowed_letters``). ``GET /v1/models`` lists the served model, as vLLM and KServe do. Tests can script
failures (``fail_next(2, 503, retry_after=2)``) and read every completion request it got, with when it came.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

SERVED_MODEL = "tiny-medssr"


@dataclass
class OpenAITestServer:
    httpd: ThreadingHTTPServer
    generator: object
    requests: list[dict] = field(default_factory=list)
    scripted_statuses: list[tuple[int, float | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def fail_next(self, count: int, status: int = 503, retry_after: float | None = None) -> None:
        """Answer the next ``count`` requests with ``status`` (and a ``Retry-After`` header) instead of completions."""
        with self.lock:
            self.scripted_statuses += [(status, retry_after)] * count

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.scripted_statuses.clear()


def _complete(server: OpenAITestServer, route: str, body: dict) -> tuple[int, dict]:
    from medssr.generation import SamplingParams

    if body.get("model") != SERVED_MODEL:
        return 400, {"error": {"message": f"model {body.get('model')!r} is not served", "type": "invalid_request_error"}}
    prompt_key = "messages" if route == "chat/completions" else "prompt"
    if prompt_key not in body:
        return 400, {"error": {"message": f"'{prompt_key}' is required", "type": "invalid_request_error"}}
    tokenizer = server.generator.tokenizer
    forced = [tokenizer.decode([int(t)]).strip() for t, bias in (body.get("logit_bias") or {}).items() if bias >= 100]
    try:
        sampling = SamplingParams(
            temperature=float(body.get("temperature", 1.0)),
            top_p=float(body.get("top_p", 1.0)),
            top_k=int(body.get("top_k", 0)),
            max_tokens=int(body.get("max_tokens", 16)),
            seed=body.get("seed"),
            allowed_letters=tuple(dict.fromkeys(forced)) or None,
        )
    except ValueError as exc:
        return 400, {"error": {"message": str(exc), "type": "invalid_request_error"}}
    n = int(body.get("n", 1))
    with server.lock:  # one generation at a time: the model is shared
        texts = server.generator.generate([body[prompt_key]], n=n, sampling=sampling)[0]
    if route == "chat/completions":
        choices = [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"} for i, t in enumerate(texts)]
    else:
        choices = [{"index": i, "text": t, "finish_reason": "stop"} for i, t in enumerate(texts)]
    return 200, {"object": "chat.completion" if prompt_key == "messages" else "text_completion", "model": SERVED_MODEL, "choices": choices}


def _handler(server_ref: dict):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

        def _reply(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path != "/v1/models":
                self._reply(404, {"error": {"message": f"no route {self.path}"}})
                return
            self._reply(200, {"object": "list", "data": [{"id": SERVED_MODEL, "object": "model", "owned_by": "medssr"}]})

        def do_POST(self):
            server: OpenAITestServer = server_ref["server"]
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            with server.lock:
                server.requests.append({"path": self.path, "body": body, "authorization": self.headers.get("Authorization"),
                                        "at": time.monotonic()})
                scripted = server.scripted_statuses.pop(0) if server.scripted_statuses else None
            if scripted is not None:
                status, retry_after = scripted
                headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else None
                self._reply(status, {"error": {"message": f"scripted failure {status}"}}, headers)
                return
            route = self.path.removeprefix("/v1/")
            if route not in ("chat/completions", "completions"):
                self._reply(404, {"error": {"message": f"no route {self.path}"}})
                return
            self._reply(*_complete(server, route, body))

    return Handler


@pytest.fixture(scope="session")
def _openai_server_session(tiny_model):
    from medssr.generation import GeneratorConfig, build_generator

    generator = build_generator(GeneratorConfig(model=str(tiny_model), batch_size=8, progress=False))
    server_ref: dict = {}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(server_ref))
    httpd.daemon_threads = True
    server = server_ref["server"] = OpenAITestServer(httpd=httpd, generator=generator)
    thread = threading.Thread(target=httpd.serve_forever, name="openai-test-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def openai_server(_openai_server_session) -> OpenAITestServer:
    """The running server with an empty request log and no scripted failures."""
    _openai_server_session.reset()
    return _openai_server_session
