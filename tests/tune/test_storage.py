"""Storage on both backends (SQLite, real PostgreSQL): schema, atomic claims, ownership, stale
re-queue, metrics on resume, locking, reopening."""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from playbook.tune.storage import SQLiteStorage, StorageError, open_storage, parse_url


def params_for(i: int) -> dict:
    return {"x": i / 10}


@pytest.fixture()
def store(any_url):
    s = open_storage(any_url)
    s.create_study("st", {"space": {}, "num_trials": 3}, seed=7)
    yield s
    s.close()


def test_mask_url():
    from playbook.tune.storage import mask_url

    assert mask_url("postgresql://u:pw@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert mask_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert mask_url("postgres://u@h/db?sslmode=require&password=pw") == "postgres://u@h/db?sslmode=require&password=***"
    assert mask_url("sqlite:///a.db") == "sqlite:///a.db"


def test_parse_url():
    assert parse_url("sqlite:///rel/s.db") == ("sqlite", "rel/s.db")
    assert parse_url("sqlite:////abs/s.db") == ("sqlite", "/abs/s.db")
    assert parse_url("plain/path.db") == ("sqlite", "plain/path.db")
    assert parse_url("postgresql://u:p@h:1/db") == ("postgresql", "postgresql://u:p@h:1/db")
    assert parse_url("postgres://h/db") == ("postgresql", "postgres://h/db")


@pytest.mark.parametrize(
    "url,match",
    [
        ("mysql://host/db", "'mysql'"),
        ("mysql://u:pw@host/db", r"u:\*\*\*@host"),
        ("sqlite://", "'sqlite://'"),
        ("sqlite:///:memory:", "memory"),
        ("", "''"),
    ],
)
def test_bad_urls(url, match):
    with pytest.raises(ValueError, match=match):
        parse_url(url)


def test_wal_and_tables(tmp_path):
    store = SQLiteStorage(str(tmp_path / "s.db"))
    store.create_study("st", {}, seed=7)
    store.close()
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
    time.sleep(0.01)  # creation times come from the database clock (SQLite: millisecond resolution)
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
    for step in (0, 10, 20):
        store.report("st", t.index, "w", step, {"loss": float(step)}, None, None)
    store.report("st", t.index, "w", 20, {"acc": 0.5}, None, None)  # same step, another name: kept
    assert store.metrics("st", t.index) == [(0, {"loss": 0.0}), (10, {"loss": 10.0}), (20, {"loss": 20.0, "acc": 0.5})]
    # a report at an earlier step (a resumed trial) drops the later points: no duplicates in curves
    store.report("st", t.index, "w", 10, {"loss": -1.0}, None, None)
    assert store.metrics("st", t.index) == [(0, {"loss": 0.0}), (10, {"loss": -1.0})]


def test_stale_trial_is_requeued_and_rerun(store):
    t = store.claim_trial("st", "dead", 3, 60.0, params_for)
    store.report("st", t.index, "dead", 0, {"loss": 3.0}, 3.0, 0)
    # Not stale yet with a long timeout: the next claim takes a new index.
    assert store.claim_trial("st", "alive", 3, 60.0, params_for).index == 1
    time.sleep(0.05)
    again = store.claim_trial("st", "alive", 3, 0.01, params_for)
    assert again.index == 0 and again.worker == "alive" and again.attempts == 2
    # metrics, score and best step are kept (a trial may resume from a checkpoint)
    assert again.score == 3.0 and again.best_step == 0 and store.metrics("st", 0) == [(0, {"loss": 3.0})]
    assert "dead" in store.trials("st")[0].error
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


def test_waits_for_a_lock_held_by_another_process(tmp_path):
    path = str(tmp_path / "l.db")
    s = SQLiteStorage(path, lock_timeout=30.0)
    s.create_study("a", {}, seed=0)
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    released = threading.Event()

    def release() -> None:
        time.sleep(0.3)
        released.set()
        blocker.execute("COMMIT")

    th = threading.Thread(target=release)
    th.start()
    try:
        t = s.claim_trial("a", "w", 1, 60.0, params_for)  # waits out the lock
        assert t is not None and t.index == 0 and released.is_set()
    finally:
        th.join()
        blocker.close()
        s.close()


def test_lock_wait_is_bounded_with_progress_message(tmp_path, capfd, monkeypatch):
    from playbook.tune.storage import sqlite as sqlite_mod

    monkeypatch.setattr(sqlite_mod, "_NOTICE_AFTER", 0.0)  # message at the first wait
    path = str(tmp_path / "l2.db")
    s = SQLiteStorage(path, lock_timeout=0.3)
    s.create_study("a", {}, seed=0)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StorageError, match=r"l2\.db.* is locked by another process.*lock_timeout=0\.3"):
            s.claim_trial("a", "w", 1, 60.0, params_for)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    err = capfd.readouterr().err
    assert "waiting for the lock on" in err and "l2.db" in err
    assert s.trials("a") == []  # nothing was written
    assert s.claim_trial("a", "w", 1, 60.0, params_for).index == 0  # usable afterwards
    s.close()


def test_lock_timeout_default_and_env(tmp_path, monkeypatch):
    from playbook.tune.storage.sqlite import DEFAULT_LOCK_TIMEOUT

    assert DEFAULT_LOCK_TIMEOUT < 60
    assert SQLiteStorage(str(tmp_path / "x.db")).lock_timeout == DEFAULT_LOCK_TIMEOUT
    monkeypatch.setenv("PLAYBOOK_LOCK_TIMEOUT", "2.5")
    assert SQLiteStorage(str(tmp_path / "x.db")).lock_timeout == 2.5
    monkeypatch.setenv("PLAYBOOK_LOCK_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="'soon'"):
        SQLiteStorage(str(tmp_path / "x.db"))
    with pytest.raises(ValueError, match="lock_timeout=0"):
        SQLiteStorage(str(tmp_path / "x.db"), lock_timeout=0)


def test_schema_version_newer_is_refused(tmp_path):
    path = str(tmp_path / "v.db")
    with SQLiteStorage(path) as s:
        s.create_study("a", {}, seed=0)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(StorageError, match="schema version 99.*upgrade playbook"):
        SQLiteStorage(path).list_studies()


def test_corrupt_file_names_path_and_cause(tmp_path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not an sqlite file" * 100)
    with pytest.raises(StorageError, match=r"junk\.db.*file is not a database"):
        SQLiteStorage(str(path)).list_studies()
    assert path.read_bytes() == b"this is not an sqlite file" * 100  # untouched


def test_reads_never_create_the_file(tmp_path):
    path = tmp_path / "sub" / "none.db"
    s = SQLiteStorage(str(path))
    assert s.get_study("x") is None and s.list_studies() == [] and s.trials("x") == []
    assert s.status_counts("x")["pending"] == 0 and s.metrics("x", 0) == []
    assert not path.exists() and not path.parent.exists()
    s.create_study("x", {}, seed=1)  # the first write creates it
    assert path.exists()
    s.close()


def test_opens_a_database_of_the_first_release(tmp_path):
    """tests/tune/data/studies_v1.db was written by the first release (schema version 1): it opens,
    is migrated in place, and claims continue after its existing trials."""
    import shutil

    path = tmp_path / "old.db"
    shutil.copy(Path(__file__).parent / "data" / "studies_v1.db", path)
    s = SQLiteStorage(str(path))
    (rec,) = s.list_studies()
    assert rec.name == "legacy" and rec.seed == 3 and rec.config["num_trials"] == 6
    before = s.trials("legacy")
    assert [t.status for t in before] == ["complete"] * 3 + ["running"]
    assert s.metrics("legacy", 3) == [(5, {"val_error": 0.5})]
    # the running trial of the dead old worker is re-queued and re-claimed with its metrics
    again = s.claim_trial("legacy", "new", 6, 0.0, lambda i: {"i": i})
    assert again.index == 3 and again.attempts == 2 and s.metrics("legacy", 3) == [(5, {"val_error": 0.5})]
    nxt = s.claim_trial("legacy", "new", 6, 60.0, lambda i: {"i": i})
    assert nxt.index == 4 and nxt.params == {"i": 4}  # the counter was migrated from the trials
    s.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "2"
    conn.close()


def test_extend_and_delete_study(store):
    store.create_study("other", {"num_trials": 1}, seed=0)
    t = store.claim_trial("st", "w", 3, 60.0, params_for)
    store.report("st", t.index, "w", 0, {"loss": 1.0}, 1.0, 0)
    assert store.extend_study("st", 5).config["num_trials"] == 5
    assert store.get_study("st").config["num_trials"] == 5
    with pytest.raises(ValueError, match="num_trials=4.*has 5 trials"):
        store.extend_study("st", 4)
    assert store.get_study("st").config["num_trials"] == 5
    with pytest.raises(ValueError, match="'nope'"):
        store.extend_study("nope", 9)
    assert store.delete_study("st") is True and store.delete_study("st") is False
    assert store.get_study("st") is None and store.trials("st") == [] and store.metrics("st", 0) == []
    assert [r.name for r in store.list_studies()] == ["other"]
    # a new study of the same name starts from index 0 again
    store.create_study("st", {}, seed=1)
    assert store.claim_trial("st", "w", 3, 60.0, params_for).index == 0


def test_requeue_stale_running_only(store):
    a = store.claim_trial("st", "w1", 3, 60.0, params_for)
    store.claim_trial("st", "w2", 3, 60.0, params_for)
    assert store.requeue("st", stale_after=3600.0) == []  # both heartbeated just now
    time.sleep(0.05)
    store.heartbeat("st", 1, "w2")
    assert store.requeue("st", stale_after=0.04, reason="stale") == [a.index]
    assert store.requeue("st", stale_after=0.0) == [1]
    with pytest.raises(ValueError, match="stale_after=-1"):
        store.requeue("st", stale_after=-1)
