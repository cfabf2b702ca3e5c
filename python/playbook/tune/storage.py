"""Study storage: an abstract interface and the SQLite backend (playbook 4.5-4.6, FAQ 7.5).

Quasi-random search is non-adaptive (playbook FAQ 7.5), so a study is just a seed, a search space
and a table of trials that any number of workers fill in: each worker claims the next trial index
atomically, heartbeats while it trains, and writes per-step metrics (training curves, for
retrospective checkpoint selection, playbook 6.2) and a final status.

Tables (SQLite, one file; ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``):

- ``studies(name, config json, seed, created)``
- ``trials(study, idx, params json, status, worker, heartbeat, created, started, finished, score,
  best_step, error, final json, attempts)`` with status in ``pending | running | complete |
  infeasible | failed``
- ``metrics(study, idx, step, name, value)``

Concurrency: WAL journal, short ``BEGIN IMMEDIATE`` transactions, a busy timeout and a retry
loop with jittered backoff on ``database is locked``. A running trial whose worker has not
heartbeated for ``stale_after`` seconds goes back to ``pending`` at the next claim and is re-run;
its metrics are kept (a trial that checkpoints resumes), and a report at step ``s`` first deletes
the trial's metrics at steps >= ``s``. Every write made on behalf of a trial checks that the
trial still belongs to the writing worker, so a worker that was presumed dead cannot overwrite
the re-run.

A PostgreSQL backend implements the same :class:`Storage` interface (``SELECT ... FOR UPDATE SKIP
LOCKED`` in place of ``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import abc
import json
import math
import os
import random
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Sequence

__all__ = [
    "STATUSES",
    "FINISHED",
    "TrialRecord",
    "StudyRecord",
    "Storage",
    "SQLiteStorage",
    "open_storage",
    "close_all",
    "parse_url",
]

STATUSES = ("pending", "running", "complete", "infeasible", "failed")
FINISHED = ("complete", "infeasible", "failed")

_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS studies (
    name TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    seed INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS trials (
    study TEXT NOT NULL,
    idx INTEGER NOT NULL,
    params TEXT NOT NULL,
    status TEXT NOT NULL,
    worker TEXT,
    heartbeat REAL,
    created REAL,
    started REAL,
    finished REAL,
    score REAL,
    best_step INTEGER,
    error TEXT,
    final TEXT NOT NULL DEFAULT '{}',
    attempts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (study, idx)
);
CREATE INDEX IF NOT EXISTS trials_by_status ON trials (study, status);
CREATE TABLE IF NOT EXISTS metrics (
    study TEXT NOT NULL,
    idx INTEGER NOT NULL,
    step INTEGER NOT NULL,
    name TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (study, idx, step, name)
);
"""


@dataclass(frozen=True)
class TrialRecord:
    """One trial as stored (read-only snapshot).

    Attributes:
        index: Trial index ``i``: its params are point ``i`` of the study's Halton sequence.
        params: ``{name: value}`` as the objective saw them (active hyperparameters only).
        status: ``"pending"``, ``"running"``, ``"complete"``, ``"infeasible"`` or ``"failed"``.
        score: Best value of the study metric over all reports and final values (playbook 6.2:
            retrospective selection), ``None`` if never reported.
        best_step: Step at which ``score`` occurred (``None`` for a final-only value or no score).
        worker: Id (``host:pid``) of the worker that ran (or runs) it.
        error: Traceback (failed), reason (infeasible) or ``None``.
        created, started, finished: Unix times (``None`` when not reached).
        final: Values passed to ``trial.complete(**final)``.
        attempts: How many times the trial was claimed (``> 1`` after a re-queue).
    """

    index: int
    params: dict[str, Any]
    status: str
    score: float | None = None
    best_step: int | None = None
    worker: str | None = None
    error: str | None = None
    created: float | None = None
    started: float | None = None
    finished: float | None = None
    final: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0

    @property
    def is_finished(self) -> bool:
        """True for complete, infeasible and failed trials."""
        return self.status in FINISHED

    @property
    def feasible(self) -> bool:
        """True for complete trials (the ones that count in comparisons, playbook 4.6)."""
        return self.status == "complete"


@dataclass(frozen=True)
class StudyRecord:
    """A stored study: its name, config dict, seed and creation time."""

    name: str
    config: dict[str, Any]
    seed: int
    created: float


def _float_or_none(x: Any) -> float | None:
    return None if x is None else float(x)


def _metric_value(x: Any) -> float:
    """SQLite stores NaN as NULL: read it back as NaN."""
    return math.nan if x is None else float(x)


class Storage(abc.ABC):
    """Where studies, trials and per-step metrics live. Implementations must be process-safe.

    Every method is one short transaction. Methods acting on behalf of a running trial take the
    ``worker`` id and return ``False`` (writing nothing) when the trial no longer belongs to it.
    """

    url: str

    @abc.abstractmethod
    def create_study(self, name: str, config: Mapping[str, Any], seed: int) -> StudyRecord:
        """Insert a study unless one with that name exists; return the stored record either way."""

    @abc.abstractmethod
    def get_study(self, name: str) -> StudyRecord | None:
        """The stored study called ``name``, or ``None``."""

    @abc.abstractmethod
    def list_studies(self) -> list[StudyRecord]:
        """All studies, oldest first."""

    @abc.abstractmethod
    def claim_trial(
        self,
        study: str,
        worker: str,
        num_trials: int,
        stale_after: float,
        params_for: Callable[[int], dict[str, Any]],
    ) -> TrialRecord | None:
        """Atomically claim the next trial: a pending one (lowest index) or a new index below
        ``num_trials``. Running trials silent for ``stale_after`` seconds are re-queued first.

        Returns:
            The claimed trial (status ``"running"``), or ``None`` when nothing is claimable.
        """

    @abc.abstractmethod
    def heartbeat(self, study: str, index: int, worker: str) -> bool:
        """Mark the trial alive now."""

    @abc.abstractmethod
    def report(
        self,
        study: str,
        index: int,
        worker: str,
        step: int,
        metrics: Mapping[str, float],
        score: float | None,
        best_step: int | None,
    ) -> bool:
        """Store per-step metrics and the running score of a trial."""

    @abc.abstractmethod
    def finish_trial(
        self,
        study: str,
        index: int,
        worker: str,
        status: str,
        *,
        score: float | None,
        best_step: int | None,
        error: str | None,
        final: Mapping[str, Any],
    ) -> bool:
        """Set a final status (complete, infeasible or failed)."""

    @abc.abstractmethod
    def requeue(
        self,
        study: str,
        *,
        workers: Sequence[str] | None = None,
        statuses: Sequence[str] = ("running",),
        stale_after: float | None = None,
        reason: str = "",
    ) -> list[int]:
        """Put trials back to pending: those with a status in ``statuses``, optionally only those
        of the given ``workers`` or (running ones) silent for ``stale_after`` seconds."""

    @abc.abstractmethod
    def trials(self, study: str) -> list[TrialRecord]:
        """Every stored trial of the study, by index."""

    @abc.abstractmethod
    def metrics(self, study: str, index: int) -> list[tuple[int, dict[str, float]]]:
        """``[(step, {name: value}), ...]`` in step order."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections (the storage reconnects if used again)."""

    def status_counts(self, study: str) -> dict[str, int]:
        """``{status: count}`` over stored trials (every status present, zeros included)."""
        counts = dict.fromkeys(STATUSES, 0)
        for t in self.trials(study):
            counts[t.status] += 1
        return counts

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_url(url: str) -> tuple[str, str]:
    """Split a storage URL into ``(scheme, location)``.

    ``sqlite:///rel/path.db`` -> ``("sqlite", "rel/path.db")``; ``sqlite:////abs/path.db`` ->
    ``("sqlite", "/abs/path.db")``; a bare path (no ``://``) is an SQLite file.
    """
    if not isinstance(url, str) or not url:
        raise ValueError(f"Invalid storage URL {url!r}. Use 'sqlite:///path/to/file.db'.")
    if "://" not in url:
        return "sqlite", url
    scheme, rest = url.split("://", 1)
    if scheme == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise ValueError(f"Invalid SQLite URL {url!r}. Use 'sqlite:///relative.db' or 'sqlite:////absolute.db'.")
        path = rest[1:]
        if path == ":memory:":
            raise ValueError(f"In-memory SQLite ({url!r}) cannot be shared by workers; use a file.")
        return "sqlite", path
    raise ValueError(f"Unknown storage scheme: {scheme!r} in {url!r}. It needs to be one of ['sqlite'].")


_CACHE: dict[tuple[str, int], Storage] = {}
_CACHE_LOCK = threading.Lock()


def open_storage(url: str | Storage) -> Storage:
    """The storage for ``url``, shared by every study of this process that uses the same URL.

    A :class:`Storage` instance is returned as is. A forked child gets its own connection.
    """
    if isinstance(url, Storage):
        return url
    scheme, location = parse_url(url)
    key = (url, os.getpid())
    with _CACHE_LOCK:
        storage = _CACHE.get(key)
        if storage is None:
            storage = SQLiteStorage(location, url=url)
            _CACHE[key] = storage
        return storage


def close_all() -> None:
    """Close every cached storage connection of this process and empty the cache."""
    with _CACHE_LOCK:
        for storage in _CACHE.values():
            storage.close()
        _CACHE.clear()


class SQLiteStorage(Storage):
    """SQLite backend (default): one file, WAL journal, safe across local processes.

    Args:
        path: Database file (created with its parent directory if missing).
        url: The URL it was opened from (for display; defaults to ``sqlite:///<path>``).
        busy_timeout: Seconds SQLite waits on a lock before ``database is locked``.
        retries: Extra attempts (jittered exponential backoff) after ``database is locked``.
    """

    def __init__(self, path: str, *, url: str | None = None, busy_timeout: float = 30.0, retries: int = 8) -> None:
        self.path = str(path)
        self.url = url or f"sqlite:///{self.path}"
        self.busy_timeout = float(busy_timeout)
        self.retries = int(retries)
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None
        self._lock = threading.RLock()

    # -- connection management --------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        # After fork the inherited connection belongs to the parent: drop it without closing it.
        self._conn = None
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            self._retry(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone())
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")

            def init() -> None:
                conn.execute("BEGIN IMMEDIATE")
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
                row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                if row is None:
                    conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(_SCHEMA_VERSION),))
                elif int(row[0]) != _SCHEMA_VERSION:
                    conn.execute("ROLLBACK")
                    raise ValueError(
                        f"Storage {self.url!r} has schema version {row[0]}, this library uses {_SCHEMA_VERSION}."
                    )
                conn.execute("COMMIT")

            self._retry(init, conn=conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._pid = os.getpid()
        return conn

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

    def __repr__(self) -> str:
        return f"SQLiteStorage({self.url!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "url": self.url, "busy_timeout": self.busy_timeout, "retries": self.retries}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], url=state["url"], busy_timeout=state["busy_timeout"], retries=state["retries"])  # type: ignore[misc]

    @staticmethod
    def _is_busy(exc: sqlite3.OperationalError) -> bool:
        msg = str(exc).lower()
        return "locked" in msg or "busy" in msg

    def _retry(self, fn: Callable[[], Any], conn: sqlite3.Connection | None = None) -> Any:
        delay = 0.01
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                c = conn if conn is not None else self._conn
                if c is not None and c.in_transaction:
                    c.execute("ROLLBACK")
                if not self._is_busy(exc) or attempt == self.retries:
                    raise
                time.sleep(delay * (1.0 + random.random()))
                delay = min(delay * 2.0, 1.0)
        raise AssertionError("unreachable")

    @contextmanager
    def _txn(self, immediate: bool = True) -> Iterator[sqlite3.Connection]:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    def _write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn`` in a short BEGIN IMMEDIATE transaction, retrying on ``database is locked``."""

        def attempt() -> Any:
            with self._txn() as conn:
                return fn(conn)

        with self._lock:
            return self._retry(attempt)

    def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        def attempt() -> Any:
            with self._txn(immediate=False) as conn:
                return fn(conn)

        with self._lock:
            return self._retry(attempt)

    # -- studies ----------------------------------------------------------------------------------

    @staticmethod
    def _study_row(row: Sequence[Any]) -> StudyRecord:
        return StudyRecord(name=row[0], config=json.loads(row[1]), seed=int(row[2]), created=float(row[3]))

    def create_study(self, name: str, config: Mapping[str, Any], seed: int) -> StudyRecord:
        config_json = json.dumps(dict(config), sort_keys=True)

        def fn(conn: sqlite3.Connection) -> StudyRecord:
            row = conn.execute("SELECT name, config, seed, created FROM studies WHERE name = ?", (name,)).fetchone()
            if row is None:
                created = time.time()
                conn.execute(
                    "INSERT INTO studies (name, config, seed, created) VALUES (?, ?, ?, ?)",
                    (name, config_json, int(seed), created),
                )
                return StudyRecord(name=name, config=json.loads(config_json), seed=int(seed), created=created)
            return self._study_row(row)

        return self._write(fn)

    def get_study(self, name: str) -> StudyRecord | None:
        row = self._read(
            lambda c: c.execute("SELECT name, config, seed, created FROM studies WHERE name = ?", (name,)).fetchone()
        )
        return None if row is None else self._study_row(row)

    def list_studies(self) -> list[StudyRecord]:
        rows = self._read(
            lambda c: c.execute("SELECT name, config, seed, created FROM studies ORDER BY created, name").fetchall()
        )
        return [self._study_row(r) for r in rows]

    # -- trials -----------------------------------------------------------------------------------

    _TRIAL_COLS = "idx, params, status, score, best_step, worker, error, created, started, finished, final, attempts"

    @staticmethod
    def _trial_row(row: Sequence[Any]) -> TrialRecord:
        return TrialRecord(
            index=int(row[0]),
            params=json.loads(row[1]),
            status=row[2],
            score=_float_or_none(row[3]),
            best_step=None if row[4] is None else int(row[4]),
            worker=row[5],
            error=row[6],
            created=_float_or_none(row[7]),
            started=_float_or_none(row[8]),
            finished=_float_or_none(row[9]),
            final=json.loads(row[10]) if row[10] else {},
            attempts=int(row[11]),
        )

    @staticmethod
    def _requeue_stale(conn: sqlite3.Connection, study: str, stale_after: float, now: float) -> None:
        conn.execute(
            "UPDATE trials SET status = 'pending', error = 'requeued: worker ' || COALESCE(worker, '?') "
            "|| ' stopped heartbeating', worker = NULL "
            "WHERE study = ? AND status = 'running' AND COALESCE(heartbeat, started, 0) < ?",
            (study, now - stale_after),
        )

    def claim_trial(
        self,
        study: str,
        worker: str,
        num_trials: int,
        stale_after: float,
        params_for: Callable[[int], dict[str, Any]],
    ) -> TrialRecord | None:
        def fn(conn: sqlite3.Connection) -> TrialRecord | None:
            now = time.time()
            self._requeue_stale(conn, study, stale_after, now)
            row = conn.execute(
                "SELECT idx FROM trials WHERE study = ? AND status = 'pending' ORDER BY idx LIMIT 1", (study,)
            ).fetchone()
            if row is not None:
                index = int(row[0])  # its metrics stay: a resumed trial continues its curve
                conn.execute(
                    "UPDATE trials SET status = 'running', worker = ?, heartbeat = ?, started = ?, finished = NULL, "
                    "score = NULL, best_step = NULL, final = '{}', attempts = attempts + 1 "
                    "WHERE study = ? AND idx = ?",
                    (worker, now, now, study, index),
                )
            else:
                (next_index,) = conn.execute(
                    "SELECT COALESCE(MAX(idx) + 1, 0) FROM trials WHERE study = ?", (study,)
                ).fetchone()
                index = int(next_index)
                if index >= num_trials:
                    return None
                params = json.dumps(params_for(index))
                conn.execute(
                    "INSERT INTO trials (study, idx, params, status, worker, heartbeat, created, started, attempts) "
                    "VALUES (?, ?, ?, 'running', ?, ?, ?, ?, 1)",
                    (study, index, params, worker, now, now, now),
                )
            row = conn.execute(
                f"SELECT {self._TRIAL_COLS} FROM trials WHERE study = ? AND idx = ?", (study, index)
            ).fetchone()
            return self._trial_row(row)

        return self._write(fn)

    @staticmethod
    def _owned(conn: sqlite3.Connection, study: str, index: int, worker: str) -> bool:
        row = conn.execute(
            "SELECT 1 FROM trials WHERE study = ? AND idx = ? AND worker = ? AND status = 'running'",
            (study, index, worker),
        ).fetchone()
        return row is not None

    def heartbeat(self, study: str, index: int, worker: str) -> bool:
        def fn(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE trials SET heartbeat = ? WHERE study = ? AND idx = ? AND worker = ? AND status = 'running'",
                (time.time(), study, index, worker),
            )
            return cur.rowcount > 0

        return self._write(fn)

    def report(
        self,
        study: str,
        index: int,
        worker: str,
        step: int,
        metrics: Mapping[str, float],
        score: float | None,
        best_step: int | None,
    ) -> bool:
        def fn(conn: sqlite3.Connection) -> bool:
            if not self._owned(conn, study, index, worker):
                return False
            # A report at step s replaces the trial's curve from s on (a resumed trial rewrites it).
            conn.execute("DELETE FROM metrics WHERE study = ? AND idx = ? AND step >= ?", (study, index, int(step)))
            conn.executemany(
                "INSERT OR REPLACE INTO metrics (study, idx, step, name, value) VALUES (?, ?, ?, ?, ?)",
                [(study, index, int(step), name, float(value)) for name, value in metrics.items()],
            )
            conn.execute(
                "UPDATE trials SET score = ?, best_step = ?, heartbeat = ? WHERE study = ? AND idx = ?",
                (score, best_step, time.time(), study, index),
            )
            return True

        return self._write(fn)

    def finish_trial(
        self,
        study: str,
        index: int,
        worker: str,
        status: str,
        *,
        score: float | None,
        best_step: int | None,
        error: str | None,
        final: Mapping[str, Any],
    ) -> bool:
        if status not in FINISHED:
            raise ValueError(f"Unknown final status: {status!r}. It needs to be one of {list(FINISHED)}.")
        final_json = json.dumps(dict(final))

        def fn(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE trials SET status = ?, score = ?, best_step = ?, error = ?, final = ?, finished = ?, "
                "heartbeat = ? WHERE study = ? AND idx = ? AND worker = ? AND status = 'running'",
                (status, score, best_step, error, final_json, time.time(), time.time(), study, index, worker),
            )
            return cur.rowcount > 0

        return self._write(fn)

    def requeue(
        self,
        study: str,
        *,
        workers: Sequence[str] | None = None,
        statuses: Sequence[str] = ("running",),
        stale_after: float | None = None,
        reason: str = "",
    ) -> list[int]:
        for s in statuses:
            if s not in STATUSES:
                raise ValueError(f"Unknown status: {s!r}. It needs to be one of {list(STATUSES)}.")

        def fn(conn: sqlite3.Connection) -> list[int]:
            where = [f"status IN ({','.join('?' * len(statuses))})"]
            args: list[Any] = [study, *statuses]
            if workers is not None:
                where.append(f"worker IN ({','.join('?' * len(workers))})")
                args.extend(workers)
            if stale_after is not None:
                where.append("COALESCE(heartbeat, started, 0) < ?")
                args.append(time.time() - stale_after)
            cond = "study = ? AND " + " AND ".join(where)
            rows = conn.execute(f"SELECT idx FROM trials WHERE {cond} ORDER BY idx", args).fetchall()
            conn.execute(
                f"UPDATE trials SET status = 'pending', worker = NULL, error = ? WHERE {cond}",
                [reason or None, *args],
            )
            return [int(r[0]) for r in rows]

        if workers is not None and len(workers) == 0:
            return []
        return self._write(fn)

    def trials(self, study: str) -> list[TrialRecord]:
        rows = self._read(
            lambda c: c.execute(
                f"SELECT {self._TRIAL_COLS} FROM trials WHERE study = ? ORDER BY idx", (study,)
            ).fetchall()
        )
        return [self._trial_row(r) for r in rows]

    def metrics(self, study: str, index: int) -> list[tuple[int, dict[str, float]]]:
        rows = self._read(
            lambda c: c.execute(
                "SELECT step, name, value FROM metrics WHERE study = ? AND idx = ? ORDER BY step, rowid",
                (study, index),
            ).fetchall()
        )
        out: list[tuple[int, dict[str, float]]] = []
        for step, name, value in rows:
            if not out or out[-1][0] != step:
                out.append((int(step), {}))
            out[-1][1][name] = _metric_value(value)
        return out

    def status_counts(self, study: str) -> dict[str, int]:
        rows = self._read(
            lambda c: c.execute(
                "SELECT status, COUNT(*) FROM trials WHERE study = ? GROUP BY status", (study,)
            ).fetchall()
        )
        counts = dict.fromkeys(STATUSES, 0)
        counts.update({status: int(n) for status, n in rows})
        return counts
