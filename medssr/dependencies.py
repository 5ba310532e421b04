"""A service medssr depends on (the MLflow tracking server, an S3 endpoint, the Kubernetes API, a KFP API
server) that did not answer within its bounded retry policy, reported as one line naming it.

Each client keeps exactly one retry layer, its library's own (MLflow's ``MLFLOW_HTTP_REQUEST_*``, botocore's
retry config, urllib3's ``Retry`` in the Kubernetes and KFP clients), bounded by settings declared with that
client; once it gives up, :func:`reported_unreachable` turns the library's connection error into
:class:`DependencyUnavailable`, which the CLI prints as one line with exit status 2.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator

# How the libraries word "nothing answered": connection refused, timed out, name not resolved, dropped.
_UNREACHABLE = re.compile(
    r"Max retries exceeded|Connection refused|timed out|timeout exception|RemoteDisconnected|Connection aborted|"
    r"Connection reset|Could not connect to the endpoint|Failed to establish a new connection|"
    r"Name or service not known|nodename nor servname|Temporary failure in name resolution",
    re.IGNORECASE,
)
_CAUSE = re.compile(
    r"(\[Errno -?\d+\][^'\")]*|Connection refused|Read timed out\.?(?: \(read timeout=[\d.]+\))?|timed out|RemoteDisconnected[^'\")]*|"
    r"Could not connect to the endpoint URL: \S+|Connection reset by peer)",
    re.IGNORECASE,
)


class DependencyUnavailable(Exception):
    """``what`` at ``url`` did not answer; ``settings`` names what changes how long medssr waits for it."""

    def __init__(self, what: str, url: str, cause: str, waited_s: float, settings: str):
        self.what, self.url, self.cause, self.waited_s, self.settings = what, url, cause, waited_s, settings
        super().__init__(f"{what} at {url} is unreachable ({cause}); gave up after {waited_s:.1f} s (the wait is set by {settings})")


def looks_unreachable(exc: BaseException) -> bool:
    """A connection-level failure (refused, timed out, reset, unresolvable), judged by type or wording."""
    import requests
    import urllib3.exceptions

    connection_types = (
        ConnectionError,
        TimeoutError,
        requests.exceptions.ConnectionError,
        requests.exceptions.Timeout,
        urllib3.exceptions.MaxRetryError,
        urllib3.exceptions.TimeoutError,
        urllib3.exceptions.ProtocolError,
        urllib3.exceptions.NewConnectionError,
    )
    return isinstance(exc, connection_types) or bool(_UNREACHABLE.search(str(exc)))


def short_cause(exc: BaseException) -> str:
    """The few words of a long connection error that say what happened ("[Errno 111] Connection refused")."""
    text = str(exc)
    found = _CAUSE.search(text)
    return found.group(1).strip().rstrip(".,;:") if found else (text.splitlines() or [type(exc).__name__])[0][:160]


@contextlib.contextmanager
def reported_unreachable(
    what: str, url: str, settings: str, is_unreachable: Callable[[BaseException], bool] = looks_unreachable
) -> Iterator[None]:
    """Run the block; a connection failure (after the client's own retries) becomes DependencyUnavailable."""
    started = time.monotonic()
    try:
        yield
    except DependencyUnavailable:
        raise
    except Exception as exc:
        if not is_unreachable(exc):
            raise
        raise DependencyUnavailable(what, url, short_cause(exc), time.monotonic() - started, settings) from exc
