"""The test suite's Kubernetes API server itself: identities, RBAC, CRD schemas and kubectl work as on a cluster."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.k8s


def test_rbac_applies_to_service_account_tokens_and_impersonation(kube_cluster, kube_namespace):
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    token = kube_cluster.service_account_token(kube_namespace, "pipeline")
    as_pipeline = client.CoreV1Api(kube_cluster.api_client(token=token))
    with pytest.raises(ApiException) as denied:
        as_pipeline.list_namespaced_secret(kube_namespace)
    assert denied.value.status == 403 and f"system:serviceaccount:{kube_namespace}:pipeline" in denied.value.body

    rbac = client.RbacAuthorizationV1Api(kube_cluster.api_client())
    rbac.create_namespaced_role(
        kube_namespace,
        {"metadata": {"name": "read-pods"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]},
    )
    rbac.create_namespaced_role_binding(
        kube_namespace,
        {
            "metadata": {"name": "pipeline-reads-pods"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-pods"},
            "subjects": [{"kind": "ServiceAccount", "name": "pipeline", "namespace": kube_namespace}],
        },
    )
    assert as_pipeline.list_namespaced_pod(kube_namespace).items == []
    impersonated = client.CoreV1Api(kube_cluster.api_client(impersonate=f"system:serviceaccount:{kube_namespace}:pipeline"))
    assert impersonated.list_namespaced_pod(kube_namespace).items == []
    with pytest.raises(ApiException) as denied:
        impersonated.list_namespaced_pod("default")
    assert denied.value.status == 403

    review = client.AuthorizationV1Api(kube_cluster.api_client()).create_subject_access_review(
        {
            "spec": {
                "user": f"system:serviceaccount:{kube_namespace}:pipeline",
                "resourceAttributes": {"namespace": kube_namespace, "verb": "delete", "resource": "pods"},
            }
        }
    )
    assert review.status.allowed is False


def test_crd_schemas_keep_zero_values_and_reject_wrong_types(kube_cluster, kube_namespace):
    """Zero values ("", 0, false) are valid (the build patches a Go >= 1.19 validation bug); wrong types are 422."""
    job = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": "zeros", "namespace": kube_namespace},
        "spec": {
            "nprocPerNode": "",
            "pytorchReplicaSpecs": {"Master": {"replicas": 0, "template": {"spec": {"containers": [{"name": "pytorch", "image": ""}]}}}},
            "runPolicy": {"suspend": False, "backoffLimit": 0},
        },
    }
    applied = kube_cluster.kubectl("apply", "-o", "json", "-f", "-", input=json.dumps(job))
    stored = json.loads(applied.stdout)["spec"]
    assert stored["runPolicy"] == {"suspend": False, "backoffLimit": 0}
    assert stored["pytorchReplicaSpecs"]["Master"]["replicas"] == 0

    job["metadata"]["name"] = "wrong-types"
    job["spec"]["runPolicy"]["backoffLimit"] = "three"
    rejected = kube_cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(job), check=False)
    assert rejected.returncode != 0 and "spec.runPolicy.backoffLimit" in rejected.stderr

    isvc = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "medssr", "namespace": kube_namespace},
        "spec": {"predictor": {"minReplicas": 0, "model": {"modelFormat": {"name": "huggingface"}, "storageUri": "s3://models/x"}}},
    }
    dry_run = kube_cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(isvc))
    assert "created (server dry run)" in dry_run.stdout


def _schema_nodes_with_cel_rules(crd_name: str) -> int:
    from tests.plugins.kube import CRD_DIR, load_yaml_documents

    def count(node) -> int:
        if isinstance(node, dict):
            return ("x-kubernetes-validations" in node) + sum(count(value) for value in node.values())
        return sum(count(item) for item in node) if isinstance(node, list) else 0

    crds = [doc for path in CRD_DIR.glob("*.yaml") for doc in load_yaml_documents(path) if doc and doc["metadata"]["name"] == crd_name]
    return count(crds[0]["spec"]["versions"])


def test_the_server_drops_exactly_the_cel_rules_of_the_real_crds(kube_cluster, kube_namespace):
    """v1.20 stores every CRD of ../shared/crds but the CEL rules (Kubernetes 1.25+), all of them: nothing else of
    the schemas (types, enums, patterns, list-map keys, defaults) is lost, so pruning and types are checked as on a
    current cluster; a rule like TrainJob's RFC 1035 name is not (the launcher tests check our names themselves)."""
    assert set(kube_cluster.ignored_schema_keys) == {
        "pytorchjobs.kubeflow.org", "trainjobs.trainer.kubeflow.org", "clustertrainingruntimes.trainer.kubeflow.org",
        "inferenceservices.serving.kserve.io", "clusterservingruntimes.serving.kserve.io",
    }
    for crd, dropped in kube_cluster.ignored_schema_keys.items():
        with_rules = _schema_nodes_with_cel_rules(crd)
        assert dict(dropped) == ({"x-kubernetes-validations": with_rules} if with_rules else {}), crd
    assert "trainjobs.trainer.kubeflow.org: x-kubernetes-validations dropped at 17 places" in kube_cluster.server_limitations()

    named_against_the_rule = {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": "7-starts-with-a-digit", "namespace": kube_namespace},
        "spec": {"runtimeRef": {"name": "torch-distributed"}},
    }
    admitted = kube_cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(named_against_the_rule))
    assert "created (server dry run)" in admitted.stdout
