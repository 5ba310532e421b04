"""Run the predictor in ``kserve.ModelServer``: KServe's v1/v2, health and ``/metrics`` routes, plus ours.

KServe builds its FastAPI app as the module-level ``kserve.model_server.app`` and adds its own routes,
middleware and exception handlers when the server starts; ours (OpenAI routes, request metrics, the
4xx/429 mapping of ``RequestError``) are added to that same app beforehand. KServe's REST server binds
0.0.0.0 unconditionally, so ``MedssrModelServer`` makes the interface a setting.
"""

from __future__ import annotations

import asyncio

from medssr.serving.config import ServeConfig
from medssr.serving.kserve_import import import_kserve


def build_model_server(config: ServeConfig, predictor):
    """A ``MedssrModelServer`` for ``predictor`` with the OpenAI routes and metrics on its app."""
    from fastapi import Request
    from fastapi.responses import JSONResponse

    import_kserve()
    import kserve.model_server as model_server
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
    from kserve.protocol.rest.server import RESTServer

    from medssr.serving.metrics import RequestMetricsMiddleware
    from medssr.serving.openai_routes import register_openai_routes
    from medssr.serving.protocol import BodyLimitMiddleware, RequestError

    class MedssrModelServer(model_server.ModelServer):
        """``kserve.ModelServer`` (REST only) listening on a chosen interface."""

        def __init__(self, host: str, **kwargs):
            super().__init__(**kwargs)
            self.host = host

        def start(self, models) -> None:
            # KServe's single-worker start path, with the interface set before uvicorn binds.
            self._register_and_check_atleast_one_model_is_ready(models)
            self._rest_server = RESTServer(
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

    async def request_error_handler(_: Request, error: RequestError) -> JSONResponse:
        headers = {"Retry-After": "1"} if error.status in (429, 503) else None
        return JSONResponse(status_code=error.status, content={"error": error.message}, headers=headers)

    app = model_server.app
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes)
    app.add_middleware(RequestMetricsMiddleware)  # added last, so outermost: it records the 413s too
    app.add_exception_handler(RequestError, request_error_handler)
    register_openai_routes(app, predictor)
    return MedssrModelServer(
        host=config.host,
        http_port=config.port,
        workers=1,
        enable_grpc=False,
        enable_latency_logging=False,
        grace_period=5,
    )


def run_serve(config: ServeConfig) -> None:
    """Load the model and serve it until SIGINT/SIGTERM (blocks)."""
    import_kserve()
    from medssr.serving.predictor import MedssrPredictor

    predictor = MedssrPredictor(config)
    predictor.load()
    build_model_server(config, predictor).start([predictor])

