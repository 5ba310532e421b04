"""A service medssr depends on (the MLflow tracking server, an S3 endpoint, the Kubernetes API, a KFP API
server) that did not answer within its bounded retry policy, reported as one line naming it.

Each client keeps exactly one retry layer, its library's own (MLflow's ``MLFLOW_HTTP_REQUEST_*``, botocore's
retry config, urllib3's ``Retry`` in the Kubernetes and KFP clients), bounded by settings declared with that
client; once it gives up, :func:`reported_unreachable` turns the library's connection error into
:class:`DependencyUnavailable`, which the CLI prints as one line with exit status 2.

While a library waits between tries, :func:`announce_retry` says so on the ``medssr.dependencies`` logger (stderr
unless logging is configured otherwise): "waiting for MLflow tracking server at URL: attempt 1 of 4 failed
(...), attempt 2 in 1 s (the wait is set by ...)". Each library reports its retries its own way; one adapter
each turns that into the call: urllib3's retry warning (MLflow, Kubernetes, KFP) and the ``openai`` client's
retry notice through :class:`RetryNotices` on their loggers, botocore's ``needs-retry`` event through
:func:`botocore_retry_notices`. The dependency a thread is waiting on is the one its innermost
:func:`reported_unreachable` block names.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class Dependency:
    """A service being called: what it is, where, and what sets how long medssr waits for it."""

    what: str
    url: str
    settings: str


_WAITING_ON: contextvars.ContextVar[Dependency | None] = contextvars.ContextVar("medssr_waiting_on", default=None)


def announce_retry(dependency: Dependency, failed: int, attempts: int, cause: str, next_try: str) -> None:
    """One line saying that try ``failed`` of ``attempts`` found nothing answering and when the next one goes."""
    log.warning("waiting for %s at %s: attempt %d of %d failed (%s), attempt %d %s (the wait is set by %s)",
                dependency.what, dependency.url, failed, attempts, cause, failed + 1, next_try, dependency.settings)


def announce_outage(dependency: Dependency, cause: str, down_s: float, limit_s: float) -> None:
    """One line saying that a long wait (a training job's) rides out a service that stopped answering."""
    log.warning("waiting for %s at %s: no answer for %.0f s (%s); still trying for up to %.0f s more (the wait is set by %s)",
                dependency.what, dependency.url, down_s, cause, max(0.0, limit_s - down_s), dependency.settings)


# What the openai client logs (at DEBUG) about a failed try, and how its retry line says so.
_OPENAI_FAILURE = re.compile(r"^Encountered (a timeout exception|exception|an HTTP status error): ")


class RetryNotices(logging.Filter):
    """On the loggers of urllib3 and the ``openai`` client: a retry notice of a call made inside
    :func:`reported_unreachable` becomes :func:`announce_retry`'s line (and the library's own is dropped)."""

    def __init__(self, passes_level: int = logging.NOTSET):
        super().__init__()
        self.passes_level = passes_level  # records below it were off before this filter lowered the logger's level
        self.failure = threading.local()  # the openai client's last failure in this thread

    def filter(self, record: logging.LogRecord) -> bool:
        dependency = _WAITING_ON.get()
        args = record.args if isinstance(record.args, tuple) else ()
        if dependency is not None and isinstance(record.msg, str):
            if record.msg.startswith("Retrying (") and len(args) == 3:  # urllib3, logged after its backoff sleep
                retry, error = args[0], args[1]
                failed = len(retry.history)
                attempts = failed + 1 + retry.total if isinstance(retry.total, int) else failed + 1
                announce_retry(dependency, failed, attempts, short_cause(error), f"now, after about {retry.get_backoff_time():.0f} s")
                return False
            if _OPENAI_FAILURE.match(record.msg) and len(args) == 1:
                kind = record.msg.split(":")[0]
                self.failure.cause = f"HTTP {args[0]}" if "status" in kind else "timed out" if "timeout" in kind else str(args[0])
            elif record.msg.startswith("Retrying request in ") and len(args) == 3:  # openai, before its sleep
                delay, retry, retries = args
                announce_retry(dependency, retry, retries + 1, getattr(self.failure, "cause", "failed"), f"in {delay:.1f} s")
                return False
        return record.levelno >= self.passes_level


_install_lock = threading.Lock()
_installed: set[str] = set()


def install_retry_notices() -> None:
    """Put :class:`RetryNotices` on the loggers of urllib3 and the openai client (once per process). openai says
    why a try failed at DEBUG and that it retries at INFO: its logger is opened to DEBUG, and the filter keeps
    whatever was below the level in force before off."""
    with _install_lock:
        for name in ("urllib3.connectionpool", "openai._base_client"):
            if name in _installed:
                continue
            logger = logging.getLogger(name)
            before = logger.getEffectiveLevel()
            if name.startswith("openai"):
                logger.setLevel(logging.DEBUG)
            logger.addFilter(RetryNotices(passes_level=before))
            _installed.add(name)


def botocore_retry_notices(dependency: Dependency, max_attempts: int) -> Callable[..., None]:
    """A handler for botocore's ``needs-retry`` event: announces a try that found no endpoint (or a 5xx/429)
    when another follows. botocore's standard mode waits a random time up to 2**(try-1) s (at most 20 s)."""

    def handler(attempts: int = 0, caught_exception: BaseException | None = None, response=None, **_: object) -> None:
        status = response[0].status_code if response else None
        if attempts >= max_attempts or (caught_exception is None and status not in (429, 500, 502, 503, 504)):
            return None
        cause = short_cause(caught_exception) if caught_exception is not None else f"HTTP {status}"
        announce_retry(dependency, attempts, max_attempts, cause, f"within {min(20, 2 ** (attempts - 1))} s")
        return None

    return handler


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
    """The few words of a long connection error that say what happened ("[Errno 111] Connection refused"), looked
    for in the exception and then in the ones it was raised from (openai's "Connection error." wraps httpx's)."""
    seen: BaseException | None = exc
    while seen is not None:
        found = _CAUSE.search(str(seen))
        if found:
            return found.group(1).strip().rstrip(".,;:")
        seen = seen.__cause__ or seen.__context__
    return (str(exc).splitlines() or [type(exc).__name__])[0][:160]


@contextlib.contextmanager
def reported_unreachable(
    what: str, url: str, settings: str, is_unreachable: Callable[[BaseException], bool] = looks_unreachable
) -> Iterator[None]:
    """Run the block; a connection failure (after the client's own retries) becomes DependencyUnavailable, and
    each retry the client waits for meanwhile is announced (:func:`announce_retry`)."""
    install_retry_notices()
    token = _WAITING_ON.set(Dependency(what, url, settings))
    started = time.monotonic()
    try:
        yield
    except DependencyUnavailable:
        raise
    except Exception as exc:
        if not is_unreachable(exc):
            raise
        raise DependencyUnavailable(what, url, short_cause(exc), time.monotonic() - started, settings) from exc
    finally:
        _WAITING_ON.reset(token)
