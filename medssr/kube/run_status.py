"""The status of one run behind ``medssr status``: its training jobs, InferenceService and pods, as kubectl would
show them, and the kubectl commands that show the same."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from medssr.kube import inferenceservice, pods, pytorchjob, trainjob
from medssr.kube.conditions import parse_time
from medssr.kube.labels import STAGE_LABEL, run_selector

# The custom kinds a run creates (modules with KIND, GROUP, VERSION, PLURAL, POD_OWNER_LABEL and state()).
RUN_CUSTOM_RESOURCES = (pytorchjob, trainjob, inferenceservice)


@dataclass(frozen=True)
class RunObject:
    """One row of ``medssr status``."""

    kind: str
    name: str
    stage: str
    phase: str
    detail: str
    created: dt.datetime | None


@dataclass(frozen=True)
class RunStatus:
    run_id: str
    namespace: str
    objects: list[RunObject]
    missing_kinds: list[str]  # kinds whose CRD the cluster does not serve


def _row(kind: str, item: Mapping[str, Any], state_reader) -> RunObject:
    metadata = item.get("metadata") or {}
    state = state_reader(item)
    return RunObject(
        kind=kind,
        name=metadata.get("name", ""),
        stage=(metadata.get("labels") or {}).get(STAGE_LABEL, ""),
        phase=state.phase,
        detail=state.detail,
        created=parse_time(metadata.get("creationTimestamp")),
    )


def query_run_status(api_client, run_id: str, namespace: str) -> RunStatus:
    """List the run's training jobs, InferenceService and pods in ``namespace`` (label ``medssr.io/run-id``),
    through ``api_client`` (a ``kubernetes.client.ApiClient``). Kinds whose CRD is not installed are
    reported in ``missing_kinds`` rather than failing the whole query. Pods that lack our run label (from a
    pod template a launcher did not label) are still found through the label their operator gives them."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    selector = run_selector(run_id)
    custom = client.CustomObjectsApi(api_client)
    objects: list[RunObject] = []
    missing: list[str] = []
    owner_selectors: list[str] = []
    for kind in RUN_CUSTOM_RESOURCES:
        try:
            listing = custom.list_namespaced_custom_object(kind.GROUP, kind.VERSION, namespace, kind.PLURAL, label_selector=selector)
        except ApiException as error:
            if error.status == 404:
                missing.append(kind.KIND)
                continue
            raise
        for item in sorted(listing.get("items", []), key=lambda i: i["metadata"].get("creationTimestamp") or ""):
            objects.append(_row(kind.KIND, item, kind.state))
            owner_selectors.append(f"{kind.POD_OWNER_LABEL}={item['metadata']['name']}")

    core = client.CoreV1Api(api_client)
    found: dict[str, Mapping[str, Any]] = {}
    for pod_selector in [selector, *owner_selectors]:
        listing = core.list_namespaced_pod(namespace, label_selector=pod_selector)
        for pod in api_client.sanitize_for_serialization(listing).get("items", []):
            found.setdefault(pod["metadata"]["name"], pod)
    for pod in sorted(found.values(), key=lambda p: (p["metadata"].get("creationTimestamp") or "", p["metadata"]["name"])):
        objects.append(_row("Pod", pod, pods.state))
    return RunStatus(run_id=run_id, namespace=namespace, objects=objects, missing_kinds=missing)


def human_age(created: dt.datetime | None, now: dt.datetime) -> str:
    """Age in kubectl's style: 45s, 3m20s, 17m, 5h10m, 3d."""
    if created is None:
        return "<unknown>"
    seconds = max(0, int((now - created).total_seconds()))
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if seconds < 120:
        return f"{seconds}s"
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if hours < 3:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if days < 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    return f"{days}d"


def format_status_table(status: RunStatus, now: dt.datetime | None = None) -> str:
    """The rows as an aligned table (KIND NAME STAGE PHASE AGE DETAIL)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    header = ("KIND", "NAME", "STAGE", "PHASE", "AGE", "DETAIL")
    rows = [
        (o.kind, o.name, o.stage or "-", o.phase, human_age(o.created, now), o.detail or "-") for o in status.objects
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    return "\n".join(
        "   ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths)) + "   " + row[-1]
        for row in [header, *rows]
    )


def kubectl_commands(status: RunStatus) -> list[str]:
    """The kubectl commands that show the same run (and its logs) without medssr."""
    namespace, selector = status.namespace, run_selector(status.run_id)
    # kubectl refuses the whole `get` when one resource type is unknown: list only the served ones.
    types = [kind.PLURAL for kind in RUN_CUSTOM_RESOURCES if kind.KIND not in status.missing_kinds]
    commands = [
        f"kubectl get {','.join([*types, 'pods'])} -n {namespace} -l {selector}",
        f"kubectl logs -n {namespace} -l {selector} --all-containers --prefix --tail=100",
    ]
    for obj in status.objects:
        if obj.kind == "Pod":
            commands.append(f"kubectl logs -n {namespace} {obj.name} --all-containers")
        else:
            commands.append(f"kubectl describe {obj.kind.lower()} {obj.name} -n {namespace}")
    return commands
