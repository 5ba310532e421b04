"""`medssr status RUN_ID`: the run's training jobs, InferenceService and pods, and the kubectl commands
that show the same."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show a run's PyTorchJobs/TrainJobs, pods and InferenceService on the cluster",
        description="List the Kubernetes objects labelled medssr.io/run-id=RUN_ID with phases and ages, "
        "and print the equivalent kubectl commands.",
    )
    parser.add_argument("run_id", metavar="RUN_ID", help="the run id the pipeline labelled its objects with")
    parser.add_argument("--namespace", "-n", default="medssr", help="namespace of the run (default: medssr)")
    parser.add_argument(
        "--kubeconfig",
        default=None,
        help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config; in a pod, its service account)",
    )
    parser.add_argument("--context", default=None, help="kubeconfig context (default: the current one)")
    parser.set_defaults(func=run_status_command)


def _api_client(kubeconfig: str | None, context: str | None):
    from pathlib import Path

    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    from medssr.cluster import bounded_api_client

    if kubeconfig is not None and not Path(kubeconfig).is_file():
        raise FileNotFoundError(f"kubeconfig {kubeconfig} does not exist")
    configuration = client.Configuration()
    try:
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
    except (ConfigException, FileNotFoundError) as kubeconfig_error:
        if kubeconfig is not None or context is not None:
            raise ValueError(f"cannot load kubeconfig: {kubeconfig_error}") from None
        try:
            config.load_incluster_config(client_configuration=configuration)
        except ConfigException:
            raise ValueError(f"no cluster credentials: {kubeconfig_error} (pass --kubeconfig)") from None
    return bounded_api_client(configuration)


def run_status_command(args: argparse.Namespace) -> int:
    from kubernetes.client.rest import ApiException

    from medssr.cluster import format_status_table, kube_reachable, kubectl_commands, query_run_status

    api_client = _api_client(args.kubeconfig, args.context)
    try:
        with kube_reachable(api_client):
            status = query_run_status(api_client, args.run_id, args.namespace)
    except ApiException as error:
        raise ValueError(f"the API server refused the query: {error.status} {error.reason}") from None
    finally:
        api_client.close()

    if status.objects:
        print(format_status_table(status))
    else:
        print(f"No objects labelled medssr.io/run-id={args.run_id} in namespace {args.namespace}.")
    for kind in status.missing_kinds:
        print(f"(the cluster does not serve {kind}: its CRD is not installed)")
    print("\nThe same with kubectl:")
    for command in kubectl_commands(status):
        print(f"  {command}")
    return 0 if status.objects else 1
