"""``medssr deploy NAME[@ALIAS]``: serve a registered model on the cluster as a KServe InferenceService."""

from __future__ import annotations

import sys


def _deploy(args) -> int:
    from medssr.kube import inferenceservice
    from medssr.serving.deploy import DeployConfig, DeployError, resolve_storage_uri, run_deploy

    config = DeployConfig(
        model=args.model, namespace=args.namespace, name=args.name, storage_uri=args.storage_uri,
        tracking_uri=args.tracking_uri, artifacts_destination=args.artifacts_destination, run_id=args.run_id,
        service_account=args.service_account, runtime=args.runtime, backend=args.backend, gpus=args.gpus, cpu=args.cpu, memory=args.memory,
        max_model_len=args.max_model_len, kubeconfig=args.kubeconfig, context=args.context,
        wait=not args.no_wait, timeout_s=args.timeout,
    )
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
    parser = subparsers.add_parser(
        "deploy",
        help="Deploy a registered model as a KServe InferenceService (Hugging Face runtime, vLLM) and wait for Ready.",
    )
    parser.add_argument("model", metavar="NAME[@ALIAS]", help="Registered model (alias default: champion), or NAME/VERSION.")
    parser.add_argument("--namespace", "-n", default="medssr", help="Namespace (default: medssr).")
    parser.add_argument("--name", default="", help="InferenceService name (default: from the model name).")
    parser.add_argument("--storage-uri", default="", help="s3:// folder of the model (default: resolved through MLflow).")
    parser.add_argument("--tracking-uri", default="", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI).")
    parser.add_argument(
        "--artifacts-destination", default="",
        help="The MLflow server's --artifacts-destination, s3://... (default: MLFLOW_ARTIFACTS_DESTINATION).",
    )
    parser.add_argument("--run-id", default="manual", help="Pipeline run id for the medssr.io/run-id label.")
    parser.add_argument("--service-account", default="medssr-predictor", help="Service account holding the S3 Secret.")
    parser.add_argument("--runtime", default="", help="ServingRuntime name (default: KServe picks by model format).")
    parser.add_argument("--backend", choices=("vllm", "huggingface"), default="",
                        help="Runtime backend (default: vllm with GPUs, huggingface without).")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs per replica (default: 1).")
    parser.add_argument("--cpu", default="4", help="CPU request and limit (default: 4).")
    parser.add_argument("--memory", default="32Gi", help="Memory request and limit (default: 32Gi).")
    parser.add_argument("--max-model-len", type=int, default=4096, help="vLLM context length (default: 4096).")
    parser.add_argument("--kubeconfig", default="", help="Kubeconfig file (default: in-cluster, else ~/.kube/config).")
    parser.add_argument("--context", default="", help="Kubeconfig context (default: current).")
    parser.add_argument("--timeout", type=float, default=900.0, help="Seconds to wait for Ready (default: 900).")
    parser.add_argument("--no-wait", action="store_true", help="Apply and return without waiting for Ready.")
    parser.add_argument("--dry-run", action="store_true", help="Print the InferenceService YAML; apply nothing.")
    parser.set_defaults(func=_deploy)
