"""``medssr serve --local MODEL``: the KServe model server with the medssr predictor, on this machine."""

from __future__ import annotations


def _serve(args) -> int:
    from medssr.configs import from_args
    from medssr.serving.config import ServeConfig
    from medssr.serving.server import run_serve

    config = from_args(ServeConfig, args)
    if not config.model:
        from medssr.errors import UserError

        raise UserError("serve: give the model to serve with --local MODEL (or model: in --config)")
    print(f"serving {config.model} as '{config.name}' on http://{config.host}:{config.port} "
          f"(OpenAI API at /openai/v1, KServe v1/v2, /metrics)", flush=True)
    run_serve(config)
    return 0


def register(subparsers) -> None:
    from medssr.configs import add_arguments
    from medssr.serving.config import ServeConfig

    parser = subparsers.add_parser(
        "serve",
        help="Serve a model with KServe's model server: OpenAI-compatible, v1 and v2 routes.",
        description="Start kserve.ModelServer with the medssr predictor (dynamic batching, answer letters). "
                    "`--local MODEL`: a model folder, s3:// URI, hub id, or NAME@ALIAS / models:/NAME@ALIAS from the MLflow registry.",
    )
    parser.add_argument("--config", help="YAML of ServeConfig settings; options override it.")
    add_arguments(parser, ServeConfig, aliases={"model": ("--local",)})
    parser.set_defaults(func=_serve)
