"""On-disk format of a checkpoint and its atomic commit.

A checkpoint is a directory ``step_00001200/`` holding ``state.pt`` (``torch.save``) and
``manifest.json``::

    {"format": "playbook.ckpt", "version": 1, "step": 1200, "metrics": {"val_error": 0.21},
     "keys": ["model", "optimizer"], "files": {"state.pt": {"size": 1234, "sha256": "..."}},
     "created": 1700000000.0, "torch": "2.13.0", "checksum": "<sha256 of the rest>"}

NOTE: [Commit protocol] Everything is written into ``.tmp-step_00001200-<host>-<pid>-<rand>/`` in
the same folder: ``state.pt`` (hashed while it is written), fsync, ``manifest.json``, fsync, fsync
of the directory, then one ``rename`` to ``step_00001200/`` and an fsync of the parent. The rename
is the commit: a directory named ``step_*`` always holds a complete manifest, and a manifest is
written only after the data it describes is durable. A crash at any instant leaves at most a
``.tmp-*`` directory (removed by the next manager on that directory once its writer is dead).
Deleting goes the other way round: rename to ``.del-*`` first, then remove, so a half-deleted
checkpoint never looks like a checkpoint. Replacing an existing step renames the old one to
``.old-*`` first; a crash between the two renames is repaired at the next start (orbax's
AtomicRenameTemporaryPath, Lightning's _atomic_save).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from playbook._process import pid_alive

__all__ = [
    "CorruptCheckpointError",
    "Manifest",
    "STATE_FILE",
    "MANIFEST_FILE",
    "step_dirname",
    "parse_step_dir",
    "read_manifest",
    "verify_files",
    "write_checkpoint",
    "remove_checkpoint",
    "cleanup_stale",
]

FORMAT = "playbook.ckpt"
VERSION = 1
STATE_FILE = "state.pt"
MANIFEST_FILE = "manifest.json"
_STEP_RE = re.compile(r"^step_(\d{8,})$")
_TEMP_RE = re.compile(r"^\.(tmp|old|del)-(step_\d{8,})-(.+)-(\d+)-[0-9a-f]{8}$")
_HOST = socket.gethostname().replace("-", "_")
_CHUNK = 1 << 23  # 8 MiB reads when verifying
_INLINE_HASH = 1 << 20  # writes below 1 MiB are hashed inline, larger ones on a helper thread


class CorruptCheckpointError(ValueError):
    """A checkpoint whose manifest, size or SHA-256 does not match, or that weights-only loading refuses."""


@dataclass(frozen=True)
class Manifest:
    """A committed checkpoint as described by its ``manifest.json``."""

    step: int
    path: Path
    metrics: dict[str, float] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    keys: tuple[str, ...] = ()
    created: float = 0.0


def step_dirname(step: int) -> str:
    return f"step_{step:08d}"


def parse_step_dir(name: str) -> int | None:
    m = _STEP_RE.match(name)
    return None if m is None else int(m.group(1))


def _canonical(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def fsync_dir(path: Path) -> None:
    if os.name == "nt":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_manifest(path: Path) -> Manifest:
    """Parse and check ``path/manifest.json`` (format, version, step, self-checksum).

    Raises:
        CorruptCheckpointError: anything missing or inconsistent (naming the path).
    """
    mpath = path / MANIFEST_FILE
    try:
        raw = mpath.read_bytes()
    except FileNotFoundError:
        raise CorruptCheckpointError(f"Checkpoint {path} has no {MANIFEST_FILE}.") from None
    try:
        data = json.loads(raw)
        body = {k: v for k, v in data.items() if k != "checksum"}
        ok = data.get("checksum") == hashlib.sha256(_canonical(body)).hexdigest()
    except (ValueError, AttributeError, UnicodeDecodeError) as exc:
        raise CorruptCheckpointError(f"Checkpoint {path}: unreadable {MANIFEST_FILE} ({exc}).") from None
    if not ok:
        raise CorruptCheckpointError(f"Checkpoint {path}: {MANIFEST_FILE} does not match its checksum.")
    if data.get("format") != FORMAT or data.get("version") != VERSION:
        raise CorruptCheckpointError(
            f"Checkpoint {path}: format {data.get('format')!r} version {data.get('version')!r}, "
            f"expected {FORMAT!r} version {VERSION}."
        )
    step = parse_step_dir(path.name)
    if step is None or data.get("step") != step:
        raise CorruptCheckpointError(f"Checkpoint {path}: manifest step {data.get('step')!r} != directory name.")
    return Manifest(
        step=step,
        path=path,
        metrics={k: float(v) for k, v in data.get("metrics", {}).items()},
        files=dict(data["files"]),
        keys=tuple(data.get("keys", ())),
        created=float(data.get("created", 0.0)),
    )


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


def verify_files(manifest: Manifest) -> None:
    """Check the size and SHA-256 of every file listed in the manifest."""
    for name, info in manifest.files.items():
        fpath = manifest.path / name
        try:
            size = fpath.stat().st_size
        except FileNotFoundError:
            raise CorruptCheckpointError(f"Checkpoint file {fpath} is missing.") from None
        if size != info["size"]:
            raise CorruptCheckpointError(
                f"Checkpoint file {fpath} has {size} bytes, the manifest says {info['size']} (truncated or overwritten)."
            )
        digest = sha256_file(fpath)
        if digest != info["sha256"]:
            raise CorruptCheckpointError(
                f"Checkpoint file {fpath} fails its SHA-256 check ({digest[:12]}... != {info['sha256'][:12]}...)."
            )


class _HashingWriter:
    """File object for ``torch.save`` that hashes what it writes; big chunks are hashed on a helper
    thread while the calling thread writes them (both release the GIL)."""

    def __init__(self, f: Any) -> None:
        self._f = f
        self._hash = hashlib.sha256()
        self.size = 0
        self.error: OSError | None = None  # first failed write; torch may mask it with its own error
        self._pool: ThreadPoolExecutor | None = None

    def write(self, data: Any) -> int:
        if self.error is not None:
            raise self.error
        try:
            return self._write(data)
        except OSError as exc:
            self.error = exc
            raise

    def _write(self, data: Any) -> int:
        n = memoryview(data).nbytes
        if n < _INLINE_HASH:
            self._hash.update(data)
            self._f.write(data)
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="playbook-ckpt-sha256")
            job = self._pool.submit(self._hash.update, data)
            try:
                self._f.write(data)
            finally:
                job.result()
        self.size += n
        return n

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _temp_name(kind: str, step: int) -> str:
    return f".{kind}-{step_dirname(step)}-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def write_checkpoint(directory: Path, step: int, state: Mapping[str, Any], metrics: Mapping[str, float]) -> Path:
    """Write and commit one checkpoint (see NOTE: [Commit protocol]); returns its final path.

    On failure nothing named ``step_*`` is created or changed and the temporary directory is
    removed (when the file system still allows it); the OSError names the step and directory.
    """
    final = directory / step_dirname(step)
    tmp = directory / _temp_name("tmp", step)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        with open(tmp / STATE_FILE, "xb") as f:
            writer = _HashingWriter(f)
            try:
                torch.save(dict(state), writer)
            except BaseException:
                if writer.error is not None:  # e.g. a full disk: report it, not torch's follow-up error
                    raise writer.error from None
                raise
            finally:
                writer.close()
            f.flush()
            os.fsync(f.fileno())
        body = {
            "format": FORMAT,
            "version": VERSION,
            "step": step,
            "metrics": dict(metrics),
            "keys": sorted(state),
            "files": {STATE_FILE: {"size": writer.size, "sha256": writer.hexdigest()}},
            "created": time.time(),
            "torch": torch.__version__,
        }
        body["checksum"] = hashlib.sha256(_canonical(body)).hexdigest()
        with open(tmp / MANIFEST_FILE, "x", encoding="utf-8") as f:
            json.dump(body, f, sort_keys=True, indent=1)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(tmp)
        if final.exists():
            old = directory / _temp_name("old", step)
            os.rename(final, old)
            os.rename(tmp, final)
            fsync_dir(directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
            fsync_dir(directory)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(
            exc.errno,
            f"Could not write checkpoint step {step} into {directory}: {exc.strerror or exc}. "
            "Nothing was committed; earlier checkpoints are untouched",
        ) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def remove_checkpoint(path: Path) -> None:
    """Delete a committed checkpoint: rename it out of the ``step_*`` namespace, then remove it."""
    step = parse_step_dir(path.name)
    trash = path.parent / _temp_name("del", step if step is not None else 0)
    os.rename(path, trash)
    fsync_dir(path.parent)
    shutil.rmtree(trash)


    return True


def cleanup_stale(directory: Path) -> None:
    """Remove what crashed writers of this host left behind (``.tmp-*``, ``.del-*``) and put back
    a ``.old-*`` checkpoint whose replacement never arrived."""
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        m = _TEMP_RE.match(entry.name)
        if m is None or m.group(3) != _HOST:
            continue
        pid = int(m.group(4))
        if pid == os.getpid() or pid_alive(pid):
            continue
        kind, target = m.group(1), directory / m.group(2)
        path = Path(entry.path)
        try:
            if kind == "old" and not target.exists():
                os.rename(path, target)
                fsync_dir(directory)
            else:
                shutil.rmtree(path)
        except OSError:
            pass  # read-only or racing with another cleaner: harmless, retried next time

