"""A real Kubernetes API server (kube-apiserver v1.20 + etcd) for the test suite.

The binaries come from `make kube-apiserver` (scripts/build-kube-apiserver.sh), cached outside the repository.
No controllers or kubelet run: tests create objects and play the operator by patching `.status`.

Fixtures:
- `kube_cluster` (session): starts etcd and kube-apiserver on free 127.0.0.1 ports, installs the operators' CRDs
  from the CRDs location (MEDSSR_CRDS_DIR, else pyproject.toml's [tool.medssr]) unchanged (and the objects beside them there, e.g. the `torch-distributed`
  ClusterTrainingRuntime), writes a kubeconfig for `kubectl --kubeconfig`, and stops both processes at the end.
- `kube_namespace` (function): a fresh namespace for one test.

What v1.20 cannot take from those CRDs it drops when it stores them (e.g. the CEL `x-kubernetes-validations`
rules, served from 1.25); the fixture measures that on each CRD it installs (`KubeCluster.ignored_schema_keys`)
and reports it once as a warning, so a test here checks structure, types and pruning, not those rules.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import uuid
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from medssr.errors import UserError
from medssr.locations import crds_dir

KUBE_DIR = Path(os.environ.get("MEDSSR_CACHE", Path.home() / ".cache" / "medssr")) / "kube"
KUBE_APISERVER = KUBE_DIR / "bin" / "kube-apiserver"
ETCD = KUBE_DIR / "bin" / "etcd"
BUILD_MARKER = KUBE_DIR / "READY"
# The upstream CRDs verbatim, with their releases and commits (its README); shared by every checkout of the project.
CRD_DIR = crds_dir(required=False) or Path(os.devnull)
# Why the test server drops a schema key it does not know (the keys measured on the upstream CRDs so far).
SCHEMA_KEYS_NEWER_THAN_SERVER = {
    "x-kubernetes-validations": "CEL validation rules are enforced from Kubernetes 1.25; v1.20 drops them, so "
    "immutability (self == oldSelf) and the TrainJob name/managedBy rules are not checked here",
}
BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build-kube-apiserver.sh"
KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"
ADMIN_USER = "medssr-test-admin"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
READY_TIMEOUT_S = 90.0


def load_yaml_documents(path: Path) -> list:
    """The documents of a YAML file; libyaml's loader where present (PyYAML's own takes 4 s on the CRDs)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return list(yaml.load_all(path.read_text(), Loader=loader))


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> the openAPIV3Schema of every CRD version in CRD_DIR."""
    schemas = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        for crd in load_yaml_documents(path):
            if crd and crd["kind"] == "CustomResourceDefinition":
                group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
                for version in crd["spec"]["versions"]:
                    schemas[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return schemas


def openapi_schema(obj: dict) -> dict:
    """The CRD schema an object is admitted under (by its apiVersion and kind)."""
    return crd_schemas()[(obj["apiVersion"], obj["kind"])]


def fields_outside_schema(value, schema: dict, path: str = "") -> list[str]:
    """Paths of `value` that a structural schema prunes: object keys it does not declare, where it neither
    preserves unknown fields nor gives additionalProperties. The object's own apiVersion, kind and metadata are
    the server's (ObjectMeta), not the schema's."""
    outside = []
    if isinstance(value, dict):
        properties, additional = schema.get("properties"), schema.get("additionalProperties")
        for key, item in value.items():
            where = f"{path}.{key}"
            if not path and key in ("apiVersion", "kind", "metadata"):
                continue
            if properties is not None and key in properties:
                outside += fields_outside_schema(item, properties[key], where)
            elif isinstance(additional, dict):
                outside += fields_outside_schema(item, additional, where)
            elif not schema.get("x-kubernetes-preserve-unknown-fields"):
                outside.append(where)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            outside += fields_outside_schema(item, schema.get("items") or {}, f"{path}[{index}]")
    return outside


def missing_or_changed(sent, stored, path: str = "") -> list[str]:
    """Where `stored` (an object read back) lacks or alters something of `sent` (what we created it from).
    Fields the server added (defaults, status, its own metadata) are not differences."""
    if isinstance(sent, dict):
        if not isinstance(stored, dict):
            return [f"{path}: sent an object, stored {stored!r}"]
        differences = []
        for key, value in sent.items():
            if key not in stored:
                differences.append(f"{path}.{key}: pruned")
            else:
                differences += missing_or_changed(value, stored[key], f"{path}.{key}")
        return differences
    if isinstance(sent, list):
        if not isinstance(stored, list) or len(stored) != len(sent):
            return [f"{path}: sent {len(sent)} items, stored {stored!r}"]
        return [d for index, item in enumerate(sent) for d in missing_or_changed(item, stored[index], f"{path}[{index}]")]
    return [] if sent == stored and type(sent) is type(stored) else [f"{path}: sent {sent!r}, stored {stored!r}"]


def dropped_keys(sent, stored) -> Counter:
    """The keys of `sent` that `stored` lacks, counted by key name, anywhere in two parallel JSON trees."""
    dropped: Counter = Counter()
    if isinstance(sent, dict) and isinstance(stored, dict):
        for key, value in sent.items():
            if key not in stored:
                dropped[key] += 1
            else:
                dropped += dropped_keys(value, stored[key])
    elif isinstance(sent, list) and isinstance(stored, list):
        for sent_item, stored_item in zip(sent, stored):
            dropped += dropped_keys(sent_item, stored_item)
    return dropped


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_pki(pki: Path) -> None:
    """A CA, a serving certificate for 127.0.0.1, and the service-account signing key pair."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)
    valid = (now - dt.timedelta(hours=1), now + dt.timedelta(days=2))

    def pem_key(key) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "medssr-test-ca")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    serving_key = ec.generate_private_key(ec.SECP256R1())
    serving_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(serving_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.DNSName("localhost"),
                    x509.DNSName("kubernetes.default.svc"),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    pki.mkdir(parents=True, exist_ok=True)
    (pki / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (pki / "ca.key").write_bytes(pem_key(ca_key))
    (pki / "apiserver.crt").write_bytes(serving_cert.public_bytes(serialization.Encoding.PEM))
    (pki / "apiserver.key").write_bytes(pem_key(serving_key))
    (pki / "sa.key").write_bytes(pem_key(sa_key))
    (pki / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class KubeCluster:
    """A running kube-apiserver. `api_client()` is the admin (system:masters) client."""

    server: str
    kubeconfig: Path
    ca_file: Path
    admin_token: str
    workdir: Path
    _processes: list[subprocess.Popen] = field(default_factory=list, repr=False)
    _apiserver_command: list[str] = field(default_factory=list, repr=False)
    _crds_applied: set[str] = field(default_factory=set, repr=False)
    # CRD name -> schema keys the server dropped on storing it, with at how many places (SCHEMA_KEYS_NEWER_THAN_SERVER).
    ignored_schema_keys: dict[str, Counter] = field(default_factory=dict)

    def api_client(self, token: str | None = None, impersonate: str | None = None, groups: list[str] | None = None):
        """A `kubernetes.client.ApiClient`: admin by default; another identity through a bearer token
        (e.g. from `service_account_token`) or by impersonating a user (plus at most one group)."""
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = self.server
        configuration.ssl_ca_cert = str(self.ca_file)
        configuration.api_key = {"authorization": f"Bearer {token or self.admin_token}"}
        api = client.ApiClient(configuration)
        if impersonate:
            api.set_default_header("Impersonate-User", impersonate)
        if groups:
            if len(groups) > 1:
                raise ValueError("the kubernetes client sends one Impersonate-Group header; pass one group")
            api.set_default_header("Impersonate-Group", groups[0])
        return api

    def apply_crds(self, paths: list[Path] | None = None) -> list[str]:
        """Install the CRDs in `paths` (default: every YAML of CRD_DIR) as they are, wait until they are Established,
        then create the other objects of those files (runtimes), whose kinds the CRDs define. Bodies travel as raw
        JSON both ways: the client's models would take seconds to (de)serialise a CRD of 0.7 MB."""
        from kubernetes import client

        api = self.api_client()
        documents = [body for path in sorted(paths or CRD_DIR.glob("*.yaml")) for body in load_yaml_documents(path) if body]
        crds = [body for body in documents if body["kind"] == "CustomResourceDefinition"]
        names = [body["metadata"]["name"] for body in crds]
        for body in crds:
            if body["metadata"]["name"] not in self._crds_applied:
                self._install_crd(api, body)
        deadline = time.monotonic() + 120  # a bound, not a wait: an apiserver starved by other tests on 2 cores took over 30 s
        extensions = client.ApiextensionsV1Api(api)
        for name in names:
            while True:
                crd = json.loads(extensions.read_custom_resource_definition(name, _preload_content=False).data)
                conditions = {c["type"]: c["status"] for c in (crd.get("status") or {}).get("conditions") or []}
                if conditions.get("Established") == "True":
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"CRD {name} not Established: {conditions}")
                time.sleep(0.1)
            self._crds_applied.add(name)
        self._wait_for_discovery(names)
        for body in documents:
            if body["kind"] != "CustomResourceDefinition":
                self.create_object(body, crds)
        return names

    def _install_crd(self, api, body: dict) -> None:
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        extensions = client.ApiextensionsV1Api(api)
        name = body["metadata"]["name"]
        try:
            stored = extensions.create_custom_resource_definition(body, _preload_content=False)
        except ApiException as error:
            if error.status != 409:
                raise RuntimeError(f"kube-apiserver refused CRD {name}: {error.status} {error.body}") from error
            current = json.loads(extensions.read_custom_resource_definition(name, _preload_content=False).data)
            body = {**body, "metadata": {**body["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]}}
            stored = extensions.replace_custom_resource_definition(name, body, _preload_content=False)
        self.ignored_schema_keys[name] = dropped_keys(body["spec"]["versions"], json.loads(stored.data)["spec"]["versions"])

    def create_object(self, body: dict, crds: list[dict]) -> None:
        """Create a custom object (cluster-scoped or in its namespace) whose CRD is among `crds`; an existing one stays."""
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        group, version = body["apiVersion"].split("/")
        crd = next(c for c in crds if c["spec"]["group"] == group and c["spec"]["names"]["kind"] == body["kind"])
        plural = crd["spec"]["names"]["plural"]
        custom = client.CustomObjectsApi(self.api_client())
        try:
            if crd["spec"]["scope"] == "Cluster":
                custom.create_cluster_custom_object(group, version, plural, body)
            else:
                custom.create_namespaced_custom_object(group, version, body["metadata"]["namespace"], plural, body)
        except ApiException as error:
            if error.status != 409:
                raise

    def server_limitations(self) -> str:
        """What the server dropped from the installed CRDs, and why; empty when it kept everything."""
        lines = []
        for crd, keys in sorted(self.ignored_schema_keys.items()):
            for key, count in sorted(keys.items()):
                why = SCHEMA_KEYS_NEWER_THAN_SERVER.get(key, "not known to this server version")
                lines.append(f"{crd}: {key} dropped at {count} places ({why})")
        return "\n".join(lines)

    def _wait_for_discovery(self, crd_names: list[str]) -> None:
        """Established CRDs take a moment to appear in discovery; kubectl needs them there."""
        from kubernetes import client

        api = self.api_client()
        groups = {name.split(".", 1)[1] for name in crd_names}
        deadline = time.monotonic() + 120
        while True:
            served = {g.name for g in client.ApisApi(api).get_api_versions().groups}
            if groups <= served:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"API groups not in discovery: {sorted(groups - served)}")
            time.sleep(0.1)

    def namespace(self, name: str, labels: dict[str, str] | None = None) -> str:
        """Create a namespace (if missing) and return its name."""
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        core = client.CoreV1Api(self.api_client())
        try:
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels)))
        except ApiException as error:
            if error.status != 409:
                raise
        return name

    def service_account_token(self, namespace: str, name: str, create: bool = True) -> str:
        """A bound token for a ServiceAccount (TokenRequest API), creating the account if asked."""
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        core = client.CoreV1Api(self.api_client())
        if create:
            try:
                core.create_namespaced_service_account(
                    namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))
                )
            except ApiException as error:
                if error.status != 409:
                    raise
        request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=["https://kubernetes.default.svc"], expiration_seconds=3600))
        return core.create_namespaced_service_account_token(name, namespace, request).status.token

    def kubectl(self, *args: str, check: bool = True, timeout: float = 60, input: str | None = None):
        """Run `kubectl --kubeconfig <ours> ARGS...` and return the CompletedProcess (text)."""
        return subprocess.run(
            [KUBECTL, "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
            input=input,
        )

    def restart_apiserver(self, while_down=None) -> None:
        """Stop the API server (etcd and what it stores stay), call ``while_down()`` if given, and start it again
        on the same port: a restarted control plane, as clients see it."""
        apiserver = self._processes.pop()
        apiserver.terminate()
        try:
            apiserver.wait(timeout=20)
        except subprocess.TimeoutExpired:
            apiserver.kill()
            apiserver.wait(timeout=5)
        if while_down is not None:
            while_down()
        log = self.workdir / "kube-apiserver.log"
        restarted = subprocess.Popen(self._apiserver_command, stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=self.workdir)
        self._processes.append(restarted)
        _wait_ready(self.server, self.ca_file, self.admin_token, {"kube-apiserver": (restarted, log)})

    def stop(self) -> None:
        """Stop the API server before etcd (it would otherwise keep retrying its storage)."""
        for process in reversed(self._processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)
        self._processes.clear()


def _wait_ready(server: str, ca_file: Path, token: str, processes: dict[str, tuple[subprocess.Popen, Path]]) -> None:
    context = ssl.create_default_context(cafile=str(ca_file))
    request = urllib.request.Request(f"{server}/readyz", headers={"Authorization": f"Bearer {token}"})
    deadline = time.monotonic() + READY_TIMEOUT_S
    last_error = ""
    while time.monotonic() < deadline:
        for name, (process, log) in processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{_log_tail(log)}")
        try:
            with urllib.request.urlopen(request, context=context, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, ssl.SSLError) as error:
            last_error = str(error)
        time.sleep(0.25)
    logs = "\n".join(f"--- {name}\n{_log_tail(log)}" for name, (_, log) in processes.items())
    raise TimeoutError(f"kube-apiserver not ready after {READY_TIMEOUT_S:.0f} s ({last_error}):\n{logs}")


def start_kube_cluster(workdir: Path) -> KubeCluster:
    """Start etcd + kube-apiserver under `workdir`; the caller must call `.stop()`."""
    pki = workdir / "pki"
    _write_pki(pki)
    admin_token = secrets.token_hex(24)
    token_file = workdir / "tokens.csv"
    token_file.write_text(f'{admin_token},{ADMIN_USER},{uuid.uuid4()},"system:masters"\n')
    token_file.chmod(0o600)

    etcd_client, etcd_peer, apiserver_port = _free_port(), _free_port(), _free_port()
    etcd_log, apiserver_log = workdir / "etcd.log", workdir / "kube-apiserver.log"
    etcd_cmd = [
        str(ETCD),
        "--name=medssr-test",
        f"--data-dir={workdir / 'etcd'}",
        f"--listen-client-urls=http://127.0.0.1:{etcd_client}",
        f"--advertise-client-urls=http://127.0.0.1:{etcd_client}",
        f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
        f"--initial-cluster=medssr-test=http://127.0.0.1:{etcd_peer}",
        "--log-level=warn",
        "--logger=zap",
    ]
    apiserver_cmd = [
        str(KUBE_APISERVER),
        f"--etcd-servers=http://127.0.0.1:{etcd_client}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={apiserver_port}",
        "--insecure-port=0",  # v1.20 otherwise opens an unauthenticated port 8080
        f"--cert-dir={workdir / 'certs'}",
        f"--tls-cert-file={pki / 'apiserver.crt'}",
        f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={pki / 'ca.crt'}",
        f"--token-auth-file={token_file}",
        "--authorization-mode=RBAC",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        "--api-audiences=https://kubernetes.default.svc",
        "--service-cluster-ip-range=10.96.0.0/16",
        "--allow-privileged=true",
        # ServiceAccount admission waits for token Secrets that only the (absent) controller-manager creates.
        "--disable-admission-plugins=ServiceAccount",
        "--enable-priority-and-fairness=false",
        "--profiling=false",
        "--v=1",
    ]
    cluster = KubeCluster(
        server=f"https://127.0.0.1:{apiserver_port}",
        kubeconfig=workdir / "kubeconfig",
        ca_file=pki / "ca.crt",
        admin_token=admin_token,
        workdir=workdir,
        _apiserver_command=apiserver_cmd,
    )
    try:
        etcd = subprocess.Popen(etcd_cmd, stdout=etcd_log.open("wb"), stderr=subprocess.STDOUT, cwd=workdir)
        cluster._processes.append(etcd)
        apiserver = subprocess.Popen(
            apiserver_cmd, stdout=apiserver_log.open("wb"), stderr=subprocess.STDOUT, cwd=workdir
        )
        cluster._processes.append(apiserver)
        _wait_ready(
            cluster.server,
            cluster.ca_file,
            admin_token,
            {"etcd": (etcd, etcd_log), "kube-apiserver": (apiserver, apiserver_log)},
        )
    except BaseException:
        cluster.stop()
        raise
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "medssr-test", "cluster": {"server": cluster.server, "certificate-authority": str(cluster.ca_file)}}],
        "users": [{"name": ADMIN_USER, "user": {"token": admin_token}}],
        "contexts": [{"name": "medssr-test", "context": {"cluster": "medssr-test", "user": ADMIN_USER, "namespace": "default"}}],
        "current-context": "medssr-test",
    }
    cluster.kubeconfig.write_text(yaml.safe_dump(kubeconfig, sort_keys=False))
    cluster.kubeconfig.chmod(0o600)
    return cluster


def _expected_build_id() -> str:
    match = re.search(r"^BUILD_ID=(\S+)$", BUILD_SCRIPT.read_text(), re.MULTILINE)
    return match.group(1) if match else ""


def _require_build() -> None:
    built = BUILD_MARKER.read_text().splitlines()[:1] if BUILD_MARKER.is_file() else []
    if built == [_expected_build_id()] and KUBE_APISERVER.is_file() and ETCD.is_file():
        return
    state = f"outdated ({built[0]})" if built else "not found"
    message = (
        f"kube-apiserver build {state} in {KUBE_DIR}: run `make kube-apiserver` "
        "(builds it once from Debian's kubernetes source package: 5-20 min on 2 cores)"
    )
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory) -> KubeCluster:
    """A running kube-apiserver + etcd with the operators' CRDs installed; stopped at the end of the session."""
    _require_build()
    if not any(CRD_DIR.glob("*.yaml")):
        try:
            problem = f"no CRD files in {crds_dir()}"
        except UserError as error:
            problem = str(error)
        pytest.fail(f"{problem}: the tests hold objects to the operators' own CRDs", pytrace=False)
    cluster = start_kube_cluster(tmp_path_factory.mktemp("kube"))
    try:
        cluster.apply_crds()
        if limitations := cluster.server_limitations():
            warnings.warn(f"the test kube-apiserver (v1.20) ignores parts of the CRDs:\n{limitations}", stacklevel=1)
        yield cluster
    finally:
        cluster.stop()


def _dns_label(text: str, limit: int) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or "t"


@pytest.fixture
def kube_namespace(kube_cluster, request) -> str:
    """A fresh namespace for this test (namespaces are never reused: without a namespace controller a deleted
    namespace stays Terminating)."""
    return kube_cluster.namespace(f"{_dns_label(request.node.name, 50)}-{secrets.token_hex(3)}")
