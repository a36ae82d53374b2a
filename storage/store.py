"""The artifact store: one folder per (kind, fingerprint), published atomically, local or remote.

An artifact is built in a private temporary folder on this machine, every file is fsynced and a
completion marker is written last. On a local store the folder is then renamed into place, so readers
see either a whole artifact or none. On a remote store (any fsspec URL, e.g. `s3://bucket/prefix`) the
files are uploaded first and the marker last: an artifact counts, for every reader, only once its
marker is there. A crash leaves only a temporary folder (or unmarked files) that readers ignore.

Readers that need files on disk (memory-mapped token streams, tokenizers, model folders) ask for
`local(kind, fp)`: the folder itself on a local store, a cached download of a complete artifact on a
remote one. Credentials for remote stores come from the environment (e.g. AWS_ACCESS_KEY_ID), never
from the store URL, so they never reach a spec, a log or the store.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from storage.cache import machine_cache
from storage.errors import UserError

COMPLETE_MARKER = "_COMPLETE.json"
DEFAULT_STORE = "scalelaw-store"


class StoreError(UserError):
    """A store location that cannot be used; the message says why and what to do."""


def fingerprint(kind: str, payload: Any) -> str:
    """A short stable hash of everything that determines an artifact (canonical JSON)."""
    canonical = json.dumps({"kind": kind, "payload": payload}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def is_remote(location: str | os.PathLike[str]) -> bool:
    return "://" in str(location) and not str(location).startswith("file://")


class Store:
    """`<location>/<kind>/<fingerprint>/` per artifact, plus a scratch area on this machine."""

    def __init__(self, location: str | os.PathLike[str]) -> None:
        if is_remote(location):
            self.location = str(location).rstrip("/")
            self.fs = _remote_filesystem(self.location)
            self._root = self.fs._strip_protocol(self.location).rstrip("/")
            self._local_root = machine_cache() / fingerprint("store", self.location)
        else:
            root = Path(str(location).removeprefix("file://")).expanduser().resolve()
            if root.exists() and not root.is_dir():
                raise StoreError(f"store: {root} is a file, not a folder; pass --store a folder path.")
            self.location = str(root)
            self.fs = LocalFileSystem()
            self._root = self.location
            self._local_root = root

    def __repr__(self) -> str:
        return f"Store({self.location!r})"

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def exists(self) -> bool:
        """Whether anything was ever stored here."""
        return self.fs.isdir(self._root)

    def check_reachable(self) -> None:
        """Fail before any work, with the fix, when a remote store's bucket cannot be listed."""
        if self.is_local:
            return
        bucket = self._root.split("/", 1)[0]
        try:
            self.fs.ls(bucket)
        except Exception as error:  # every filesystem package raises its own errors
            raise StoreError(
                f"store: cannot reach {self.location} ({type(error).__name__}: {error}); check the URL, "
                "that the bucket exists, and the credentials and endpoint in the environment."
            ) from None

    def url(self, kind: str, fp: str, name: str = "") -> str:
        """Where an artifact (or one of its files) lives: a local path or a URL."""
        _check_name(kind, fp)
        relative = f"{kind}/{fp}" + (f"/{name}" if name else "")
        return f"{self.location}/{relative}"

    def _key(self, kind: str, fp: str, name: str = "") -> str:
        _check_name(kind, fp)
        return f"{self._root}/{kind}/{fp}" + (f"/{name}" if name else "")

    def marker(self, kind: str, fp: str) -> dict[str, Any] | None:
        """The completion record of an artifact, or None when it is not complete."""
        try:
            return json.loads(self.fs.cat_file(self._key(kind, fp, COMPLETE_MARKER)))
        except FileNotFoundError:
            return None

    def is_complete(self, kind: str, fp: str) -> bool:
        return self.marker(kind, fp) is not None

    def read_table(
        self, kind: str, fp: str, name: str, filters: Any = None, cached: bool = False
    ) -> pa.Table:
        """One Parquet file of an artifact, memory-mapped when the store is local; `cached`: read from
        this machine's copy of a remote artifact (see `local`) instead of over the network."""
        if self.is_local or cached:
            return pq.read_table(self.local(kind, fp) / name, memory_map=True, filters=filters)
        with self.fs.open(self._key(kind, fp, name), "rb") as handle:
            return pq.read_table(handle, filters=filters)

    def local(self, kind: str, fp: str) -> Path:
        """The artifact's folder on this machine: itself, or a cached copy of the remote artifact."""
        if self.is_local:
            return Path(self._key(kind, fp))
        marker = self.fs.cat_file(self._key(kind, fp, COMPLETE_MARKER))
        cached = self._local_root / kind / fp
        if (cached / COMPLETE_MARKER).is_file() and (cached / COMPLETE_MARKER).read_bytes() == marker:
            return cached
        download = self._local_root / ".tmp" / f"{kind}-{fp}-{uuid.uuid4().hex[:8]}"
        download.mkdir(parents=True)
        try:
            self.fs.get(self._key(kind, fp) + "/", str(download), recursive=True)
            (download / COMPLETE_MARKER).write_bytes(marker)  # the record the files were read under
            _replace_folder(download, cached)
        finally:
            shutil.rmtree(download, ignore_errors=True)
        return cached

    def complete_files(self, kind: str, name: str) -> list[str]:
        """The file `name` of every complete artifact of a kind, as paths or URLs DuckDB can read."""
        self.fs.invalidate_cache()  # listings must show what other writers published meanwhile
        complete = {Path(m).parent.name for m in self.fs.glob(f"{self._root}/{kind}/*/{COMPLETE_MARKER}")}
        files = sorted(
            p for p in self.fs.glob(f"{self._root}/{kind}/*/{name}") if Path(p).parent.name in complete
        )
        return files if self.is_local else [self.fs.unstrip_protocol(p) for p in files]

    def publish(
        self,
        kind: str,
        fp: str,
        build: Callable[[Path], dict[str, Any]],
        keep_existing: Callable[[dict[str, Any]], bool] = lambda record: True,
    ) -> dict[str, Any]:
        """Build an artifact in a scratch folder, then put it in place as `<kind>/<fp>` whole.

        `build` fills the folder and returns the artifact's record, which becomes the completion marker.
        When another writer published the same artifact meanwhile, its copy stays if `keep_existing`
        says so (the first complete copy wins; readers never see it disappear) and is replaced
        otherwise (e.g. a failed cell's record).
        """
        _check_name(kind, fp)
        scratch = self._local_root / ".tmp" / f"{kind}-{fp}-{uuid.uuid4().hex[:8]}"
        scratch.mkdir(parents=True)
        try:
            record = build(scratch)
            (scratch / COMPLETE_MARKER).write_text(json.dumps(record, sort_keys=True, indent=1, default=str))
            _fsync_tree(scratch)
            existing = self.marker(kind, fp)
            if existing is not None and keep_existing(existing):
                return existing
            if self.is_local:
                try:
                    _replace_folder(scratch, Path(self._key(kind, fp)))
                except OSError as error:  # another writer renamed its copy in between: check again
                    if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        raise
                    existing = self.marker(kind, fp)
                    if existing is not None and keep_existing(existing):
                        return existing
                    _replace_folder(scratch, Path(self._key(kind, fp)))
            else:
                self._upload(scratch, kind, fp, replaces=existing is not None)
            return record
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _upload(self, folder: Path, kind: str, fp: str, replaces: bool) -> None:
        """Files first, marker last; a replaced artifact loses its marker before any of its files."""
        if replaces:
            self.fs.rm_file(self._key(kind, fp, COMPLETE_MARKER))
            self.fs.rm(self._key(kind, fp), recursive=True)
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.name != COMPLETE_MARKER:
                self.fs.put_file(str(path), self._key(kind, fp, path.relative_to(folder).as_posix()))
        self.fs.put_file(str(folder / COMPLETE_MARKER), self._key(kind, fp, COMPLETE_MARKER))

    def scratch_dir(self, name: str, create: bool = True) -> Path:
        """A persistent private folder on this machine (e.g. checkpoints of a cell in progress)."""
        path = self._local_root / ".work" / name
        if create:
            path.mkdir(parents=True, exist_ok=True)
        return path


def _check_name(kind: str, fp: str) -> None:
    if not fp.isalnum() or not kind.isidentifier():
        raise StoreError(f"store: {kind!r}/{fp!r} is not a valid artifact name.")


def _remote_filesystem(location: str) -> fsspec.AbstractFileSystem:
    if urlsplit(location).password is not None:
        raise StoreError(
            "store: the URL holds a password; take it out and give credentials through the "
            "environment (e.g. AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)."
        )
    protocol = location.split("://", 1)[0]
    try:
        return fsspec.filesystem(protocol)
    except (ImportError, ValueError) as error:
        raise StoreError(
            f"store: {protocol}:// stores need a filesystem package ({error}); for s3:// install "
            "scalelaw[s3]."
        ) from None


def _replace_folder(source: Path, target: Path) -> None:
    """Move a complete folder into place by rename, retiring an older copy first."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        retired = source.parent / f"retired-{uuid.uuid4().hex[:8]}"
        os.replace(target, retired)
        shutil.rmtree(retired, ignore_errors=True)
    os.replace(source, target)
    _fsync_dir(target.parent)


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    for path in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        _fsync_dir(path)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
