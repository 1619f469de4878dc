"""Unpacking a downloaded model archive (Together's LoRA adapter: tar.zst, tar.gz or plain tar) safely: regular files
and folders only, nothing outside the target, and never a half-written adapter left behind."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from storage.errors import TrainingError

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _safe_members(archive: tarfile.TarFile, target: Path) -> list[tarfile.TarInfo]:
    """Regular files and folders only, each inside ``target``: no absolute paths, no "..", no links or devices."""
    members = []
    for member in archive.getmembers():
        name = PurePosixPath(member.name)
        if name.is_absolute() or ".." in name.parts or member.name.startswith(("/", "\\")):
            raise TrainingError(f"the adapter archive has an unsafe path: {member.name!r}")
        if not (member.isfile() or member.isdir()):
            raise TrainingError(f"the adapter archive has a link or special file: {member.name!r}")
        if not (target / name).resolve().is_relative_to(target.resolve()):
            raise TrainingError(f"the adapter archive has an unsafe path: {member.name!r}")
        members.append(member)
    return members


def _decompress_zstd(data: bytes) -> bytes:
    try:
        import zstandard  # optional: Together's archives are tar.zst
    except ImportError:
        zstd = shutil.which("zstd")
        if zstd is None:
            raise TrainingError("the adapter arrived as .tar.zst: install `zstandard` (pip) or the `zstd` tool") from None
        return subprocess.run([zstd, "-d", "-c"], input=data, capture_output=True, check=True).stdout
    return bytes(zstandard.ZstdDecompressor().decompressobj().decompress(data))


def extract_archive(data: bytes, target: Path) -> Path:
    """Unpack Together's adapter archive (tar.zst, tar.gz or plain tar) into ``target``, replacing what was there.

    Unpacks into a sibling folder first, so a bad archive leaves no half-written adapter behind. If the archive
    holds a single top-level folder, its contents become ``target``.
    """
    if data.startswith(ZSTD_MAGIC):
        data = _decompress_zstd(data)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        try:
            archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
        except tarfile.TarError as error:
            raise TrainingError(f"the adapter download is not a tar archive: {error}") from error
        with archive:
            members = _safe_members(archive, staging)
            archive.extractall(staging, members=members, filter="data")
        entries = list(staging.iterdir())
        root = entries[0] if len(entries) == 1 and entries[0].is_dir() else staging
        if not any(root.iterdir()):
            raise TrainingError("the adapter archive is empty")
        if target.exists():
            shutil.rmtree(target)
        root.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
