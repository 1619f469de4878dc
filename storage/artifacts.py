"""Where adapters, merged models, loss charts and worker logs live: ``FTBOT_ARTIFACTS_URL``.

- Unset: ``$FTBOT_HOME`` with today's layout (``models/<job id>/adapter``, ``models/<job id>/merged``,
  ``jobs/<job id>/...``); nothing is copied, a location is a plain path.
- A directory (an NFS mount every node sees): the same layout under it; a location is a plain path.
- ``s3://bucket/prefix`` (AWS S3, MinIO, Ceph; ``FTBOT_ARTIFACTS_ENDPOINT_URL`` for the latter two): the same layout
  under the prefix, through fsspec/s3fs, which read the standard ``AWS_*`` credentials themselves. A location is the
  object URL. A published directory gets a completion marker written after every file, so a reader never takes a
  half-uploaded adapter for a finished one.

Readers call :func:`local_copy`: a local location is used in place; a remote one is downloaded once per machine into
``$FTBOT_HOME/cache/artifacts/<hash>/`` (to a scratch directory renamed when complete) and reused from there.

fsspec and s3fs (the ``cluster`` extra) are imported only for a remote location, so a bot host without them works
with the default store. Every failure is an :class:`ArtifactError` that says what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from storage.config import Settings
from storage.errors import ArtifactError
from storage.scrub import scrub_credentials

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

# Written last into a published remote directory (and into its local copy): present means every file is there.
MARKER = ".ftbot-complete"
CACHE_PARTS = ("cache", "artifacts")
INSTALL_HINT = "install the cluster extra (`pip install 'ftbot[cluster]'`) on this machine"
# A dead endpoint should fail in seconds, not after botocore's default minute of retries.
S3_CONFIG = {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 2, "mode": "standard"}}


def is_remote(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` is a URL of a remote store (``s3://…``) rather than a path on this machine."""
    scheme = urlsplit(str(location)).scheme
    # One letter: a Windows drive ("C:\\…"), not a URL scheme.
    return len(scheme) > 1 and scheme != "file" and "://" in str(location)


def _local_path(location: str) -> Path:
    """A local location (a path, or a ``file://`` URL) as a path."""
    return Path(urlsplit(location).path) if location.startswith("file://") else Path(location).expanduser()


def _join(root: str, parts: tuple[str, ...]) -> str:
    cleaned = [str(part).strip("/") for part in parts if str(part).strip("/")]
    return "/".join([root.rstrip("/"), *cleaned])


def _settings(settings: Settings | None) -> Settings:
    return settings if settings is not None else Settings.from_env()


# --- the remote filesystem ---------------------------------------------------------------------------------------


def _filesystem(location: str, endpoint_url: str | None) -> tuple[AbstractFileSystem, str]:
    """(fsspec filesystem, path inside it) for a remote ``location``; ArtifactError when fsspec/s3fs is missing."""
    scheme = urlsplit(location).scheme
    try:
        from fsspec.core import url_to_fs  # Local: the cluster extra, needed only for a remote store (module docstring).
    except ImportError:
        raise ArtifactError(f"{location} is on remote storage but fsspec is not installed: {INSTALL_HINT}.") from None
    # Other processes (workers on other nodes) write the store: a cached listing could hide their files.
    options: dict[str, Any] = {"skip_instance_cache": True, "use_listings_cache": False}
    if scheme in ("s3", "s3a"):
        try:
            import s3fs  # noqa: F401 - Local: as above; imported here to answer a missing package with the extra's name
        except ImportError:
            raise ArtifactError(f"{location} is on S3 but s3fs is not installed: {INSTALL_HINT}.") from None
        options["config_kwargs"] = S3_CONFIG
        if endpoint_url:
            options["endpoint_url"] = endpoint_url
    try:
        return url_to_fs(location, **options)
    except (ImportError, ValueError) as error:  # fsspec names the package an unknown protocol needs
        raise ArtifactError(f"cannot open {location}: {error}. Use a directory or s3://bucket/prefix "
                            "for FTBOT_ARTIFACTS_URL, or install what is named.") from None


def _bucket(location: str) -> str:
    return urlsplit(location).netloc


def _error_text(error: BaseException) -> str:
    return scrub_credentials(str(error) or type(error).__name__)


def _is_connection_error(error: BaseException) -> bool:
    # botocore's EndpointConnectionError / ConnectTimeoutError, aiohttp's ClientConnectorError: matched by name, so
    # botocore and aiohttp are not imported for the default (local) store.
    names = {cls.__name__ for cls in type(error).__mro__}
    return bool(names & {"EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError",
                         "ClientConnectorError", "ConnectionError", "ServerTimeoutError", "TimeoutError"})


@contextmanager
def _translated(location: str, action: str, endpoint_url: str | None) -> Iterator[None]:
    """Turn what s3fs/botocore raise into one ArtifactError that says what to do."""
    try:
        yield
    except ArtifactError:
        raise
    except Exception as error:  # noqa: BLE001 - s3fs and botocore raise many families; each is answered below
        text = _error_text(error)
        names = {cls.__name__ for cls in type(error).__mro__}
        where = f"the S3 endpoint {endpoint_url}" if endpoint_url else "the artifact store"
        if "NoCredentialsError" in names or "PartialCredentialsError" in names:
            message = (f"cannot {action} {location}: no S3 credentials found. Set AWS_ACCESS_KEY_ID and "
                       "AWS_SECRET_ACCESS_KEY (or give the node an instance role).")
        elif isinstance(error, PermissionError) or "InvalidAccessKeyId" in text or "SignatureDoesNotMatch" in text:
            message = (f"cannot {action} {location}: {where} refused the credentials ({text}). Check "
                       "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and that they may read and write the bucket.")
        elif "NoSuchBucket" in text or "bucket does not exist" in text.lower():
            message = f"cannot {action} {location}: {_no_bucket(location, endpoint_url)}"
        elif _is_connection_error(error):
            message = (f"cannot {action} {location}: {where} cannot be reached ({text}). Check "
                       "FTBOT_ARTIFACTS_ENDPOINT_URL and that this machine can reach it.")
        elif isinstance(error, FileNotFoundError):
            message = f"cannot {action} {location}: it does not exist in the artifact store ({text})."
        else:
            message = f"cannot {action} {location}: {type(error).__name__}: {text}"
        raise ArtifactError(message) from error


def _no_bucket(location: str, endpoint_url: str | None) -> str:
    where = f"the S3 endpoint {endpoint_url}" if endpoint_url else "the artifact store"
    return (f"the bucket {_bucket(location)!r} does not exist on {where}. Create it, or fix FTBOT_ARTIFACTS_URL "
            "(and FTBOT_ARTIFACTS_ENDPOINT_URL for MinIO/Ceph).")


def _marker_bytes(files: int, size: int) -> bytes:
    return json.dumps({"files": files, "bytes": size, "written_at": datetime.now(UTC).isoformat()}).encode()


def upload_dir(local_dir: str | Path, location: str, *, endpoint_url: str | None = None) -> str:
    """Upload ``local_dir`` to the remote ``location`` file by file, then its completion marker; ``location``.

    A marker left by an earlier upload is removed first, so a reader never takes a mix of two uploads as complete."""
    source = Path(local_dir)
    if not source.is_dir():
        raise ArtifactError(f"cannot publish {source}: it is not a directory")
    files = sorted(p for p in source.rglob("*") if p.is_file() and p.name != MARKER)
    fs, root = _filesystem(location, endpoint_url)
    with _translated(location, "write", endpoint_url):
        if fs.exists(f"{root}/{MARKER}"):
            fs.rm_file(f"{root}/{MARKER}")
        for file in files:
            fs.put_file(str(file), f"{root}/{file.relative_to(source).as_posix()}")
        fs.pipe_file(f"{root}/{MARKER}", _marker_bytes(len(files), sum(f.stat().st_size for f in files)))
    return location


def upload_file(local_file: str | Path, location: str, *, endpoint_url: str | None = None) -> str:
    """Upload one file to the remote ``location``; ``location``."""
    source = Path(local_file)
    if not source.is_file():
        raise ArtifactError(f"cannot publish {source}: it is not a file")
    fs, path = _filesystem(location, endpoint_url)
    with _translated(location, "write", endpoint_url):
        fs.put_file(str(source), path)
    return location


def _copy_local_dir(source: Path, target: Path) -> None:
    """Copy ``source`` over ``target`` through a scratch sibling and a rename: nobody sees half a directory."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.parent / f".{target.name}-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        shutil.copytree(source, scratch)
        if target.exists():
            shutil.rmtree(target)
        os.replace(scratch, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# --- the store -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArtifactStore:
    """The artifact store: ``root`` is ``FTBOT_ARTIFACTS_URL`` (a directory or a URL), by default ``$FTBOT_HOME``."""

    root: str
    home: Path
    endpoint_url: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> ArtifactStore:
        settings = _settings(settings)
        root = settings.artifacts_url or str(settings.home)
        if not is_remote(root):
            root = str(_local_path(root))
        return cls(root=root.rstrip("/") or "/", home=settings.home, endpoint_url=settings.artifacts_endpoint_url)

    @property
    def remote(self) -> bool:
        return is_remote(self.root)

    @property
    def is_default(self) -> bool:
        """Whether this is today's layout in ``$FTBOT_HOME``: workers then leave their files where they wrote them."""
        return not self.remote and Path(self.root).resolve() == self.home.resolve()

    def location(self, *parts: str | int) -> str:
        """Where ``parts`` (e.g. ``"models", 7, "adapter"``) live: a path, or a URL for a remote store."""
        names = tuple(str(part) for part in parts)
        if self.remote:
            return _join(self.root, names)
        return str(Path(self.root, *names))

    def publish_dir(self, local_dir: str | Path, *parts: str | int) -> str:
        """Put ``local_dir`` at ``parts``; its location. Nothing is copied when it already is that directory."""
        target = self.location(*parts)
        if self.remote:
            return upload_dir(local_dir, target, endpoint_url=self.endpoint_url)
        source = Path(local_dir)
        if source.resolve() != Path(target).resolve():
            try:
                _copy_local_dir(source, Path(target))
            except OSError as error:
                raise ArtifactError(f"cannot copy {source} to {target}: {error}. Check that FTBOT_ARTIFACTS_URL "
                                    "is a directory this process may write.") from error
        return target

    def publish_file(self, local_file: str | Path, *parts: str | int) -> str:
        """Put one file at ``parts``; its location."""
        target = self.location(*parts)
        if self.remote:
            return upload_file(local_file, target, endpoint_url=self.endpoint_url)
        source = Path(local_file)
        if source.resolve() != Path(target).resolve():
            try:
                Path(target).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
            except OSError as error:
                raise ArtifactError(f"cannot copy {source} to {target}: {error}") from error
        return target


# --- readers ------------------------------------------------------------------------------------------------------


def cache_dir(location: str, settings: Settings | None = None) -> Path:
    """Where this machine keeps its copy of the remote ``location``."""
    key = hashlib.sha256(location.rstrip("/").encode()).hexdigest()[:16]
    return _settings(settings).home.joinpath(*CACHE_PARTS, key)


def _missing(fs: AbstractFileSystem, root: str, location: str, endpoint_url: str | None) -> ArtifactError:
    if not fs.exists(_bucket(location)):
        return ArtifactError(f"cannot read {location}: {_no_bucket(location, endpoint_url)}")
    if fs.exists(root):
        return ArtifactError(f"{location} is incomplete: its upload did not finish (no {MARKER} marker). Wait for the "
                             "job that writes it, or train the model again.")
    return ArtifactError(f"{location} does not exist in the artifact store: was it removed, or is FTBOT_ARTIFACTS_URL "
                         "(or FTBOT_ARTIFACTS_ENDPOINT_URL) pointing at another store than the one that wrote it?")


def artifact_exists(location: str, settings: Settings | None = None) -> bool:
    """Whether ``location`` is a finished directory: a local directory, or a remote one with its completion marker."""
    if not is_remote(location):
        return _local_path(location).is_dir()
    if (cache_dir(location, settings) / MARKER).is_file():
        return True
    endpoint_url = _settings(settings).artifacts_endpoint_url
    fs, root = _filesystem(location, endpoint_url)
    with _translated(location, "read", endpoint_url):
        return bool(fs.exists(f"{root}/{MARKER}"))


def local_copy(location: str | Path, settings: Settings | None = None) -> Path:
    """A directory on this machine holding ``location``: a local path as is; a remote directory downloaded once
    into ``$FTBOT_HOME/cache/artifacts/<hash>/`` and reused while its copy is complete."""
    location = str(location)
    if not is_remote(location):
        return _local_path(location)
    settings = _settings(settings)
    target = cache_dir(location, settings)
    if (target / MARKER).is_file():
        return target
    fs, root = _filesystem(location, settings.artifacts_endpoint_url)
    scratch = target.parent / f".{target.name}-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        scratch.mkdir(parents=True)  # outside _translated: a local failure is not the store's
        with _translated(location, "read", settings.artifacts_endpoint_url):
            try:
                marker = fs.cat_file(f"{root}/{MARKER}")
            except FileNotFoundError:
                raise _missing(fs, root, location, settings.artifacts_endpoint_url) from None
            prefix = root.rstrip("/") + "/"
            for remote in fs.find(root):
                relative = remote[len(prefix):] if remote.startswith(prefix) else ""
                if not relative or relative == MARKER:
                    continue
                (scratch / relative).parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(remote, str(scratch / relative))
        (scratch / MARKER).write_bytes(marker)  # last: a copy without it was interrupted
        if target.exists():
            shutil.rmtree(target)  # an interrupted earlier copy
        try:
            os.replace(scratch, target)
        except OSError:
            if not (target / MARKER).is_file():
                raise
            # another process finished the same copy first: use theirs
    except OSError as error:
        raise ArtifactError(f"cannot copy {location} to {target}: {error}. Check the free space in FTBOT_HOME.") from error
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target



def keep_as_copy(local_dir: str | Path, location: str, settings: Settings | None = None) -> Path:
    """Move ``local_dir``, just published to the remote ``location``, into this machine's cache as its copy (a
    large merged model need not be downloaded right after it was uploaded); the cached directory."""
    target = cache_dir(location, settings)
    source = Path(local_dir)
    if (target / MARKER).is_file():
        shutil.rmtree(source, ignore_errors=True)
        return target
    (source / MARKER).write_bytes(_marker_bytes(sum(1 for p in source.rglob("*") if p.is_file()), 0))
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.rmtree(target)  # an interrupted earlier copy
    try:
        os.replace(source, target)
    except OSError:  # another file system (copy instead), or another process won the race
        if not (target / MARKER).is_file():
            _copy_local_dir(source, target)
        shutil.rmtree(source, ignore_errors=True)
    return target
