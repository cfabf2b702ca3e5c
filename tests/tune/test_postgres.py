"""PostgreSQL storage against a real server (pgserver): many workers, kills, a server restart, two
independent ``playbook study work`` process trees, and every connection error a user can meet."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from playbook.tune import Int, Real, SearchSpace, Study, Trial
from playbook.tune.storage import PostgresStorage, StorageError, open_storage

CLI = [sys.executable, "-m", "playbook.tune.cli"]


def space() -> SearchSpace:
    return SearchSpace({"lr": Real(1e-4, 1e-1, scale="log"), "width": Int(16, 256, scale="log")})


def fast_objective(trial: Trial) -> None:
    trial.report(0, val_error=trial.params["lr"], train_loss=1.0)
    trial.report(1, val_error=trial.params["lr"] / 2)


def steady_objective(trial: Trial) -> None:
    for step in range(3):
        time.sleep(0.02)
        trial.report(step, val_error=trial.params["lr"] / (step + 1))


def hang_once(marker_dir: str, index: int, trial: Trial) -> None:
    """Trial ``index`` hangs (until killed) the first time it runs; the others are fast."""
    marker = Path(marker_dir)
    if trial.index == index and not (marker / "killed").exists():
        trial.report(0, val_error=1.0)
        tmp = marker / f".pid-{trial.index}.tmp"  # whole or absent: the test reads it as soon as it exists
        tmp.write_text(str(os.getpid()))
        os.replace(tmp, marker / f"pid-{trial.index}")
        time.sleep(120)
    trial.report(1, val_error=trial.params["lr"])


def _wait_for(path: Path, proc: subprocess.Popen | None = None, limit: float = 120.0) -> None:
    deadline = time.time() + limit
    while not path.exists():
        assert proc is None or proc.poll() is None, "the process exited early"
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def _assert_all_complete_once(study: Study, n: int) -> None:
    trials = study.trials()
    assert [t.index for t in trials] == list(range(n))  # nothing lost, no duplicate index
    assert [t.status for t in trials] == ["complete"] * n
    assert [t.params for t in trials] == study.space.samples(n, study.seed)


@pytest.mark.slow
def test_eight_workers_two_hundred_trials(pg_url, tmp_path):
    s = Study.create("many", space(), pg_url, seed=0, num_trials=200)
    s.run(fast_objective, n_workers=8, progress=False)
    _assert_all_complete_once(s, 200)
    trials = s.trials()
    assert all(t.attempts == 1 for t in trials)
    ref = Study.create("many", space(), f"sqlite:///{tmp_path}/ref.db", seed=0, num_trials=200)
    ref.run(fast_objective, n_workers=1, progress=False)
    assert [t.params for t in trials] == [t.params for t in ref.trials()]
    assert [t.score for t in trials] == [t.score for t in ref.trials()]
    for t in trials:  # every curve complete, no duplicate points
        assert s.metrics(t.index) == [(0, {"train_loss": 1.0, "val_error": t.params["lr"]}),
                                      (1, {"val_error": t.params["lr"] / 2})]
    workers = Counter(t.worker for t in trials)
    assert len(workers) > 1 and all(w.split(":")[-1] != str(os.getpid()) for w in workers)


@pytest.mark.slow
def test_sigkilled_worker_trial_is_requeued_and_finished(pg_url, tmp_path):
    s = Study.create("kill", space(), pg_url, seed=0, num_trials=8)
    objective = functools.partial(hang_once, str(tmp_path), 3)
    runner = threading.Thread(target=s.run, args=(objective,),
                              kwargs=dict(n_workers=2, progress=False, heartbeat_timeout=1.0))
    runner.start()
    _wait_for(tmp_path / "pid-3")
    pid = int((tmp_path / "pid-3").read_text())
    (tmp_path / "killed").write_text("yes")
    os.kill(pid, signal.SIGKILL)
    runner.join(timeout=120)
    assert not runner.is_alive()
    _assert_all_complete_once(s, 8)
    trials = s.trials()
    assert trials[3].attempts == 2 and not trials[3].worker.endswith(f":{pid}")
    assert all(t.attempts == 1 for t in trials if t.index != 3)
    # the killed attempt's step-0 point was kept, the re-run added step 1
    assert s.metrics(3) == [(0, {"val_error": 1.0}), (1, {"val_error": trials[3].params["lr"]})]


@pytest.mark.slow
def test_server_restart_mid_study(pg_server, pg_url, capfd):
    s = Study.create("restart", space(), pg_url, seed=0, num_trials=60)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            s.run(steady_objective, n_workers=2, progress=False)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    probe = PostgresStorage(pg_url)
    deadline = time.time() + 120
    while probe.status_counts("restart")["complete"] < 5:
        assert time.time() < deadline and runner.is_alive()
        time.sleep(0.05)
    probe.close()
    pg_server.stop()
    time.sleep(1.0)  # workers lose their connections and keep retrying
    pg_server.start()
    runner.join(timeout=180)
    assert not runner.is_alive() and errors == []
    _assert_all_complete_once(s, 60)
    for t in s.trials():  # nothing lost or duplicated in the curves either
        assert [step for step, _ in s.metrics(t.index)] == [0, 1, 2]
    err = capfd.readouterr().err
    assert "lost the connection to" in err and "reconnected to" in err


def test_connection_loss_is_retried_then_a_clear_error(pg_server, pg_url, capfd):
    store = PostgresStorage(pg_url, retry_timeout=0.5)
    store.create_study("x", {"num_trials": 1}, seed=0)
    pg_server.stop()
    try:
        with pytest.raises(StorageError, match=r"Lost the connection .* could not reconnect within 0\.5 s"):
            store.list_studies()
    finally:
        pg_server.start()
    assert [r.name for r in store.list_studies()] == ["x"]  # usable again
    assert "reconnecting for up to 0.5 s" in capfd.readouterr().err
    store.close()


def test_two_nodes_share_one_study(pg_url, tmp_path):
    """Two independent process trees (`playbook study work` on two "nodes") on one study."""
    s = Study.create("nodes", space(), pg_url, seed=5, num_trials=40)
    (tmp_path / "nodeobj.py").write_text(
        "import os, time\n"
        "def objective(trial):\n"
        "    time.sleep(0.02)\n"
        "    trial.report(0, val_error=trial.params['lr'])\n"
        "    trial.complete(node=int(os.environ['NODE']))\n"  # final values are numbers
    )
    procs = []
    for node in ("0", "1"):
        env = dict(os.environ, NODE=node, PLAYBOOK_STORAGE=pg_url)
        procs.append(subprocess.Popen(
            CLI + ["study", "work", "nodes", "--objective", "nodeobj:objective", "--workers", "2", "--quiet"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True))
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    _assert_all_complete_once(s, 40)
    trials = s.trials()
    assert all(t.attempts == 1 and t.final["node"] in (0, 1) for t in trials)
    assert all("40 complete of 40" in out for out, _ in outs)


@pytest.mark.slow
def test_cli_requeue_after_killing_a_whole_node(pg_url, tmp_path):
    s = Study.create("job", space(), pg_url, seed=1, num_trials=6)
    (tmp_path / "jobobj.py").write_text(
        "import functools, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_postgres import hang_once\n"
        f"objective = functools.partial(hang_once, {str(tmp_path)!r}, 2)\n"
    )
    env = dict(os.environ, PLAYBOOK_STORAGE=pg_url)
    cmd = CLI + ["study", "work", "job", "--objective", "jobobj:objective", "--workers", "2", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True)
    try:
        _wait_for(tmp_path / "pid-2", proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole node: manager and workers
        proc.wait(timeout=60)
    (tmp_path / "killed").write_text("yes")
    running = [t.index for t in s.trials() if t.status == "running"]
    assert 2 in running
    out = subprocess.run(CLI + ["study", "requeue", "job", "--all-running"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and f"re-queued {len(running)} running trial(s): {running}" in out.stdout
    assert s.status_counts()["running"] == 0
    # the next work run does not wait for heartbeats (timeout 600 s) to re-run them
    out = subprocess.run(cmd + ["--heartbeat-timeout", "600"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    _assert_all_complete_once(s, 6)
    assert s.trial(2).attempts == 2


# ---------------------------------------------------------------------------------------------
# bad URLs and connection errors: one clear error each, password masked
# ---------------------------------------------------------------------------------------------


def _cli_error(args: list[str], url: str) -> str:
    out = subprocess.run(CLI + args + ["--storage", url], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out
    assert "Traceback" not in out.stderr and out.stderr.startswith("playbook: error: ")
    assert len(out.stderr.strip().splitlines()) == 1
    return out.stderr


def test_wrong_password(pg_server):
    url = pg_server.url("postgres", user="tuner", password="hunter2")
    with pytest.raises(StorageError, match=r"'postgresql://tuner:\*\*\*@/postgres.*password authentication failed.*password"):
        open_storage(url).list_studies()
    err = _cli_error(["study", "list"], url)
    assert "tuner:***@" in err and "hunter2" not in err and "password authentication failed" in err
    # the right password works
    ok = PostgresStorage(pg_server.url("postgres", user="tuner", password="s3cret"))
    assert ok.get_study("nope") is None
    ok.close()


def test_server_not_running(tmp_path):
    url = f"postgresql://tuner:pw@/postgres?host={tmp_path}"
    with pytest.raises(StorageError, match=r"tuner:\*\*\*@.*Is the server running"):
        PostgresStorage(url).list_studies()
    err = _cli_error(["study", "show", "x"], url)
    assert "Is the server running" in err and ":pw@" not in err


def test_missing_database(pg_server):
    url = pg_server.url("nosuchdb")
    with pytest.raises(StorageError, match=r"nosuchdb.*does not exist.*createdb"):
        PostgresStorage(url).list_studies()


def test_no_schema_and_no_right_to_create_it(pg_server, pg_url, tmp_path):
    database = pg_url.split("/")[3].split("?")[0]
    url = pg_server.url(database, user="reader", password=None)
    reader = PostgresStorage(url)
    assert reader.list_studies() == [] and reader.get_study("x") is None  # reads create nothing
    assert pg_server.sql("SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public'", database) == [(0,)]
    with pytest.raises(StorageError, match=r"no playbook tables .* user 'reader' may not create them.*GRANT CREATE"):
        reader.create_study("x", {}, seed=0)
    reader.close()
    (tmp_path / "space.json").write_text(json.dumps(space().to_dict()))
    _cli_error(["study", "create", "x", "--space", str(tmp_path / "space.json")], url)
    # once created by a user with rights, the reader can use it
    open_storage(pg_url).list_studies()
    pg_server.sql("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO reader", database)
    assert PostgresStorage(url).list_studies() == []


def test_unknown_scheme_cli():
    err = _cli_error(["study", "list"], "mysql://root:topsecret@db/studies")
    assert "'mysql'" in err and "root:***@db" in err and "topsecret" not in err


def test_missing_driver_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if psycopg were not installed
    with pytest.raises(ImportError, match=r"playbook\[postgres\]"):
        PostgresStorage("postgresql://u@h/db")


def test_schema_migrates_from_version_1(pg_server, pg_url):
    """A PostgreSQL database with the first schema version (no studies.next_index) is upgraded."""
    store = PostgresStorage(pg_url)
    store.create_study("old", {"num_trials": 5}, seed=0)
    for i in range(2):
        store.claim_trial("old", "w", 5, 60.0, lambda i: {"i": i})
    store.close()
    database = pg_url.split("/")[3].split("?")[0]
    pg_server.sql("ALTER TABLE studies DROP COLUMN next_index", database)
    pg_server.sql("UPDATE meta SET value = '1' WHERE key = 'schema_version'", database)
    store = PostgresStorage(pg_url)
    assert store.claim_trial("old", "w", 5, 60.0, lambda i: {"i": i}).index == 2
    assert pg_server.sql("SELECT value FROM meta", database) == [("2",)]
    store.close()


def _create_in_process(url: str) -> tuple[int, int]:
    s = Study.create("race", space(), url, seed=None, num_trials=10)
    return s.seed, s.num_trials


def test_concurrent_creation_is_race_free(pg_url):
    """Six processes create the same study at once, each drawing its own seed: one insert wins and
    every process opens that study (seed=None accepts the stored seed)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(6, mp_context=mp.get_context("spawn")) as pool:
        results = list(pool.map(_create_in_process, [pg_url] * 6))
    assert len(set(results)) == 1 and results[0][1] == 10
    assert [r.name for r in open_storage(pg_url).list_studies()] == ["race"]


def test_missing_database_cli(pg_server):
    err = _cli_error(["study", "list"], pg_server.url("nosuchdb", user="tuner", password="s3cret"))
    assert "nosuchdb" in err and "does not exist" in err and "s3cret" not in err
