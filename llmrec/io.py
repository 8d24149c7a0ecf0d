"""Run directories, atomic writes and stage markers.

A run lives in one folder, ``runs/<name>/``; each stage writes ``runs/<name>/<stage>/``. A stage is
built in a temporary sibling folder and renamed into place only when complete, with a marker file
(``_DONE.json``, holding the config hash) written last, so an interrupted stage never looks
finished and a finished stage whose config hash matches can be skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from llmrec.errors import MissingStageError

logger = logging.getLogger(__name__)

MARKER = "_DONE.json"
# A stage's temporary folder younger than this is never removed as stale: its builder may not
# hold the lock on it yet (it is created, then locked, a moment later).
STALE_GRACE_SECONDS = 60.0


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a text file so that readers see the old or the new content, never half of it."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON atomically, with sorted keys so equal content gives equal bytes."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_parquet(path: str | Path, frame: pd.DataFrame) -> None:
    """Write a DataFrame as plain Parquet: no index, no pandas metadata.

    Without the metadata, list columns read back as ordinary lists/arrays in any pandas or
    pyarrow version, instead of depending on the writer's extension dtypes.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)
    pq.write_table(table, path)


def write_parquet_atomic(path: str | Path, frame: pd.DataFrame) -> None:
    """Write a DataFrame to Parquet atomically (see ``write_parquet``)."""
    with atomic_path(path) as tmp:
        write_parquet(tmp, frame)


@dataclass(frozen=True)
class StageDir:
    """One stage's folder inside a run directory, e.g. ``runs/ml100k/data``."""

    run: Path
    stage: str

    @property
    def path(self) -> Path:
        """Where the finished stage lives."""
        return self.run / self.stage

    @property
    def marker(self) -> Path:
        """The file written last when the stage completes."""
        return self.path / MARKER

    def done_info(self) -> dict[str, Any] | None:
        """The marker's content if the stage completed, else None."""
        try:
            data = json.loads(self.marker.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            # Missing, unreadable (e.g. --run names a file) or half-written: not done.
            return None
        return data if isinstance(data, dict) else None

    def is_done(self, config_hash: str | None = None) -> bool:
        """True if the stage finished (with this config hash, when one is given)."""
        info = self.done_info()
        if info is None:
            return False
        return config_hash is None or info.get("config_hash") == config_hash

    def require(self, what: str = "") -> Path:
        """Return the stage folder, or fail naming the command that makes it."""
        if not self.is_done():
            hint = f" Run `{what}` first." if what else ""
            raise MissingStageError(f"{self.path} is missing or incomplete.{hint}")
        return self.path

    def build(
        self, config_hash: str, fill: Callable[[Path], dict[str, Any] | None], force: bool = False
    ) -> bool:
        """Build the stage with ``fill(tmp_dir)`` unless already done with this hash.

        ``fill`` writes every artifact into the temporary folder it is given and may return extra
        fields for the marker. The folder replaces any previous version only once ``fill``
        returned. Returns True if work was done, False if it was skipped.
        """
        if not force and self.is_done(config_hash):
            logger.info("%s is up to date (config %s); skipping", self.path, config_hash)
            return False
        # The temporary and old folders sit beside the stage folder (same file system, so the
        # swap is an atomic rename), also for nested stages such as "baselines/sasrec".
        parent, name = self.path.parent, self.path.name
        parent.mkdir(parents=True, exist_ok=True)
        remove_stale_tmp(parent)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=parent))
        os.chmod(tmp, 0o777 & ~_umask())
        # Held until the folder is renamed into place or removed: a later build that finds the
        # folder unlocked knows its builder died (killed runs leave their .tmp folders behind).
        lock = _lock_folder(tmp)
        try:
            extra = fill(tmp) or {}
            marker = {"stage": self.stage, "config_hash": config_hash, **extra}
            (tmp / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
            old = None
            if self.path.exists():
                old = parent / f".{name}.old"
                if old.exists():
                    shutil.rmtree(old)
                os.replace(self.path, old)
            os.replace(tmp, self.path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
            if lock is not None:
                os.close(lock)
        return True


def _lock_folder(folder: Path) -> int | None:
    """Open ``folder`` and take an exclusive lock on it; None where locks are unavailable."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no stale-folder cleanup either
        return None
    fd = os.open(folder, os.O_RDONLY)
    # Blocking: the only other holder of a fresh folder's lock is a stale-folder probe, which
    # lets go at once (and never removes a folder younger than the grace period).
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _is_stale(folder: Path, now: float) -> bool:
    """True if no process holds ``folder``'s lock and it is older than the grace period."""
    import fcntl

    try:
        if now - folder.stat().st_mtime < STALE_GRACE_SECONDS:
            return False
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # gone already, or not ours to open
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # a live build holds it
        return False
    finally:
        os.close(fd)  # closing drops the probe's lock again
    return True


def remove_stale_tmp(parent: Path, now: float | None = None) -> list[Path]:
    """Remove the ``.<stage>.<random>.tmp`` folders under ``parent`` that killed builds left.

    A live build holds an ``flock`` on its folder (see ``StageDir.build``), so a folder nobody
    locks, older than ``STALE_GRACE_SECONDS``, belongs to a process that is gone. Returns what
    was removed.
    """
    try:
        import fcntl  # noqa: F401
    except ImportError:  # pragma: no cover
        return []
    now = time.time() if now is None else now
    removed = []
    for folder in sorted(parent.glob(".*.tmp")):
        if folder.is_dir() and not folder.is_symlink() and _is_stale(folder, now):
            shutil.rmtree(folder, ignore_errors=True)
            logger.info("removed %s, left by a build that did not finish", folder)
            removed.append(folder)
    return removed


FINGERPRINT_CACHE = ".fingerprints.json"


def file_digest(path: Path) -> str:
    """SHA-256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint_files(paths: list[Path], cache: Path | None = None) -> dict[str, str]:
    """Content hash of each file (a folder: of each file inside it, by name), by path.

    Hashing is skipped for a file whose size and modification time match the entry ``cache``
    (a JSON file) holds for it: touching a file costs one hash, an unchanged file none, and the
    result depends on content only.
    """
    known: dict[str, Any] = {}
    if cache is not None and cache.is_file():
        with contextlib.suppress(json.JSONDecodeError, OSError):
            known = json.loads(cache.read_text(encoding="utf-8"))
    out: dict[str, str] = {}
    changed = False
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        else:
            files.append(path)
    for path in files:
        stat = path.stat()
        name = str(path.resolve())
        entry = known.get(name)
        if entry and entry.get("size") == stat.st_size and entry.get("mtime") == stat.st_mtime_ns:
            out[name] = entry["sha256"]
            continue
        out[name] = file_digest(path)
        known[name] = {"size": stat.st_size, "mtime": stat.st_mtime_ns, "sha256": out[name]}
        changed = True
    if cache is not None and changed:
        with contextlib.suppress(OSError):  # a read-only run folder only loses the shortcut
            write_json_atomic(cache, known)
    return out
