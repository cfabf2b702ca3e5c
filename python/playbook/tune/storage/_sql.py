"""One query layer for both SQL backends: every statement is written once, here.

NOTE: [one query layer, two dialects]
Statements use ``?`` placeholders and a few ``{name}`` slots that :class:`Dialect` fills in:

=================  ===================================  ==========================================
slot               SQLite                               PostgreSQL
=================  ===================================  ==========================================
``{now}``          ``(julianday('now')-2440587.5)*86400``  ``EXTRACT(EPOCH FROM clock_timestamp())``
``{real}``         ``REAL``                             ``DOUBLE PRECISION``
``{bigint}``       ``INTEGER``                          ``BIGINT``
``{lock}``         (empty: ``BEGIN IMMEDIATE`` holds    ``FOR UPDATE``
                   the single-writer lock)
``{skip_locked}``  (empty)                              ``FOR UPDATE SKIP LOCKED``
placeholder        ``?``                                ``%s``
=================  ===================================  ==========================================

Everything else (``ON CONFLICT ... DO UPDATE``, ``||``, ``COALESCE``) is common SQL that SQLite
>= 3.24 and PostgreSQL both accept. Times always come from the database (``{now}``): for
PostgreSQL that is the server's clock, so the clocks of worker nodes do not matter for heartbeats.

The claim (see :meth:`SQLStorage.claim_trial`) per dialect:

- SQLite: inside ``BEGIN IMMEDIATE`` (one writer at a time) re-queue stale trials, take the lowest
  pending index, else bump ``studies.next_index`` below ``num_trials``.
- PostgreSQL (READ COMMITTED): the same statements, but the stale re-queue and the pending pick
  lock rows with ``FOR UPDATE SKIP LOCKED`` (concurrent claimers never wait for or take the same
  row) and a new index comes from ``UPDATE studies SET next_index = next_index + 1 WHERE ... AND
  next_index < num_trials``, whose row lock serializes new indices: no duplicates, no gaps.

Durability: reports, final statuses, re-queues and study changes commit durably. Claims and
heartbeats commit with ``synchronous_commit = off`` on PostgreSQL (their commit does not wait for
the disk, so the counter's row lock is held for microseconds, not an fsync): a heartbeat lost in a
server crash is harmless, and a lost claim is made durable by the trial's next report (WAL is
sequential) or, if the server crashed before that, is simply claimed again, while the worker that
lost it is stopped by the ownership check of its first report.

Schema versions: ``meta(key, value)`` holds ``schema_version``. Version 1 is the first release
(no ``studies.next_index``); :data:`MIGRATIONS` upgrades an older database in the transaction
that opens it. A newer version than this library knows is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from playbook.tune.storage.base import (
    FINISHED,
    STATUSES,
    Storage,
    StorageError,
    StudyRecord,
    TrialRecord,
    _float_or_none,
    _metric_value,
)

SCHEMA_VERSION = 2

# The latest schema, for a new database.
_TABLES = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE studies (
        name TEXT PRIMARY KEY,
        config TEXT NOT NULL,
        seed {bigint} NOT NULL,
        created {real} NOT NULL,
        next_index {bigint} NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE trials (
        study TEXT NOT NULL,
        idx {bigint} NOT NULL,
        params TEXT NOT NULL,
        status TEXT NOT NULL,
        worker TEXT,
        heartbeat {real},
        created {real},
        started {real},
        finished {real},
        score {real},
        best_step {bigint},
        error TEXT,
        final TEXT NOT NULL DEFAULT '{{}}',
        attempts {bigint} NOT NULL DEFAULT 0,
        PRIMARY KEY (study, idx)
    )""",
    "CREATE INDEX trials_by_status ON trials (study, status)",
    """CREATE TABLE metrics (
        study TEXT NOT NULL,
        idx {bigint} NOT NULL,
        step {bigint} NOT NULL,
        name TEXT NOT NULL,
        value {real},
        PRIMARY KEY (study, idx, step, name)
    )""",
)

# MIGRATIONS[v]: statements that take a database from schema version v to v + 1.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "ALTER TABLE studies ADD COLUMN next_index {bigint} NOT NULL DEFAULT 0",
        "UPDATE studies SET next_index = (SELECT COALESCE(MAX(idx) + 1, 0) FROM trials WHERE trials.study = studies.name)",
    ),
}

_TRIAL_COLS = "idx, params, status, score, best_step, worker, error, created, started, finished, final, attempts"


@dataclass(frozen=True)
class Dialect:
    """What differs between the SQL backends (see the NOTE in this module)."""

    name: str
    now: str
    real: str
    bigint: str
    lock: str
    skip_locked: str
    placeholder: str
    table_exists: str  # one ``?``: the table name; returns a row when it exists
    relaxed_commit: str  # run first in a transaction whose commit need not wait for the disk

    def sql(self, template: str) -> str:
        text = template.format(
            now=self.now, real=self.real, bigint=self.bigint, lock=self.lock, skip_locked=self.skip_locked
        )
        return text if self.placeholder == "?" else text.replace("?", self.placeholder)


SQLITE = Dialect(
    name="sqlite",
    now="((julianday('now') - 2440587.5) * 86400.0)",
    real="REAL",
    bigint="INTEGER",
    lock="",
    skip_locked="",
    placeholder="?",
    table_exists="SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
    relaxed_commit="",  # WAL + synchronous=NORMAL already commits without an fsync
)

POSTGRESQL = Dialect(
    name="postgresql",
    now="EXTRACT(EPOCH FROM clock_timestamp())::float8",
    real="DOUBLE PRECISION",
    bigint="BIGINT",
    lock="FOR UPDATE",
    skip_locked="FOR UPDATE SKIP LOCKED",
    placeholder="%s",
    table_exists="SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = current_schema() AND tablename = ?",
    relaxed_commit="SET LOCAL synchronous_commit = off",
)


class Q:
    """A cursor that speaks the shared SQL: ``q.one``, ``q.all``, ``q.run`` (rowcount), ``q.many``."""

    def __init__(self, cursor: Any, dialect: Dialect) -> None:
        self.cursor = cursor
        self.dialect = dialect
        self._cache: dict[str, str] = {}

    def _sql(self, template: str) -> str:
        text = self._cache.get(template)
        if text is None:
            text = self._cache[template] = self.dialect.sql(template)
        return text

    def run(self, sql: str, args: Sequence[Any] = ()) -> int:
        self.cursor.execute(self._sql(sql), tuple(args))
        return self.cursor.rowcount

    def one(self, sql: str, args: Sequence[Any] = ()) -> Any:
        self.cursor.execute(self._sql(sql), tuple(args))
        return self.cursor.fetchone()

    def all(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        self.cursor.execute(self._sql(sql), tuple(args))
        return list(self.cursor.fetchall())

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.cursor.executemany(self._sql(sql), [tuple(r) for r in rows])

    def relax(self) -> None:
        """Let this transaction's commit return before its WAL reaches the disk (claims and
        heartbeats only; see the NOTE on durability)."""
        if self.dialect.relaxed_commit:
            self.cursor.execute(self.dialect.relaxed_commit)


def init_schema(q: Q, where: str) -> None:
    """Create the tables (new database) or migrate them to :data:`SCHEMA_VERSION`, in the caller's
    transaction."""
    if q.one(q.dialect.table_exists, ("meta",)) is None:
        if q.one(q.dialect.table_exists, ("studies",)) is not None:
            raise StorageError(f"{where} has a 'studies' table but no 'meta' table: it is not a playbook study database.")
        for stmt in _TABLES:
            q.run(stmt)
        q.run("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        return
    row = q.one("SELECT value FROM meta WHERE key = 'schema_version'")
    try:
        version = int(row[0])
    except (TypeError, ValueError):
        raise StorageError(f"{where} has no valid schema version in its 'meta' table ({row!r}).") from None
    if version > SCHEMA_VERSION:
        raise StorageError(
            f"{where} has schema version {version}, newer than this library's {SCHEMA_VERSION}: "
            "upgrade playbook to use it."
        )
    while version < SCHEMA_VERSION:
        for stmt in MIGRATIONS[version]:
            q.run(stmt)
        version += 1
        q.run("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))


def _study_row(row: Sequence[Any]) -> StudyRecord:
    return StudyRecord(name=row[0], config=json.loads(row[1]), seed=int(row[2]), created=float(row[3]))


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


def _num(x: float | None) -> float | None:
    return None if x is None else float(x)


class SQLStorage(Storage):
    """The :class:`Storage` methods in the shared SQL. Backends provide :meth:`_run`: run
    ``fn(q)`` in one transaction (``write`` says whether it writes) with their retry policy, and
    return ``empty`` for a read of a database that does not exist yet."""

    dialect: Dialect

    def _run(self, fn: Callable[[Q], Any], *, write: bool, empty: Any = None) -> Any:  # pragma: no cover
        raise NotImplementedError

    # -- studies ----------------------------------------------------------------------------------

    def create_study(self, name: str, config: Mapping[str, Any], seed: int) -> StudyRecord:
        config_json = json.dumps(dict(config), sort_keys=True)

        def fn(q: Q) -> StudyRecord:
            q.run(
                "INSERT INTO studies (name, config, seed, created, next_index) VALUES (?, ?, ?, {now}, 0) "
                "ON CONFLICT (name) DO NOTHING",
                (name, config_json, int(seed)),
            )
            return _study_row(q.one("SELECT name, config, seed, created FROM studies WHERE name = ?", (name,)))

        return self._run(fn, write=True)

    def get_study(self, name: str) -> StudyRecord | None:
        row = self._run(
            lambda q: q.one("SELECT name, config, seed, created FROM studies WHERE name = ?", (name,)), write=False
        )
        return None if row is None else _study_row(row)

    def list_studies(self) -> list[StudyRecord]:
        rows = self._run(
            lambda q: q.all("SELECT name, config, seed, created FROM studies ORDER BY created, name"),
            write=False,
            empty=[],
        )
        return [_study_row(r) for r in rows]

    def extend_study(self, name: str, num_trials: int) -> StudyRecord:
        def fn(q: Q) -> StudyRecord:
            row = q.one("SELECT name, config, seed, created FROM studies WHERE name = ? {lock}", (name,))
            if row is None:
                raise ValueError(f"No study named {name!r} in {self.display_url!r}.")
            record = _study_row(row)
            old = int(record.config.get("num_trials", 0))
            if num_trials < old:
                raise ValueError(
                    f"Invalid num_trials={num_trials!r} for study {name!r}: it has {old} trials; "
                    "a study can grow, never shrink."
                )
            if num_trials == old:
                return record
            config = dict(record.config, num_trials=int(num_trials))
            q.run("UPDATE studies SET config = ? WHERE name = ?", (json.dumps(config, sort_keys=True), name))
            return StudyRecord(name=record.name, config=config, seed=record.seed, created=record.created)

        return self._run(fn, write=True)

    def delete_study(self, name: str) -> bool:
        def fn(q: Q) -> bool:
            q.run("DELETE FROM metrics WHERE study = ?", (name,))
            q.run("DELETE FROM trials WHERE study = ?", (name,))
            return q.run("DELETE FROM studies WHERE name = ?", (name,)) > 0

        return self._run(fn, write=True)

    # -- trials -----------------------------------------------------------------------------------

    def claim_trial(
        self,
        study: str,
        worker: str,
        num_trials: int,
        stale_after: float,
        params_for: Callable[[int], dict[str, Any]],
    ) -> TrialRecord | None:
        def fn(q: Q) -> TrialRecord | None:
            q.relax()
            q.run(
                "UPDATE trials SET status = 'pending', "
                "error = 'requeued: worker ' || COALESCE(worker, 'unknown') || ' stopped heartbeating', worker = NULL "
                "WHERE study = ? AND idx IN (SELECT idx FROM trials WHERE study = ? AND status = 'running' "
                "AND COALESCE(heartbeat, started, 0) < {now} - ? {skip_locked})",
                (study, study, float(stale_after)),
            )
            row = q.one(
                "SELECT idx FROM trials WHERE study = ? AND status = 'pending' ORDER BY idx LIMIT 1 {skip_locked}",
                (study,),
            )
            if row is not None:
                index = int(row[0])
                q.run(
                    "UPDATE trials SET status = 'running', worker = ?, heartbeat = {now}, started = {now}, "
                    "finished = NULL, final = '{{}}', attempts = attempts + 1 WHERE study = ? AND idx = ?",
                    (worker, study, index),
                )
            else:
                bumped = q.run(
                    "UPDATE studies SET next_index = next_index + 1 WHERE name = ? AND next_index < ?",
                    (study, int(num_trials)),
                )
                if bumped == 0:
                    return None
                index = int(q.one("SELECT next_index - 1 FROM studies WHERE name = ?", (study,))[0])
                q.run(
                    "INSERT INTO trials (study, idx, params, status, worker, heartbeat, created, started, attempts) "
                    "VALUES (?, ?, ?, 'running', ?, {now}, {now}, {now}, 1)",
                    (study, index, json.dumps(params_for(index)), worker),
                )
            return _trial_row(q.one(f"SELECT {_TRIAL_COLS} FROM trials WHERE study = ? AND idx = ?", (study, index)))

        return self._run(fn, write=True)

    def heartbeat(self, study: str, index: int, worker: str) -> bool:
        def fn(q: Q) -> bool:
            q.relax()
            return (
                q.run(
                    "UPDATE trials SET heartbeat = {now} "
                    "WHERE study = ? AND idx = ? AND worker = ? AND status = 'running'",
                    (study, int(index), worker),
                )
                > 0
            )

        return self._run(fn, write=True)

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
        rows = [(study, int(index), int(step), str(name), float(value)) for name, value in metrics.items()]

        def fn(q: Q) -> bool:
            owned = q.one(
                "SELECT 1 FROM trials WHERE study = ? AND idx = ? AND worker = ? AND status = 'running' {lock}",
                (study, int(index), worker),
            )
            if owned is None:
                return False
            q.run("DELETE FROM metrics WHERE study = ? AND idx = ? AND step > ?", (study, int(index), int(step)))
            q.many(
                "INSERT INTO metrics (study, idx, step, name, value) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (study, idx, step, name) DO UPDATE SET value = excluded.value",
                rows,
            )
            q.run(
                "UPDATE trials SET score = ?, best_step = ?, heartbeat = {now} WHERE study = ? AND idx = ?",
                (_num(score), None if best_step is None else int(best_step), study, int(index)),
            )
            return True

        return self._run(fn, write=True)

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
        args = (status, _num(score), None if best_step is None else int(best_step), error, final_json, study, int(index), worker)
        return self._run(
            lambda q: q.run(
                "UPDATE trials SET status = ?, score = ?, best_step = ?, error = ?, final = ?, finished = {now}, "
                "heartbeat = {now} WHERE study = ? AND idx = ? AND worker = ? AND status = 'running'",
                args,
            )
            > 0,
            write=True,
        )

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
        if stale_after is not None and not (isinstance(stale_after, (int, float)) and stale_after >= 0):
            raise ValueError(f"Invalid stale_after={stale_after!r}: it needs to be a number of seconds >= 0.")
        if (workers is not None and len(workers) == 0) or not statuses:
            return []
        where = [f"status IN ({', '.join('?' * len(statuses))})"]
        args: list[Any] = [study, *statuses]
        if workers is not None:
            where.append(f"worker IN ({', '.join('?' * len(workers))})")
            args.extend(workers)
        if stale_after is not None:
            where.append("COALESCE(heartbeat, started, 0) <= {now} - ?")
            args.append(float(stale_after))
        cond = "study = ? AND " + " AND ".join(where)

        def fn(q: Q) -> list[int]:
            rows = q.all(f"SELECT idx FROM trials WHERE {cond} ORDER BY idx {{lock}}", args)
            indices = [int(r[0]) for r in rows]
            if indices:
                q.many(
                    "UPDATE trials SET status = 'pending', worker = NULL, error = ? WHERE study = ? AND idx = ?",
                    [(reason or None, study, i) for i in indices],
                )
            return indices

        return self._run(fn, write=True)

    def trials(self, study: str) -> list[TrialRecord]:
        rows = self._run(
            lambda q: q.all(f"SELECT {_TRIAL_COLS} FROM trials WHERE study = ? ORDER BY idx", (study,)),
            write=False,
            empty=[],
        )
        return [_trial_row(r) for r in rows]

    def metrics(self, study: str, index: int) -> list[tuple[int, dict[str, float]]]:
        rows = self._run(
            lambda q: q.all(
                "SELECT step, name, value FROM metrics WHERE study = ? AND idx = ? ORDER BY step, name",
                (study, int(index)),
            ),
            write=False,
            empty=[],
        )
        out: list[tuple[int, dict[str, float]]] = []
        for step, name, value in rows:
            if not out or out[-1][0] != step:
                out.append((int(step), {}))
            out[-1][1][name] = _metric_value(value)
        return out

    def status_counts(self, study: str) -> dict[str, int]:
        rows = self._run(
            lambda q: q.all("SELECT status, COUNT(*) FROM trials WHERE study = ? GROUP BY status", (study,)),
            write=False,
            empty=[],
        )
        counts = dict.fromkeys(STATUSES, 0)
        counts.update({status: int(n) for status, n in rows})
        return counts
