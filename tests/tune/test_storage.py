"""SQLite storage: schema, atomic claims, ownership, stale re-queue, locking, reopening."""

from __future__ import annotations

import math
import sqlite3
import threading
import time

import pytest

from playbook.tune.storage import SQLiteStorage, open_storage, parse_url


def params_for(i: int) -> dict:
    return {"x": i / 10}


@pytest.fixture()
def store(tmp_path):
    s = SQLiteStorage(str(tmp_path / "s.db"))
    s.create_study("st", {"space": {}, "num_trials": 3}, seed=7)
    yield s
    s.close()


def test_parse_url():
    assert parse_url("sqlite:///rel/s.db") == ("sqlite", "rel/s.db")
    assert parse_url("sqlite:////abs/s.db") == ("sqlite", "/abs/s.db")
    assert parse_url("plain/path.db") == ("sqlite", "plain/path.db")


@pytest.mark.parametrize(
    "url,match",
    [
        ("postgres://host/db", "'postgres'"),
        ("sqlite://", "'sqlite://'"),
        ("sqlite:///:memory:", "memory"),
        ("", "''"),
    ],
)
def test_bad_urls(url, match):
    with pytest.raises(ValueError, match=match):
        parse_url(url)


def test_wal_and_tables(store):
    store.list_studies()
    conn = sqlite3.connect(store.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"studies", "trials", "metrics"} <= tables
        cols = {r[1] for r in conn.execute("PRAGMA table_info(trials)")}
        assert {"study", "idx", "params", "status", "worker", "heartbeat", "created", "started", "finished",
                "score", "best_step", "error", "final"} <= cols
    finally:
        conn.close()


def test_create_study_is_idempotent(store):
    rec = store.create_study("st", {"other": 1}, seed=99)
    assert rec.config == {"space": {}, "num_trials": 3} and rec.seed == 7
    assert store.get_study("nope") is None
    store.create_study("b", {}, seed=1)
    assert [r.name for r in store.list_studies()] == ["st", "b"]


def test_claims_in_order_until_budget(store):
    got = [store.claim_trial("st", "w1", 3, 60.0, params_for) for _ in range(4)]
    assert [g.index for g in got[:3]] == [0, 1, 2] and got[3] is None
    assert got[1].params == {"x": 0.1} and got[1].status == "running" and got[1].worker == "w1"
    assert got[0].attempts == 1 and got[0].started is not None and got[0].created is not None


def test_ownership_report_and_finish(store):
    t = store.claim_trial("st", "w1", 3, 60.0, params_for)
    assert store.report("st", t.index, "w1", 0, {"loss": 1.0, "acc": float("nan")}, 1.0, 0)
    assert not store.report("st", t.index, "intruder", 1, {"loss": 0.0}, 0.0, 1)
    assert store.heartbeat("st", t.index, "w1") and not store.heartbeat("st", t.index, "w2")
    assert not store.finish_trial("st", t.index, "w2", "complete", score=0.0, best_step=1, error=None, final={})
    assert store.finish_trial("st", t.index, "w1", "complete", score=1.0, best_step=0, error=None, final={"f": 2})
    (rec,) = store.trials("st")
    assert rec.status == "complete" and rec.score == 1.0 and rec.best_step == 0 and rec.final == {"f": 2}
    assert rec.finished is not None and rec.finished >= rec.started
    (step, values), = store.metrics("st", t.index)
    assert step == 0 and values["loss"] == 1.0 and math.isnan(values["acc"])  # NaN survives (NULL)
    # a finished trial cannot be written to any more
    assert not store.report("st", t.index, "w1", 5, {"loss": 0.0}, 0.0, 5)
    with pytest.raises(ValueError, match="'done'"):
        store.finish_trial("st", t.index, "w1", "done", score=None, best_step=None, error=None, final={})


def test_metrics_in_step_order(store):
    t = store.claim_trial("st", "w", 3, 60.0, params_for)
    for step in (20, 0, 10, 10):
        store.report("st", t.index, "w", step, {"loss": float(step)}, None, None)
    # a report at step s replaces the curve from s on (resumed trials rewrite their future)
    assert store.metrics("st", t.index) == [(0, {"loss": 0.0}), (10, {"loss": 10.0})]


def test_stale_trial_is_requeued_and_rerun(store):
    t = store.claim_trial("st", "dead", 3, 60.0, params_for)
    store.report("st", t.index, "dead", 0, {"loss": 3.0}, 3.0, 0)
    # Not stale yet with a long timeout: the next claim takes a new index.
    assert store.claim_trial("st", "alive", 3, 60.0, params_for).index == 1
    time.sleep(0.05)
    again = store.claim_trial("st", "alive", 3, 0.01, params_for)
    assert again.index == 0 and again.worker == "alive" and again.attempts == 2
    assert again.score is None and store.metrics("st", 0) == [(0, {"loss": 3.0})]  # kept for resuming
    # the presumed-dead worker can no longer write
    assert not store.report("st", 0, "dead", 1, {"loss": 0.0}, 0.0, 1)
    assert not store.finish_trial("st", 0, "dead", "complete", score=0.0, best_step=1, error=None, final={})


def test_requeue_by_worker_and_status(store):
    a = store.claim_trial("st", "w1", 3, 60.0, params_for)
    b = store.claim_trial("st", "w2", 3, 60.0, params_for)
    store.finish_trial("st", b.index, "w2", "failed", score=None, best_step=None, error="tb", final={})
    assert store.requeue("st", workers=["w1"], reason="gone") == [a.index]
    assert store.requeue("st", statuses=("failed",)) == [b.index]
    assert store.status_counts("st") == {"pending": 2, "running": 0, "complete": 0, "infeasible": 0, "failed": 0}
    assert [t.index for t in (store.claim_trial("st", "w3", 3, 60.0, params_for) for _ in range(2))] == [0, 1]
    with pytest.raises(ValueError, match="'bogus'"):
        store.requeue("st", statuses=("bogus",))


def test_reopen_storage(tmp_path):
    path = str(tmp_path / "r.db")
    with SQLiteStorage(path) as s:
        s.create_study("a", {"k": 1}, seed=3)
        t = s.claim_trial("a", "w", 5, 60.0, params_for)
        s.report("a", t.index, "w", 4, {"loss": 0.5}, 0.5, 4)
    with SQLiteStorage(path) as s2:
        assert s2.get_study("a").config == {"k": 1}
        assert s2.trials("a")[0].score == 0.5
        assert s2.metrics("a", 0) == [(4, {"loss": 0.5})]
    # a closed storage reconnects on use
    s2.list_studies()
    s2.close()


def test_open_storage_is_cached_per_url(tmp_path):
    from playbook.tune.storage import close_all

    url = f"sqlite:///{tmp_path}/c.db"
    try:
        assert open_storage(url) is open_storage(url)
        s = SQLiteStorage(str(tmp_path / "x.db"))
        assert open_storage(s) is s
    finally:
        close_all()


def test_retries_when_database_is_locked(tmp_path):
    path = str(tmp_path / "l.db")
    s = SQLiteStorage(path, busy_timeout=0.02, retries=12)
    s.create_study("a", {}, seed=0)
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    released = threading.Event()

    def release() -> None:
        time.sleep(0.3)
        blocker.execute("COMMIT")
        released.set()

    th = threading.Thread(target=release)
    th.start()
    try:
        t = s.claim_trial("a", "w", 1, 60.0, params_for)  # waits out the lock via retries
        assert t is not None and t.index == 0 and released.is_set()
    finally:
        th.join()
        blocker.close()
        s.close()


def test_locked_error_surfaces_after_retries(tmp_path):
    path = str(tmp_path / "l2.db")
    s = SQLiteStorage(path, busy_timeout=0.01, retries=1)
    s.create_study("a", {}, seed=0)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            s.claim_trial("a", "w", 1, 60.0, params_for)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert s.claim_trial("a", "w", 1, 60.0, params_for).index == 0  # usable afterwards
    s.close()


def test_schema_version_mismatch(tmp_path):
    path = str(tmp_path / "v.db")
    with SQLiteStorage(path) as s:
        s.list_studies()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(ValueError, match="schema version 99"):
        SQLiteStorage(path).list_studies()
