"""RBAC of manifests/ on the real API server: the pipeline service account may run medssr's workloads in its
namespace and nothing else (no Secrets, no other namespace, nothing cluster-wide). Checked three ways:
SubjectAccessReview, `kubectl auth can-i --as=...`, and real requests with the account's own token."""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path

import pytest
import yaml

from medssr.kube.labels import standard_labels

pytestmark = [pytest.mark.k8s, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
ACCOUNT = "medssr-pipeline"

# (verb, group, resource, subresource) the pipeline steps need in their own namespace.
ALLOWED = [
    *[(verb, "kubeflow.org", "pytorchjobs", "") for verb in ("create", "get", "list", "watch", "delete")],
    *[(verb, "trainer.kubeflow.org", "trainjobs", "") for verb in ("create", "get", "list", "watch", "delete")],
    *[(verb, "serving.kserve.io", "inferenceservices", "") for verb in ("create", "get", "list", "watch", "delete", "patch")],
    ("get", "", "pods", ""),
    ("list", "", "pods", ""),
    ("watch", "", "pods", ""),
    ("get", "", "pods", "log"),
]
# ... and what they must not do, even in their own namespace.
DENIED_IN_NAMESPACE = [
    ("get", "", "secrets", ""),
    ("list", "", "secrets", ""),
    ("create", "", "pods", ""),
    ("create", "", "pods", "exec"),
    ("delete", "", "pods", ""),
    ("update", "kubeflow.org", "pytorchjobs", "status"),
    ("patch", "kubeflow.org", "pytorchjobs", ""),
    ("create", "rbac.authorization.k8s.io", "roles", ""),
    ("create", "rbac.authorization.k8s.io", "rolebindings", ""),
    ("update", "", "configmaps", ""),
    ("create", "", "serviceaccounts", "token"),
]
# Cluster-scoped objects (no namespace).
DENIED_CLUSTER_WIDE = [
    ("create", "", "namespaces", ""),
    ("list", "", "nodes", ""),
    ("create", "rbac.authorization.k8s.io", "clusterroles", ""),
    ("create", "rbac.authorization.k8s.io", "clusterrolebindings", ""),
    ("create", "apiextensions.k8s.io", "customresourcedefinitions", ""),
    ("create", "trainer.kubeflow.org", "clustertrainingruntimes", ""),
    ("list", "", "secrets", ""),  # across all namespaces
]


@pytest.fixture(scope="module")
def installed(kube_cluster, tmp_path_factory) -> tuple[str, str]:
    """The cpu-dev overlay really applied (not a dry run) into a namespace of its own, and a second namespace
    holding a Secret: returns both names."""
    namespace = f"medssr-rbac-{secrets.token_hex(3)}"
    root = tmp_path_factory.mktemp("rbac")
    shutil.copytree(ROOT / "manifests", root / "manifests", ignore=shutil.ignore_patterns("s3.env"))
    shutil.copy(root / "manifests/base/s3.env.example", root / "manifests/base/s3.env")
    (root / "install").mkdir()
    (root / "install" / "kustomization.yaml").write_text(
        yaml.safe_dump({"resources": ["../manifests/overlays/cpu-dev"], "namespace": namespace})
    )
    kube_cluster.kubectl("apply", "-k", str(root / "install"))
    # Another namespace with a Secret in it: the one the account must not read.
    other = kube_cluster.namespace(f"medssr-other-{secrets.token_hex(3)}")
    kube_cluster.kubectl("create", "secret", "generic", "db-password", "-n", other, "--from-literal=password=x")
    return namespace, other


def _review(kube_cluster, namespace: str | None, verb: str, group: str, resource: str, subresource: str,
            account_namespace: str) -> bool:
    from kubernetes import client

    api = client.AuthorizationV1Api(kube_cluster.api_client())
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=f"system:serviceaccount:{account_namespace}:{ACCOUNT}",
            groups=["system:serviceaccounts", f"system:serviceaccounts:{account_namespace}", "system:authenticated"],
            resource_attributes=client.V1ResourceAttributes(
                namespace=namespace, verb=verb, group=group, resource=resource, subresource=subresource or None
            ),
        )
    )
    return bool(api.create_subject_access_review(review).status.allowed)


def test_role_is_namespaced_and_bound_to_the_account(kube_cluster, installed):
    namespace, _ = installed
    role = yaml.safe_load(kube_cluster.kubectl("get", "role", ACCOUNT, "-n", namespace, "-o", "yaml").stdout)
    binding = yaml.safe_load(kube_cluster.kubectl("get", "rolebinding", ACCOUNT, "-n", namespace, "-o", "yaml").stdout)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": ACCOUNT}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": namespace}]
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        assert "secrets" not in rule["resources"]
    cluster_roles = kube_cluster.kubectl("get", "clusterrolebindings", "-o", "yaml").stdout
    assert f"name: {ACCOUNT}" not in cluster_roles


def test_subject_access_review_in_namespace(kube_cluster, installed):
    namespace, _ = installed
    for verb, group, resource, sub in ALLOWED:
        assert _review(kube_cluster, namespace, verb, group, resource, sub, namespace), (verb, resource, sub)
    for verb, group, resource, sub in DENIED_IN_NAMESPACE:
        assert not _review(kube_cluster, namespace, verb, group, resource, sub, namespace), (verb, resource, sub)


def test_subject_access_review_elsewhere(kube_cluster, installed):
    namespace, other = installed
    for verb, group, resource, sub in [("get", "", "secrets", ""), ("create", "kubeflow.org", "pytorchjobs", ""),
                                       ("list", "", "pods", "")]:
        assert not _review(kube_cluster, other, verb, group, resource, sub, namespace), (verb, resource, other)
    for verb, group, resource, sub in DENIED_CLUSTER_WIDE:
        assert not _review(kube_cluster, None, verb, group, resource, sub, namespace), (verb, resource)


def test_kubectl_auth_can_i(kube_cluster, installed):
    namespace, other = installed
    who = f"--as=system:serviceaccount:{namespace}:{ACCOUNT}"

    def can_i(*args: str) -> str:
        result = kube_cluster.kubectl("auth", "can-i", who, *args, check=False)
        return result.stdout.strip()

    assert can_i("create", "pytorchjobs.kubeflow.org", "-n", namespace) == "yes"
    assert can_i("get", "pods", "--subresource=log", "-n", namespace) == "yes"
    assert can_i("get", "secrets", "-n", other) == "no"
    assert can_i("get", "secrets", "-n", namespace) == "no"
    assert can_i("create", "clusterroles") == "no"
    assert can_i("create", "namespaces") == "no"


def _pytorchjob(name: str, run_id: str) -> dict:
    labels = standard_labels(run_id, "train-self", "trainer")
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "pytorchReplicaSpecs": {
                "Master": {
                    "replicas": 1,
                    "restartPolicy": "OnFailure",
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {"containers": [{"name": "pytorch", "image": "medssr:test", "command": ["medssr", "train"]}]},
                    },
                }
            }
        },
    }


def test_real_requests_with_the_account_token(kube_cluster, installed):
    """Not a review: requests made as the account itself, authenticated by its own token."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    namespace, other = installed
    token = kube_cluster.service_account_token(namespace, ACCOUNT, create=False)
    api = kube_cluster.api_client(token=token)
    custom = client.CustomObjectsApi(api)
    core = client.CoreV1Api(api)

    created = custom.create_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs", _pytorchjob("rbac-job", "rbac"))
    assert created["metadata"]["labels"]["medssr.io/run-id"] == "rbac"
    listed = custom.list_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs", label_selector="medssr.io/run-id=rbac")
    assert [i["metadata"]["name"] for i in listed["items"]] == ["rbac-job"]
    custom.delete_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs", "rbac-job")

    forbidden = [
        lambda: core.read_namespaced_secret("db-password", other),
        lambda: core.list_namespaced_secret(namespace),
        lambda: custom.create_namespaced_custom_object("kubeflow.org", "v1", other, "pytorchjobs", _pytorchjob("x", "rbac")),
        lambda: core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=f"x-{secrets.token_hex(3)}"))),
        lambda: client.RbacAuthorizationV1Api(api).create_cluster_role(
            client.V1ClusterRole(metadata=client.V1ObjectMeta(name=f"x-{secrets.token_hex(3)}"), rules=[])
        ),
    ]
    for attempt in forbidden:
        with pytest.raises(ApiException) as error:
            attempt()
        assert error.value.status == 403
