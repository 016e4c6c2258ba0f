"""Downloading files: resumable HTTP downloads, SHA-256 checks, safe archive extraction, and the records of a
dataset's remote files (:class:`RemoteFile`, :class:`DatasetSource`).

Only the Python standard library is used (``urllib``). Downloads resume from a ``.part`` file
with HTTP Range requests, are checked against a SHA-256 digest when one is known, and are moved
into place only when complete. Archives are unpacked with every member checked to stay inside
the destination folder.

Each dataset module holds its :class:`DatasetSource` (its public addresses); :func:`mito_monai.datasets.download_dataset`
unpacks one into its layout. No SHA-256 digests are
recorded: we could not compute them here and do not guess them, so downloads are only checked for
completeness (Content-Length) and then validated as a layout. Pass ``sha256`` to
:func:`download_file` to check a digest you trust.

Data licences differ (VNC III: CC BY-NC-SA 3.0; the others: see their pages); check them before use.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

from mito_monai.io.errors import DataError

__all__ = [
    "RemoteFile",
    "DatasetSource",
    "file_sha256",
    "verify_file",
    "download_file",
    "extract_archive",
]

_CHUNK = 1 << 20
_USER_AGENT = "mito-monai/0.1 (urllib)"


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset.

    Attributes:
        url: public address.
        filename: local file name, also the name requested under a ``base_url`` override.
        sha256: expected SHA-256 hex digest, None when unknown.
        extract: unpack the file as an archive (zip/tar) instead of keeping it.
        dest: sub-folder of the dataset root for the file or the archive's content.
        strip_components: leading path components to drop from archive members; None drops a
            single top-level folder when all members share one.
    """

    url: str
    filename: str
    sha256: str | None = None
    extract: bool = False
    dest: str = ""
    strip_components: int | None = 0


@dataclass(frozen=True)
class DatasetSource:
    """Where a public dataset comes from and which layout its files form once unpacked."""

    name: str
    layout: str
    files: tuple[RemoteFile, ...]
    homepage: str
    license: str
    citation: str
    note: str = ""




# ----------------------------------------------------------------------------------------------
# checksums
# ----------------------------------------------------------------------------------------------
def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_file(path: str | os.PathLike, sha256: str) -> Path:
    """Check a file's SHA-256 digest.

    Returns:
        ``path`` as a Path.

    Raises:
        DataError: the file is missing or its digest differs (the message gives both digests).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist; cannot verify its checksum")
    actual = file_sha256(path)
    if actual.lower() != sha256.strip().lower():
        raise DataError(f"{path}: SHA-256 mismatch: expected {sha256.strip().lower()}, got {actual}")
    return path


# ----------------------------------------------------------------------------------------------
# downloading
# ----------------------------------------------------------------------------------------------
def _content_range_start(value: str | None) -> int | None:
    """Start offset of a ``Content-Range: bytes START-END/TOTAL`` header."""
    if not value or not value.startswith("bytes "):
        return None
    try:
        return int(value[6:].split("-", 1)[0])
    except ValueError:
        return None


class _Progress:
    def __init__(self, name: str, total: int | None, done: int, enabled: bool) -> None:
        self.name, self.total, self.done, self.enabled = name, total, done, enabled
        self._last = 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self._last > 0.5:
            self._last = now
            total = f" of {self.total / 1e6:.1f}" if self.total else ""
            sys.stderr.write(f"\r{self.name}: {self.done / 1e6:.1f}{total} MB")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write(f"\r{self.name}: {self.done / 1e6:.1f} MB, done\n")
            sys.stderr.flush()


def download_file(
    url: str,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    resume: bool = True,
    timeout: float = 60,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest``, resuming a partial download.

    Data go to ``dest + ".part"``; when that file exists and ``resume`` is True the download
    continues from its end with an HTTP Range request (a server that ignores Range sends the whole
    file, which then replaces the part). Only a complete file, with the right SHA-256 when one is
    given, is moved to ``dest``. An existing ``dest`` is kept (and verified when ``sha256`` is given).

    Args:
        url: http(s) or file address.
        dest: final file path.
        sha256: expected SHA-256 hex digest, or None to skip the check.
        resume: continue an existing ``.part`` file instead of starting again.
        timeout: socket timeout in seconds.
        progress: print progress to stderr.

    Returns:
        ``dest`` as a Path.

    Raises:
        DataError: network or HTTP error (the ``.part`` file is kept so a new call resumes),
            a short download, or a checksum mismatch (the download is deleted).
        ValueError: unsupported URL scheme.
    """
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https", "file"):
        raise ValueError(f"unsupported URL scheme {scheme!r} in {url!r}; expected http, https or file")
    dest = Path(dest)
    if dest.exists():
        if sha256 is not None:
            verify_file(dest, sha256)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if part.exists() and not resume:
        part.unlink()
    offset = part.stat().st_size if part.exists() else 0

    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as e:
            if e.code != 416 or not offset:
                raise
            # Range not satisfiable: the part file already holds the whole resource (or more).
            total = e.headers.get("Content-Range", "").rpartition("/")[2]
            e.close()
            if total.isdigit() and int(total) == offset:
                response = None
            else:
                part.unlink()
                offset = 0
                fresh = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
                response = urllib.request.urlopen(fresh, timeout=timeout)
        if response is not None:
            with response:
                status = getattr(response, "status", 200)
                if offset and (status != 206 or _content_range_start(response.headers.get("Content-Range")) != offset):
                    offset = 0  # the server sent the whole file: start over
                length = response.headers.get("Content-Length")
                expected = int(length) if length and length.isdigit() else None
                bar = _Progress(dest.name, None if expected is None else expected + offset, offset, progress)
                received = 0
                with open(part, "ab" if offset else "wb") as out:
                    while True:
                        block = response.read(_CHUNK)
                        if not block:
                            break
                        out.write(block)
                        received += len(block)
                        bar.update(len(block))
                bar.close()
                if expected is not None and received != expected:
                    raise DataError(
                        f"download of {url} stopped after {offset + received} of {offset + expected} bytes; "
                        f"run again to resume from {part}"
                    )
    except DataError:
        raise
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        kept = part.stat().st_size if part.exists() else 0
        raise DataError(f"download of {url} failed ({e}); {kept} bytes kept in {part}, run again to resume") from e
    if sha256 is not None:
        try:
            verify_file(part, sha256)
        except DataError as e:
            part.unlink()
            raise DataError(f"download of {url} is corrupt and was deleted: {str(e).split(': ', 1)[1]}") from None
    os.replace(part, dest)
    return dest


# ----------------------------------------------------------------------------------------------
# archives
# ----------------------------------------------------------------------------------------------
def _member_parts(name: str, archive: Path) -> list[str] | None:
    """Safe relative path components of an archive member, None for metadata to skip."""
    if name.startswith("/") or name.startswith("\\") or (len(name) > 1 and name[1] == ":"):
        raise DataError(f"{archive}: member {name!r} has an absolute path; refusing to extract the archive")
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise DataError(f"{archive}: member {name!r} points outside the destination; refusing to extract the archive")
    if not parts or parts[0] == "__MACOSX" or parts[-1].startswith("._") or parts[-1] == ".DS_Store":
        return None
    return parts


def extract_archive(path: str | os.PathLike, dest: str | os.PathLike, *, strip_components: int | None = 0) -> Path:
    """Unpack a zip or tar(.gz/.bz2/.xz) archive into ``dest``.

    Every member is checked before anything is written: absolute paths, ``..`` components, and
    (tar) links or device files are refused, so nothing can land outside ``dest``. macOS metadata
    (``__MACOSX/``, ``._*``, ``.DS_Store``) is skipped.

    Args:
        path: the archive.
        dest: destination folder (created).
        strip_components: leading path components to drop from each member; None drops a single
            top-level folder shared by all members (and keeps paths as they are otherwise).

    Returns:
        ``dest`` as a Path.

    Raises:
        DataError: unknown or corrupt archive, or an unsafe member (named in the message).
    """
    path, dest = Path(path), Path(dest)
    if not path.is_file():
        raise DataError(f"archive {path} does not exist")
    entries: list[tuple[list[str], bool, object]] = []  # (parts, is_dir, member handle)
    try:
        if zipfile.is_zipfile(path):
            kind, archive = "zip", zipfile.ZipFile(path)
        elif tarfile.is_tarfile(path):
            kind, archive = "tar", tarfile.open(path, "r:*")
        else:
            raise DataError(f"{path}: not a zip or tar archive")
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read the archive ({e}); it may be corrupt or incomplete") from e
    try:
        if kind == "zip":
            for info in archive.infolist():
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise DataError(
                        f"{path}: member {info.filename!r} is a symbolic link; refusing to extract the archive"
                    )
                parts = _member_parts(info.filename, path)
                if parts is not None:
                    entries.append((parts, info.is_dir(), info))
        else:
            for member in archive.getmembers():
                if not (member.isfile() or member.isdir()):
                    raise DataError(
                        f"{path}: member {member.name!r} is a link or special file; refusing to extract the archive"
                    )
                parts = _member_parts(member.name, path)
                if parts is not None:
                    entries.append((parts, member.isdir(), member))
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as e:
        archive.close()
        raise DataError(f"{path}: cannot read the archive ({e}); it may be corrupt or incomplete") from e
    except BaseException:
        archive.close()
        raise

    with archive:
        strip = strip_components
        if strip is None:
            tops = {parts[0] for parts, is_dir, _ in entries}
            nested = all(len(parts) > 1 or is_dir for parts, is_dir, _ in entries)
            strip = 1 if len(tops) == 1 and nested else 0
        root = dest.resolve()
        dest.mkdir(parents=True, exist_ok=True)
        for parts, is_dir, handle in entries:
            rel = parts[strip:]
            if not rel:
                continue
            target = dest.joinpath(*rel)
            if root != target.resolve() and root not in target.resolve().parents:
                raise DataError(f"{path}: member {'/'.join(parts)!r} points outside {dest}; refusing to extract it")
            if is_dir:
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                src = archive.open(handle) if kind == "zip" else archive.extractfile(handle)
                with src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
            except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as e:
                raise DataError(
                    f"{path}: member {'/'.join(parts)!r} cannot be extracted ({e}); the archive may be corrupt"
                ) from e
    return dest
