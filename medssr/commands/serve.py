"""``medssr serve --local MODEL``: the KServe model server with the medssr predictor, on this machine."""

from __future__ import annotations

import dataclasses

# Options taken from ServeConfig's fields (each with its help text); `model` is the --local argument.
_NOT_OPTIONS = ("model",)


def _serve(args) -> int:
    from medssr.errors import user_input
    from medssr.serving.config import ServeConfig
    from medssr.serving.server import run_serve

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(ServeConfig) if f.name not in _NOT_OPTIONS}
    with user_input():
        config = ServeConfig(model=args.local, **values)
    print(f"serving {config.model} as '{config.name}' on http://{config.host}:{config.port} "
          f"(OpenAI API at /openai/v1, KServe v1/v2, /metrics)", flush=True)
    run_serve(config)
    return 0


def register(subparsers) -> None:
    from medssr.serving.config import ServeConfig

    parser = subparsers.add_parser(
        "serve",
        help="Serve a model with KServe's model server: OpenAI-compatible, v1 and v2 routes.",
        description="Start kserve.ModelServer with the medssr predictor (dynamic batching, answer letters).",
    )
    parser.add_argument(
        "--local", required=True, metavar="MODEL",
        help="Model folder, s3:// URI, hub id, or NAME@ALIAS / models:/NAME@ALIAS from the MLflow registry.",
    )
    defaults = ServeConfig(model="-")
    for f in dataclasses.fields(ServeConfig):
        if f.name in _NOT_OPTIONS:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            parser.add_argument(flag, dest=f.name, action="store_true", help=f.metadata["help"])
        else:
            parser.add_argument(flag, dest=f.name, type=type(default), default=default,
                                help=f"{f.metadata['help']} (default: {default})")
    parser.set_defaults(func=_serve)
