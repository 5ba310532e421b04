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
