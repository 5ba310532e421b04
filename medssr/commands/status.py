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


def run_status_command(args: argparse.Namespace) -> int:
    from kubernetes.client.rest import ApiException

    from medssr.errors import UserError
    from medssr.kube.client import api_client as build_api_client
    from medssr.kube.client import api_message, reachable
    from medssr.kube.run_status import format_status_table, kubectl_commands, query_run_status

    api_client = build_api_client(args.kubeconfig, args.context)
    try:
        with reachable(api_client):
            status = query_run_status(api_client, args.run_id, args.namespace)
    except ApiException as error:
        raise UserError(f"the API server refused the query: {error.status} {api_message(error)}") from None
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
