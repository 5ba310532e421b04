"""Run the predictor in ``kserve.ModelServer``: KServe's v1/v2, health and ``/metrics`` routes, plus ours.

KServe builds its FastAPI app as the module-level ``kserve.model_server.app`` and adds its own routes,
middleware and exception handlers when the server starts; ours (OpenAI routes, request metrics) are
added to that same app beforehand. KServe's REST server binds 0.0.0.0 unconditionally, so
``MedssrModelServer`` makes the interface a setting. Its exception handlers log a client's mistake
(unknown model, bad input) at ERROR with a traceback and answer unknown routes and unparsable bodies in
FastAPI's ``{"detail": ...}``; ours, installed after KServe's, answer every client error in the
protocol's own shape (OpenAI's ``{"error": {...}}`` under ``/openai``, KServe's ``{"error": "..."}``
elsewhere) and log it as one line.
"""

from __future__ import annotations

import asyncio

from medssr.serving.config import ServeConfig
from medssr.serving.kserve_import import import_kserve


def build_model_server(config: ServeConfig, predictor):
    """A ``MedssrModelServer`` for ``predictor`` with the OpenAI routes and metrics on its app."""
    import_kserve()
    import kserve.model_server as model_server
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
    from kserve.protocol.rest.server import RESTServer

    from medssr.serving.metrics import RequestMetricsMiddleware
    from medssr.serving.openai_routes import register_openai_routes
    from medssr.serving.protocol import BodyLimitMiddleware

    class MedssrRESTServer(RESTServer):
        def _add_exception_handlers(self, app) -> None:
            super()._add_exception_handlers(app)
            add_client_error_handlers(app)

    class MedssrModelServer(model_server.ModelServer):
        """``kserve.ModelServer`` (REST only) listening on a chosen interface."""

        def __init__(self, host: str, **kwargs):
            super().__init__(**kwargs)
            self.host = host

        def start(self, models) -> None:
            # KServe's single-worker start path, with the interface set before uvicorn binds.
            self._register_and_check_atleast_one_model_is_ready(models)
            self._rest_server = MedssrRESTServer(
                FASTAPI_APP_IMPORT_STRING,
                self.dataplane,
                self.model_repository_extension,
                self.http_port,
                access_log_format=self.access_log_format,
                workers=1,
                grace_period=self.grace_period,
                event_loop=self.event_loop,
                timeout_keep_alive=self.timeout_keep_alive,
            )
            self._rest_server.config.host = self.host
            self.servers.append(self._rest_server.start())
            self.setup_event_loop()
            self.register_signal_handler()
            asyncio.run(self._serve())

    app = model_server.app
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes)
    app.add_middleware(RequestMetricsMiddleware)  # added last, so outermost: it records the 413s too
    register_openai_routes(app, predictor)
    return MedssrModelServer(
        host=config.host,
        http_port=config.port,
        workers=1,
        enable_grpc=False,
        enable_latency_logging=False,
        grace_period=5,
    )


def add_client_error_handlers(app) -> None:
    """Client errors answered in the shape of the route's protocol and logged as one line (see the module
    docstring); server errors keep KServe's handlers and their tracebacks."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady, UnsupportedProtocol
    from kserve.logging import logger
    from starlette.exceptions import HTTPException

    from medssr.serving.protocol import RequestError

    def reply(request, error: RequestError) -> JSONResponse:
        if error.status < 500:
            logger.warning("%s %s: %d %s", request.method, request.url.path, error.status, error.message)
        headers = {"Retry-After": "1"} if error.status in (429, 503) else None
        openai = request.url.path.startswith("/openai/")
        return JSONResponse(status_code=error.status, headers=headers,
                            content=error.openai_body() if openai else {"error": error.message})

    def unparsable(request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or None
        message = f"'{where}': {first.get('msg')}" if where else f"request body: {first.get('msg', exc)}"
        return reply(request, RequestError(400, message, param=where, code="invalid_value"))

    def http_error(request, exc: HTTPException) -> JSONResponse:
        message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
        return reply(request, RequestError(exc.status_code, message, code="not_found" if exc.status_code == 404 else None))

    statuses = {InvalidInput: 400, ModelNotFound: 404, UnsupportedProtocol: 400, ModelNotReady: 503}
    app.add_exception_handler(RequestError, reply)
    app.add_exception_handler(RequestValidationError, unparsable)
    app.add_exception_handler(HTTPException, http_error)
    for kind, status in statuses.items():
        app.add_exception_handler(kind, lambda request, exc, status=status: reply(
            request, RequestError(status, str(exc), code="model_not_found" if status == 404 else None)))


def run_serve(config: ServeConfig) -> None:
    """Load the model and serve it until SIGINT/SIGTERM (blocks)."""
    import_kserve()
    from medssr.serving.predictor import MedssrPredictor

    predictor = MedssrPredictor(config)
    predictor.load()
    build_model_server(config, predictor).start([predictor])

