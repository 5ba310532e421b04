"""The one Kubernetes API client builder: credentials from a kubeconfig or the pod's service account, and the
retry and timeout policy of every call (``KubeApiSettings``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from medssr.errors import UserError


@dataclass(frozen=True)
class KubeApiSettings:
    """How long a Kubernetes API call waits: urllib3's Retry in the client is the one retry layer (connection
    failures of any call, failed reads of idempotent ones: a create is never re-sent blindly). A stopped API
    server is reported within about 2 s, a silent one after (max_retries + 1) x read_timeout_s."""

    connect_timeout_s: float = field(default=5.0, metadata={"help": "seconds to open a connection to the API server"})
    read_timeout_s: float = field(
        default=12.0, metadata={"help": "seconds a (non-streaming) API call waits for its answer; watches and log streams are bounded by the server"}
    )
    max_retries: int = field(default=3, metadata={"help": "retries of an API call that found no server"})
    backoff_factor: float = field(default=0.5, metadata={"help": "urllib3 backoff between retries: factor x 2**(retry-1) s"})


KUBE_API = KubeApiSettings()
KUBE_API_SETTINGS_TEXT = "medssr.kube.client.KubeApiSettings (connect_timeout_s, read_timeout_s, max_retries)"


def api_client(kubeconfig: str | os.PathLike | None = None, context: str | None = None, settings: KubeApiSettings = KUBE_API):
    """An ApiClient from ``kubeconfig`` (and ``context``) when given, else the pod's service account inside a
    cluster, else ``$KUBECONFIG`` / ``~/.kube/config``; missing or unusable credentials are a UserError."""
    from kubernetes import client
    from kubernetes import config as kube_config
    from kubernetes.config.config_exception import ConfigException

    if kubeconfig and not Path(kubeconfig).is_file():
        raise UserError(f"kubeconfig {kubeconfig} does not exist")
    configuration = client.Configuration()
    try:
        if not kubeconfig and not context and os.environ.get("KUBERNETES_SERVICE_HOST"):
            kube_config.load_incluster_config(client_configuration=configuration)
        else:
            kube_config.load_kube_config(config_file=kubeconfig or None, context=context or None, client_configuration=configuration)
    except (ConfigException, FileNotFoundError) as error:
        if kubeconfig or context:
            raise UserError(f"cannot load kubeconfig: {error}") from None
        raise UserError(f"no cluster credentials: {error} (pass --kubeconfig)") from None
    return bounded_api_client(configuration, settings)


def bounded_api_client(configuration, settings: KubeApiSettings = KUBE_API):
    """A ``kubernetes.client.ApiClient`` for ``configuration`` whose calls retry and time out as ``settings`` say."""
    import urllib3
    from kubernetes import client

    configuration.retries = urllib3.Retry(total=settings.max_retries, backoff_factor=settings.backoff_factor)
    api = client.ApiClient(configuration)
    request = api.rest_client.request

    # The client has no default timeout (a call to a silent server waits forever): give every call one,
    # except that a stream (watch, followed log) keeps reading as long as the server sends.
    def request_with_timeouts(method, url, *args, _preload_content=True, _request_timeout=None, **kwargs):
        if _request_timeout is None:
            _request_timeout = (settings.connect_timeout_s, settings.read_timeout_s if _preload_content else None)
        return request(method, url, *args, _preload_content=_preload_content, _request_timeout=_request_timeout, **kwargs)

    api.rest_client.request = request_with_timeouts
    return api


def is_unreachable(exc: BaseException) -> bool:
    import urllib3.exceptions

    return isinstance(exc, (urllib3.exceptions.MaxRetryError, urllib3.exceptions.TimeoutError, urllib3.exceptions.ProtocolError))


def reachable(api):
    """API calls in this block that find no server answering raise DependencyUnavailable naming it."""
    from medssr.dependencies import reported_unreachable

    return reported_unreachable("Kubernetes API server", api.configuration.host, KUBE_API_SETTINGS_TEXT, is_unreachable)


def api_message(error) -> str:
    """The API server's own message from an ApiException body, else its status and reason."""
    import json

    try:
        return json.loads(error.body).get("message") or str(error.reason)
    except (TypeError, ValueError, AttributeError):
        return f"{error.status} {error.reason}"
