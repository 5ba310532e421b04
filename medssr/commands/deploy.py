"""``medssr deploy NAME[@ALIAS]``: serve a registered model on the cluster as a KServe InferenceService.

Every DeployConfig setting is an option (the pipeline's ``deployment`` mapping); ``--config`` reads them from
YAML, a pipeline preset included."""

from __future__ import annotations

import sys


def _deploy(args) -> int:
    from medssr.configs import from_args
    from medssr.kube import inferenceservice
    from medssr.deploy import DeployError, resolve_storage_uri, run_deploy
    from medssr.stages import STAGES

    stage = STAGES["deployment"]
    config = from_args(stage.config, args, stage.prefixes, section=stage.name)
    if args.dry_run:
        from medssr.kube.manifests import manifest_yaml

        print(manifest_yaml(inferenceservice.build(config, resolve_storage_uri(config))), end="")
        return 0
    try:
        result = run_deploy(config)
    except DeployError as exc:
        print(f"medssr deploy: {exc}", file=sys.stderr)
        return 1
    verb = "created" if result.created else "updated"
    state = f"Ready at {result.url}" if result.ready else "applied (not waiting for Ready)"
    print(f"InferenceService {result.namespace}/{result.name} {verb} from {result.storage_uri}: {state}")
    if result.ready and result.url:
        print(f"ask it: medssr ask --url {result.url} \"QUESTION\"")
    return 0


def register(subparsers) -> None:
    from medssr.configs import add_arguments
    from medssr.stages import STAGES

    parser = subparsers.add_parser(
        "deploy",
        help="Deploy a registered model as a KServe InferenceService (Hugging Face runtime, vLLM) and wait for Ready.",
    )
    parser.add_argument("--config", help="YAML of deployment settings, or a pipeline preset (its deployment section); options override it.")
    stage = STAGES["deployment"]
    add_arguments(parser, stage.config, stage.prefixes, positional={"model": "NAME[@ALIAS]"},
                  aliases={"namespace": ("-n",), "timeout_s": ("--timeout",)})
    parser.add_argument("--dry-run", action="store_true", help="Print the InferenceService YAML; apply nothing.")
    parser.set_defaults(func=_deploy)
