"""Study storage: an abstract interface, an SQLite and a PostgreSQL backend (playbook 4.5-4.6, FAQ 7.5).

Quasi-random search is non-adaptive (playbook FAQ 7.5), so a study is just a seed, a search space
and a table of trials that any number of workers fill in: each worker claims the next trial index
atomically, heartbeats while it trains, and writes per-step metrics (training curves, for
retrospective checkpoint selection, playbook 6.2) and a final status.

URLs (:func:`open_storage`):

- ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` or a bare path: one file, the
  default, standard library only (:class:`SQLiteStorage`). Safe for the processes of one machine.
- ``postgresql://user:password@host:port/database``: a PostgreSQL server, for workers on many
  machines (:class:`PostgresStorage`; ``pip install 'playbook[postgres]'``).

Tables (the same in both, written once in ``playbook.tune.storage._sql``):

- ``meta(key, value)``: ``schema_version`` (older databases are migrated when opened)
- ``studies(name, config json, seed, created, next_index)``
- ``trials(study, idx, params json, status, worker, heartbeat, created, started, finished, score,
  best_step, error, final json, attempts)`` with status in ``pending | running | complete |
  infeasible | failed``
- ``metrics(study, idx, step, name, value)``

Concurrency: short transactions (SQLite: ``BEGIN IMMEDIATE`` with a bounded wait for the lock;
PostgreSQL: ``SELECT ... FOR UPDATE SKIP LOCKED``). A running trial whose worker has not
heartbeated for ``stale_after`` seconds (measured on the database's clock) goes back to
``pending`` at the next claim; its metrics are kept and its ``attempts`` count goes up when it is
claimed again. Every write made on behalf of a trial checks that the trial still belongs to the
writing worker, so a worker that was presumed dead cannot overwrite the re-run.
"""

from __future__ import annotations

import os
import threading

from playbook.tune.storage.base import (
    FINISHED,
    SCHEMES,
    STATUSES,
    Storage,
    StorageError,
    StudyRecord,
    TrialRecord,
    mask_url,
    parse_url,
)
from playbook.tune.storage.sqlite import SQLiteStorage

__all__ = [
    "STATUSES",
    "FINISHED",
    "SCHEMES",
    "TrialRecord",
    "StudyRecord",
    "Storage",
    "StorageError",
    "SQLiteStorage",
    "PostgresStorage",
    "open_storage",
    "close_all",
    "parse_url",
    "mask_url",
]


def __getattr__(name: str):  # PostgresStorage without importing psycopg until it is used
    if name == "PostgresStorage":
        from playbook.tune.storage.postgres import PostgresStorage

        return PostgresStorage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_CACHE: dict[tuple[str, int], Storage] = {}
_CACHE_LOCK = threading.Lock()


def open_storage(url: str | Storage) -> Storage:
    """The storage for ``url``, shared by every study of this process that uses the same URL.

    A :class:`Storage` instance is returned as is. A forked child gets its own connection.
    Opening does not connect: the first use does (and SQLite files are created by the first
    write only).

    Raises:
        ValueError: malformed URL or unknown scheme (the message lists the valid ones).
        ImportError: a ``postgresql://`` URL without psycopg installed.
    """
    if isinstance(url, Storage):
        return url
    scheme, location = parse_url(url)
    key = (url, os.getpid())
    with _CACHE_LOCK:
        storage = _CACHE.get(key)
        if storage is None:
            if scheme == "postgresql":
                from playbook.tune.storage.postgres import PostgresStorage

                storage = PostgresStorage(location)
            else:
                storage = SQLiteStorage(location, url=url)
            _CACHE[key] = storage
        return storage


def close_all() -> None:
    """Close every cached storage connection of this process and empty the cache."""
    with _CACHE_LOCK:
        for storage in _CACHE.values():
            storage.close()
        _CACHE.clear()
