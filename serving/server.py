"""Run the predictor in ``kserve.ModelServer``: KServe's v1/v2, OpenAI, health and ``/metrics`` routes.

KServe builds its FastAPI app as the module-level ``kserve.model_server.app`` and adds its own routes,
middleware and exception handlers when the server starts (its OpenAI routes because the predictor is an
``OpenAIGenerativeModel``); ours (the body limit, request metrics, the model route ``models.retrieve``
reads) are added to that same app beforehand. KServe's REST server binds 0.0.0.0 unconditionally, so
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
    """A ``MedssrModelServer`` for ``predictor`` with the body limit, metrics and model route on its app."""
    import_kserve()
    import kserve.model_server as model_server
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.rest.openai.endpoints import OPENAI_ROUTE_PREFIX
    from kserve.protocol.rest.server import RESTServer

    from medssr.serving.metrics import RequestMetricsMiddleware
    from medssr.serving.openai_api import register_model_route
    from medssr.serving.protocol import BodyLimitMiddleware

    class MedssrRESTServer(RESTServer):
        def _add_exception_handlers(self, app) -> None:
            super()._add_exception_handlers(app)
            add_client_error_handlers(app)

    class ModelsReadyDataPlane(DataPlane):
        """KServe's server readiness (``/v2/health/ready``) answers true whatever its models are; this one is
        ready while every model is (a predictor whose engine died is not), which is what a probe needs."""

        async def ready(self) -> bool:
            return all([await model.healthy() for model in self.model_registry.get_models().values()])

    class MedssrModelServer(model_server.ModelServer):
        """``kserve.ModelServer`` (REST only) listening on a chosen interface, ready while its models are."""

        def __init__(self, host: str, **kwargs):
            super().__init__(**kwargs)
            self.host = host
            self.dataplane = ModelsReadyDataPlane(model_registry=self.registered_models)

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
    register_model_route(app, predictor, OPENAI_ROUTE_PREFIX)
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
    from vllm.exceptions import VLLMValidationError

    from medssr.serving.protocol import RequestError

    def reply(request, error: RequestError) -> JSONResponse:
        if error.status < 500:
            logger.warning("%s %s: %d %s", request.method, request.url.path, error.status, error.message)
        headers = {"Retry-After": "1"} if error.status in (429, 503) else None
        openai = request.url.path.startswith("/openai/")
        return JSONResponse(status_code=error.status, headers=headers,
                            content=error.openai_body() if openai else {"error": error.message})

    def unparsable(request, exc: RequestValidationError) -> JSONResponse:
        return reply(request, RequestError.invalid(exc.errors()))

    def http_error(request, exc: HTTPException) -> JSONResponse:
        message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
        return reply(request, RequestError(exc.status_code, message, code="not_found" if exc.status_code == 404 else None))

    def kserve_error(request, exc: Exception) -> JSONResponse:
        if isinstance(exc, ModelNotFound):  # the OpenAI routes look the request's model up, None when it names none
            missing = exc.reason == ModelNotFound(None).reason
            return reply(request, RequestError(400, "missing required field 'model'", param="model", code="missing_field")
                         if missing else RequestError(404, str(exc), param="model", code="model_not_found"))
        if isinstance(exc, ModelNotReady):
            return reply(request, RequestError(503, str(exc), code="model_not_ready"))
        return reply(request, RequestError(400, str(exc), code="invalid_value"))

    app.add_exception_handler(RequestError, reply)
    app.add_exception_handler(RequestValidationError, unparsable)
    # vLLM's request types raise this from their validators, outside pydantic's errors.
    app.add_exception_handler(VLLMValidationError, lambda request, exc: reply(request, RequestError.from_vllm(exc)))
    app.add_exception_handler(HTTPException, http_error)
    for kind in (InvalidInput, ModelNotFound, UnsupportedProtocol, ModelNotReady):
        app.add_exception_handler(kind, kserve_error)


def run_serve(config: ServeConfig) -> None:
    """Load the model and serve it until SIGINT/SIGTERM (blocks)."""
    import_kserve()
    from medssr.serving.predictor import MedssrPredictor

    predictor = MedssrPredictor(config)
    predictor.load()
    build_model_server(config, predictor).start([predictor])

