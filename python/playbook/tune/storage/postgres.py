"""PostgreSQL backend: one study shared by workers on any number of machines.

``postgresql://user:password@host:port/database`` (``postgres://`` works too; any libpq URI,
e.g. ``postgresql://user@/db?host=/run/postgresql`` for a Unix socket). Needs the ``psycopg``
driver: ``pip install 'playbook[postgres]'`` (imported only when such a URL is opened).

Semantics are those of the SQLite backend (same statements, see the NOTE in
``playbook.tune.storage._sql``): claims take rows with ``SELECT ... FOR UPDATE SKIP LOCKED`` and
new indices from a row-locked counter, every time (heartbeats, staleness) is the server's
``clock_timestamp()``, every write on behalf of a trial checks that the trial still belongs to the
writing worker. A connection lost after the storage has been used (server restart, dropped
network) is re-established and the transaction re-run, for at most ``retry_timeout`` seconds in
total, with a message on stderr; then :class:`StorageError`. Each method is one transaction that is
safe to re-run (idempotent, or guarded by the ownership check). Reads of a database without the
playbook tables create nothing (there are no studies); the first write creates them.
"""

from __future__ import annotations

import os
import random
import threading
import time
from typing import Any, Callable

from playbook.tune.storage._sql import POSTGRESQL, Q, SQLStorage, init_schema
from playbook.tune.storage.base import StorageError, mask_url, notice

__all__ = ["PostgresStorage", "DEFAULT_RETRY_TIMEOUT"]

DEFAULT_RETRY_TIMEOUT = 60.0
_SCHEMA_LOCK = 0x706C6179  # pg_advisory_xact_lock key serializing schema creation/migration

_PERMANENT = {
    "password authentication failed": "Check the user name and password in the URL (or $PGPASSWORD / ~/.pgpass).",
    "no password supplied": "Put the password in the URL (postgresql://user:password@host/db) or in $PGPASSWORD.",
    "no pg_hba.conf entry": "The server does not accept this user/host/database: ask its admin to allow it in pg_hba.conf.",
    "role": "Check the user name in the URL.",
    "database": "Create the database first (`createdb NAME`) or fix the database name in the URL.",
}
_UNREACHABLE = "Is the server running and accepting connections at that host and port (or socket)?"


def _import_psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise ImportError(
            "PostgreSQL study storage needs the psycopg driver: pip install 'playbook[postgres]' "
            "(or pip install 'psycopg[binary]')."
        ) from None
    return psycopg


def _env_retry_timeout() -> float:
    text = os.environ.get("PLAYBOOK_RETRY_TIMEOUT", "")
    if not text:
        return DEFAULT_RETRY_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ValueError(f"Invalid PLAYBOOK_RETRY_TIMEOUT={text!r}: it needs to be a number of seconds >= 0.")
    return value


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _hint(message: str) -> str | None:
    """The hint for a connection error that retrying cannot fix, else ``None``."""
    low = message.lower()
    for key, hint in _PERMANENT.items():
        if key in low and (key not in ("role", "database") or "does not exist" in low):
            return hint
    return None


class PostgresStorage(SQLStorage):
    """PostgreSQL backend for studies shared by many machines.

    Args:
        url: ``postgresql://user:password@host:port/database``.
        retry_timeout: Seconds to keep reconnecting after a connection is lost (default:
            ``$PLAYBOOK_RETRY_TIMEOUT`` or 60).
        connect_timeout: Seconds one connection attempt may take.

    Raises:
        ImportError: psycopg is not installed (the message names the ``postgres`` extra).
    """

    dialect = POSTGRESQL

    def __init__(self, url: str, *, retry_timeout: float | None = None, connect_timeout: float = 10.0) -> None:
        self._psycopg = _import_psycopg()
        if retry_timeout is None:
            retry_timeout = _env_retry_timeout()
        if isinstance(retry_timeout, bool) or not isinstance(retry_timeout, (int, float)) or not retry_timeout >= 0:
            raise ValueError(f"Invalid retry_timeout={retry_timeout!r}: it needs to be a number of seconds >= 0.")
        self.url = url
        self.retry_timeout = float(retry_timeout)
        self.connect_timeout = float(connect_timeout)
        self._conn: Any = None
        self._pid: int | None = None
        self._ever_connected = False
        self._schema_ready = False
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"PostgresStorage({self.display_url!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "retry_timeout": self.retry_timeout, "connect_timeout": self.connect_timeout}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], retry_timeout=state["retry_timeout"], connect_timeout=state["connect_timeout"])  # type: ignore[misc]

    # -- connection -------------------------------------------------------------------------------

    def _connection(self) -> Any:
        if self._conn is not None and self._pid == os.getpid() and not self._conn.closed:
            return self._conn
        self._conn = None  # after fork the inherited connection belongs to the parent: never use it
        conn = self._psycopg.connect(
            self.url,
            autocommit=True,
            connect_timeout=max(int(round(self.connect_timeout)), 1),
            application_name="playbook",
        )
        self._conn = conn
        self._pid = os.getpid()
        self._ever_connected = True
        return conn

    def _ensure_schema(self, conn: Any, create: bool) -> bool:
        """Create or migrate the tables (serialized by an advisory lock). A read of a database
        without them creates nothing and returns ``False``."""
        if self._schema_ready:
            return True
        psycopg = self._psycopg
        try:
            with conn.transaction():
                cur = conn.cursor()
                q = Q(cur, self.dialect)
                if not create and q.one(self.dialect.table_exists, ("meta",)) is None:
                    return False
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                init_schema(q, f"PostgreSQL storage {self.display_url!r}")
        except psycopg.errors.InsufficientPrivilege as exc:
            user = conn.info.user
            raise StorageError(
                f"PostgreSQL storage {self.display_url!r} has no playbook tables (or needs a schema upgrade) "
                f"and user {user!r} may not create them ({_first_line(exc)}). Open it once as a user with "
                f"CREATE rights on the database, or ask its admin to `GRANT CREATE ON SCHEMA public TO {user}`."
            ) from None
        self._schema_ready = True
        return True

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and self._pid == os.getpid():
            try:
                conn.close()
            except Exception:
                pass

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def _connect_error(self, exc: BaseException) -> StorageError:
        message = _first_line(exc)
        hint = _hint(str(exc)) or _UNREACHABLE
        return StorageError(f"Cannot connect to PostgreSQL storage {self.display_url!r}: {message}. {hint}")

    # -- transactions -----------------------------------------------------------------------------

    def _run(self, fn: Callable[[Q], Any], *, write: bool, empty: Any = None) -> Any:
        psycopg = self._psycopg
        transient_sql = (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected)
        deadline: float | None = None
        delay = 0.05
        while True:
            with self._lock:
                try:
                    conn = self._connection()
                    if not self._ensure_schema(conn, create=write):
                        return empty
                    with conn.transaction():
                        result = fn(Q(conn.cursor(), self.dialect))
                    if deadline is not None:
                        notice(f"reconnected to {self.display_url}")
                    return result
                except transient_sql:
                    pass  # lost a race in the server: run the transaction again
                except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                    if not self._ever_connected or _hint(str(exc)) is not None:
                        self._drop()
                        raise self._connect_error(exc) from None
                    self._drop()
                    now = time.monotonic()
                    if deadline is None:
                        deadline = now + self.retry_timeout
                        notice(
                            f"lost the connection to {self.display_url} ({_first_line(exc)}); "
                            f"reconnecting for up to {self.retry_timeout:g} s"
                        )
                    if now >= deadline:
                        raise StorageError(
                            f"Lost the connection to PostgreSQL storage {self.display_url!r} and could not "
                            f"reconnect within {self.retry_timeout:g} s ({_first_line(exc)}). {_UNREACHABLE} "
                            "The call may not have been applied; every storage call is safe to re-run (or raise $PLAYBOOK_RETRY_TIMEOUT)."
                        ) from None
            time.sleep(delay * (1.0 + random.random()))
            delay = min(delay * 2.0, 1.0)
