"""Where artifacts live: local paths and ``s3://bucket/key`` URIs behind one small API.

Local writes are atomic (temp file in the same folder, fsync, rename), so a crash never leaves a
half-written file that a later run would read. S3 uses boto3 and honours the standard settings
(``AWS_*`` credentials, ``AWS_ENDPOINT_URL`` / ``MLFLOW_S3_ENDPOINT_URL`` for MinIO or a test server).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from medssr.dependencies import Dependency, botocore_retry_notices, reported_unreachable


def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"s3 URI has no bucket: {uri!r}")
    return bucket, key


@dataclass(frozen=True)
class S3Settings:
    """How long an S3 call waits (botocore's own timeouts and "standard" retries: the one retry layer). A stopped
    endpoint is reported within about 3 s of backoff, a silent one after max_attempts x read_timeout_s."""

    connect_timeout_s: float = field(default=5.0, metadata={"help": "seconds to open a connection to the S3 endpoint"})
    read_timeout_s: float = field(default=15.0, metadata={"help": "seconds an S3 call waits for the next bytes of an answer"})
    max_attempts: int = field(
        default=3, metadata={"help": "tries of each S3 call, the first included (AWS_MAX_ATTEMPTS wins when set)"}
    )


S3 = S3Settings()


def s3_endpoint() -> str:
    return os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("MLFLOW_S3_ENDPOINT_URL") or ""


def s3_client(settings: S3Settings | None = None):
    import boto3
    from botocore.config import Config

    settings = settings or S3
    attempts = int(os.environ.get("AWS_MAX_ATTEMPTS") or settings.max_attempts)
    config = Config(
        connect_timeout=settings.connect_timeout_s,
        read_timeout=settings.read_timeout_s,
        retries={"mode": "standard", "total_max_attempts": attempts},
    )
    client = boto3.client("s3", endpoint_url=s3_endpoint() or None, config=config)
    client.meta.events.register("needs-retry.s3", botocore_retry_notices(_s3_dependency(), attempts))
    return client


def _is_s3_unreachable(exc: BaseException) -> bool:
    from botocore.exceptions import ConnectionClosedError, ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError

    # boto3's transfer manager (upload_file, download_file) wraps them in its own errors, with their text.
    return isinstance(exc, (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError)) or (
        "Could not connect to the endpoint URL" in str(exc) or "Read timeout on endpoint URL" in str(exc)
        or "Connection was closed before we received a valid response" in str(exc)
    )


def _s3_dependency() -> Dependency:
    settings = "AWS_MAX_ATTEMPTS and medssr.storage.S3Settings (connect_timeout_s, read_timeout_s, max_attempts)"
    return Dependency("S3 endpoint", s3_endpoint() or "AWS S3 (no AWS_ENDPOINT_URL)", settings)


def _s3_reachable():
    """S3 calls in this block that find no endpoint answering raise DependencyUnavailable naming it."""
    dependency = _s3_dependency()
    return reported_unreachable(dependency.what, dependency.url, dependency.settings, _is_s3_unreachable)


class StorageError(OSError):
    """A path that cannot be written as asked; the message names it and says what is wrong with it."""


def what_is_wrong(exc: OSError, folder: Path) -> str:
    """What an OS error met while writing into ``folder`` says, in words (a file where a folder must be)."""
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            return f"{blocker} is a file, not a folder"
    return exc.strerror or str(exc)


@contextlib.contextmanager
def _reported_as_unwritable(path: Path) -> Iterator[None]:
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {what_is_wrong(exc, path.parent)}") from exc


_NOT_A_FILE = {stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device", stat.S_IFIFO: "a FIFO",
               stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder"}


def write_target(path: Path) -> Path:
    """The file a write to ``path`` must replace: a symlink's final target (the link stays a link). Anything
    but a regular file there is refused: renaming over a device or a FIFO would put a plain file in its place."""
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        kind = stat.S_IFMT(target.stat().st_mode)
    except FileNotFoundError:
        return target
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {what_is_wrong(exc, target.parent)}") from exc
    if kind != stat.S_IFREG:
        shown = path if target == path else f"{path} (a link to {target})"
        raise StorageError(f"cannot write {shown}: it is {_NOT_A_FILE.get(kind, 'not a regular file')}, not a regular file")
    return target


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file: 0666 less the umask (mkstemp's 0600 would hide outputs from the group)."""
    with contextlib.suppress(OSError, StopIteration, ValueError):  # Linux states the umask without changing it
        status = Path("/proc/self/status").read_text()
        return 0o666 & ~int(next(line.split()[1] for line in status.splitlines() if line.startswith("Umask:")), 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temp file beside ``path``; on clean exit fsync and rename it over ``path``.

    A symlink's target is what gets replaced, a device or FIFO is refused (StorageError), an existing file keeps
    its mode and a new one gets ``new_file_mode()``. OS errors of the writer's own steps (making the folder,
    flushing, renaming) raise StorageError.
    """
    path = Path(path)
    target = write_target(path)
    with _reported_as_unwritable(path):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    binary = "b" in mode
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as handle:
            with _reported_as_unwritable(path):
                os.fchmod(handle.fileno(), stat.S_IMODE(target.stat().st_mode) if target.exists() else new_file_mode())
            yield handle
            with _reported_as_unwritable(path):
                handle.flush()
                os.fsync(handle.fileno())
        with _reported_as_unwritable(path):
            os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(uri: str | os.PathLike, text: str) -> None:
    if is_s3(uri):
        bucket, key = split_s3(str(uri))
        with _s3_reachable():
            s3_client().put_object(Bucket=bucket, Key=key, Body=text.encode("utf-8"))
        return
    with atomic_writer(uri) as handle:
        handle.write(text)


def read_text(uri: str | os.PathLike) -> str:
    if is_s3(uri):
        bucket, key = split_s3(str(uri))
        with _s3_reachable():
            return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")
    return Path(uri).read_text(encoding="utf-8")


def exists(uri: str | os.PathLike) -> bool:
    if is_s3(uri):
        bucket, key = split_s3(str(uri))
        with _s3_reachable():
            listing = s3_client().list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
        return listing.get("KeyCount", 0) > 0
    return Path(uri).exists()


def upload_dir(local_dir: str | os.PathLike, uri: str, exclude: Collection[str] = ()) -> None:
    """Copy a folder to ``uri`` (s3 or local), leaving out files named in ``exclude`` (a marker the caller
    writes last, once everything else is there)."""
    local_dir = Path(local_dir)
    files = sorted(p for p in local_dir.rglob("*") if p.is_file() and p.name not in exclude)
    if is_s3(uri):
        bucket, prefix = split_s3(uri)
        client = s3_client()
        with _s3_reachable():
            for file in files:
                key = f"{prefix.rstrip('/')}/{file.relative_to(local_dir).as_posix()}".lstrip("/")
                client.upload_file(str(file), bucket, key)
        return
    target = Path(uri)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(local_dir, tmp, ignore=shutil.ignore_patterns(*exclude))
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


def download_dir(uri: str, local_dir: str | os.PathLike) -> Path:
    """Copy ``uri`` (s3 prefix or local folder) into ``local_dir`` and return it."""
    local_dir = Path(local_dir)
    if not is_s3(uri):
        if Path(uri).resolve() != local_dir.resolve():
            shutil.copytree(uri, local_dir, dirs_exist_ok=True)
        return local_dir
    bucket, prefix = split_s3(uri)
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    client = s3_client()
    paginator = client.get_paginator("list_objects_v2")
    found = False
    with _s3_reachable():
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                found = True
                rel = obj["Key"][len(prefix) :]
                dest = local_dir / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, obj["Key"], str(dest))
    if not found:
        raise StorageError(f"nothing stored under {uri}")
    return local_dir


def list_prefixes(uri: str) -> list[str]:
    """Immediate child names under a folder or s3 prefix (for checkpoint discovery)."""
    if is_s3(uri):
        bucket, prefix = split_s3(uri)
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        client = s3_client()
        names: list[str] = []
        with _s3_reachable():
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
                names += [p["Prefix"][len(prefix) :].rstrip("/") for p in page.get("CommonPrefixes", [])]
        return sorted(names)
    path = Path(uri)
    return sorted(p.name for p in path.iterdir() if p.is_dir()) if path.is_dir() else []
