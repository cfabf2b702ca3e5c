"""SQLite backend (default): one file, WAL journal, safe across the processes of one machine.

Needs nothing beyond the Python standard library and no server. Not for several machines: SQLite
over a network filesystem is not safe (use :class:`~playbook.tune.storage.postgres.PostgresStorage`).
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from typing import Any, Callable

from playbook.tune.storage._sql import SQLITE, Q, SQLStorage, init_schema
from playbook.tune.storage.base import StorageError, notice

__all__ = ["SQLiteStorage", "DEFAULT_LOCK_TIMEOUT"]

DEFAULT_LOCK_TIMEOUT = 20.0
_NOTICE_AFTER = 2.0  # seconds of waiting on a lock before the first progress message
_NOTICE_EVERY = 5.0


def _env_lock_timeout() -> float:
    text = os.environ.get("PLAYBOOK_LOCK_TIMEOUT", "")
    if not text:
        return DEFAULT_LOCK_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"Invalid PLAYBOOK_LOCK_TIMEOUT={text!r}: it needs to be a number of seconds > 0.")
    return value


class _Missing(Exception):
    """A read of a database file that does not exist (nothing to read; nothing is created)."""


class SQLiteStorage(SQLStorage):
    """SQLite backend (default): one file, WAL journal, short ``BEGIN IMMEDIATE`` write transactions.

    Reads never create the file (a missing file holds no studies); the first write creates it
    with its parent directory. While another process holds the write lock, a writer waits at most
    ``lock_timeout`` seconds in total (printing a progress line on stderr every few seconds) and
    then raises :class:`StorageError`.

    Args:
        path: Database file.
        url: The URL it was opened from (for display; defaults to ``sqlite:///<path>``).
        lock_timeout: Seconds to wait for a lock held by another process before giving up
            (default: ``$PLAYBOOK_LOCK_TIMEOUT`` or 20).
    """

    dialect = SQLITE

    def __init__(self, path: str, *, url: str | None = None, lock_timeout: float | None = None) -> None:
        if lock_timeout is None:
            lock_timeout = _env_lock_timeout()
        if isinstance(lock_timeout, bool) or not isinstance(lock_timeout, (int, float)) or not lock_timeout > 0:
            raise ValueError(f"Invalid lock_timeout={lock_timeout!r}: it needs to be a number of seconds > 0.")
        self.path = str(path)
        self.url = url or f"sqlite:///{self.path}"
        self.lock_timeout = float(lock_timeout)
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"SQLiteStorage({self.url!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "url": self.url, "lock_timeout": self.lock_timeout}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], url=state["url"], lock_timeout=state["lock_timeout"])  # type: ignore[misc]

    # -- connection -------------------------------------------------------------------------------

    def _where(self) -> str:
        return f"SQLite storage {self.path!r}"

    def _wrap(self, exc: sqlite3.DatabaseError) -> StorageError:
        return StorageError(
            f"Cannot use {self._where()} ({self.url}): {exc}. The file is not a playbook study database "
            "or is corrupt: point --storage / $PLAYBOOK_STORAGE at the right file, or restore it from a copy."
        )

    def _connection(self, create: bool) -> sqlite3.Connection:
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        # After fork the inherited connection belongs to the parent: drop it without closing it.
        self._conn = None
        if not os.path.exists(self.path):
            if not create:
                raise _Missing
            parent = os.path.dirname(os.path.abspath(self.path))
            try:
                os.makedirs(parent, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"Cannot create {self._where()}: {exc}.") from None
        elif os.path.isdir(self.path):
            raise StorageError(f"Cannot use {self._where()}: it is a directory, not a database file.")
        try:
            conn = sqlite3.connect(self.path, timeout=0.0, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StorageError(f"Cannot open {self._where()}: {exc}.") from None
        try:
            self._set_busy(conn, self.lock_timeout)
            self._wait_for_lock(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone(), conn)
            conn.execute("PRAGMA synchronous = NORMAL")

            def init() -> None:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    init_schema(Q(conn.cursor(), self.dialect), f"{self._where()}")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")

            self._wait_for_lock(init, conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise self._wrap(exc) from None
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._pid = os.getpid()
        return conn

    @staticmethod
    def _set_busy(conn: sqlite3.Connection, seconds: float) -> None:
        conn.execute(f"PRAGMA busy_timeout = {max(int(seconds * 1000), 1)}")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # -- transactions -----------------------------------------------------------------------------

    @staticmethod
    def _is_busy(exc: sqlite3.OperationalError) -> bool:
        msg = str(exc).lower()
        return "locked" in msg or "busy" in msg

    def _wait_for_lock(self, fn: Callable[[], Any], conn: sqlite3.Connection) -> Any:
        """Run ``fn``; while the database is locked by another process, retry (SQLite's busy
        handler waits up to 0.25 s per try) until ``lock_timeout`` seconds have passed in total."""
        start = time.monotonic()
        next_notice = start + _NOTICE_AFTER
        chunk = min(0.25, self.lock_timeout / 4.0)
        self._set_busy(conn, chunk)
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if not self._is_busy(exc):
                    raise
                now = time.monotonic()
                waited = now - start
                if waited >= self.lock_timeout:
                    raise StorageError(
                        f"{self._where()} is locked by another process: gave up after waiting "
                        f"{waited:.1f} s (lock_timeout={self.lock_timeout:g} s). Find the process holding it "
                        "(e.g. `fuser FILE`) or raise the limit with $PLAYBOOK_LOCK_TIMEOUT."
                    ) from None
                if now >= next_notice:
                    notice(
                        f"waiting for the lock on {self.path} (held by another process): "
                        f"{waited:.0f} s of at most {self.lock_timeout:g} s"
                    )
                    next_notice = now + _NOTICE_EVERY
                self._set_busy(conn, max(min(chunk, self.lock_timeout - waited), 0.001))
                time.sleep(0.001 + 0.01 * random.random())

    def _run(self, fn: Callable[[Q], Any], *, write: bool, empty: Any = None) -> Any:
        with self._lock:
            try:
                conn = self._connection(create=write)
            except _Missing:
                return empty

            def attempt() -> Any:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    result = fn(Q(conn.cursor(), self.dialect))
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
                return result

            try:
                return self._wait_for_lock(attempt, conn)
            except sqlite3.DatabaseError as exc:
                # "file is not a database" / "disk image is malformed" are plain DatabaseErrors.
                if type(exc) is sqlite3.DatabaseError or "no such table" in str(exc):
                    raise self._wrap(exc) from None
                raise
