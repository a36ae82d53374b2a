"""The artifact store: one folder per (kind, fingerprint), published atomically.

An artifact is built in a private temporary folder, every file is fsynced, a completion marker is
written last, and the folder is renamed into place. Readers therefore see either a whole artifact or
none; a crash leaves only a temporary folder that the next writer of that artifact ignores.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

COMPLETE_MARKER = "_COMPLETE.json"
DEFAULT_STORE = "scalelaw-store"


class StoreError(ValueError):
    """A store location that cannot be used; the message says why and what to do."""


def fingerprint(kind: str, payload: Any) -> str:
    """A short stable hash of everything that determines an artifact (canonical JSON)."""
    canonical = json.dumps({"kind": kind, "payload": payload}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


class Store:
    """A store folder: `<root>/<kind>/<fingerprint>/` per artifact, plus a scratch area."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"store: {self.root} is a file, not a folder; pass --store a folder path.")

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    def path(self, kind: str, fp: str) -> Path:
        if not fp.isalnum() or not kind.isidentifier():
            raise StoreError(f"store: {kind!r}/{fp!r} is not a valid artifact name.")
        return self.root / kind / fp

    def marker(self, kind: str, fp: str) -> dict[str, Any] | None:
        """The completion record of an artifact, or None when it is not complete."""
        try:
            return json.loads((self.path(kind, fp) / COMPLETE_MARKER).read_text())
        except FileNotFoundError:
            return None

    def is_complete(self, kind: str, fp: str) -> bool:
        return self.marker(kind, fp) is not None

    def publish(
        self,
        kind: str,
        fp: str,
        build: Callable[[Path], dict[str, Any]],
        keep_existing: Callable[[dict[str, Any]], bool] = lambda record: True,
    ) -> dict[str, Any]:
        """Build an artifact in a scratch folder, then move it into place as `<kind>/<fp>` whole.

        `build` fills the folder and returns the artifact's record, which becomes the completion marker.
        When another writer published the same artifact meanwhile, its copy stays if `keep_existing`
        says so (the first complete copy wins; readers never see the folder disappear) and is replaced
        otherwise (e.g. a failed cell's record).
        """
        final = self.path(kind, fp)
        scratch = self.root / ".tmp" / f"{kind}-{fp}-{uuid.uuid4().hex[:8]}"
        scratch.mkdir(parents=True)
        try:
            record = build(scratch)
            (scratch / COMPLETE_MARKER).write_text(json.dumps(record, sort_keys=True, indent=1, default=str))
            _fsync_tree(scratch)
            final.parent.mkdir(parents=True, exist_ok=True)
            existing = self.marker(kind, fp)
            if existing is not None and keep_existing(existing):
                return existing
            if final.exists():
                retired = self.root / ".tmp" / f"retired-{kind}-{fp}-{uuid.uuid4().hex[:8]}"
                os.replace(final, retired)
                shutil.rmtree(retired, ignore_errors=True)
            os.replace(scratch, final)
            _fsync_dir(final.parent)
            return record
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def scratch_dir(self, name: str) -> Path:
        """A persistent private folder (e.g. checkpoints of a cell in progress)."""
        path = self.root / ".work" / name
        path.mkdir(parents=True, exist_ok=True)
        return path


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
