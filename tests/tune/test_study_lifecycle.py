"""Study lifecycle on both backends: grow, re-queue now, delete, config mismatches, loading."""

from __future__ import annotations

import sqlite3
import time

import pytest

from playbook.tune import Categorical, Real, SearchSpace, Study, Trial
from playbook.tune.storage import open_storage


def space(hi: float = 1e-1) -> SearchSpace:
    return SearchSpace({
        "opt": Categorical(["adam", "sgd"], role="scientific", branches={
            "sgd": {"momentum": Real(0.8, 0.99)},
        }),
        "lr": Real(1e-4, hi, scale="log"),
    })


def objective(trial: Trial) -> None:
    trial.report(0, val_error=trial.params["lr"])


def test_study_grows_with_extend_and_create(any_url):
    s = Study.create("g", space(), any_url, seed=0, num_trials=4)
    s.run(objective, progress=False)
    assert s.is_finished and len(s.trials()) == 4
    assert s.extend(3) is s and s.num_trials == 7 and s.config["num_trials"] == 7
    assert Study.load("g", any_url).num_trials == 7 and not s.is_finished
    s.run(objective, progress=False)
    # the grown study is exactly the first 7 points of the sequence, as if created with 7
    assert [t.params for t in s.trials()] == s.space.samples(7, 0)
    # create with a larger budget grows it too; the same budget reopens it
    assert Study.create("g", space(), any_url, seed=0, num_trials=10).num_trials == 10
    assert Study.create("g", space(), any_url, seed=0, num_trials=10).num_trials == 10
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=f"n={bad!r}"):
            s.extend(bad)
    with pytest.raises(ValueError, match=r"num_trials: stored 10, given 9 \(num_trials can grow, never shrink\)"):
        Study.create("g", space(), any_url, seed=0, num_trials=9)
    assert Study.load("g", any_url).num_trials == 10


def test_config_mismatch_names_only_differing_paths(any_url):
    Study.create("c", space(), any_url, seed=0, num_trials=4)
    with pytest.raises(ValueError) as info:
        Study.create("c", space(hi=0.5), any_url, seed=0, num_trials=4, mode="max")
    msg = str(info.value)
    assert "space.params[lr].hi: stored 0.1, given 0.5" in msg and "mode: stored 'min', given 'max'" in msg
    assert "momentum" not in msg and "'adam'" not in msg  # only the differing leaves, not whole dicts
    other = SearchSpace({"opt": Categorical(["adam", "sgd"], role="scientific", branches={
        "sgd": {"momentum": Real(0.8, 0.9)}}), "lr": Real(1e-4, 1e-1, scale="log")})
    with pytest.raises(ValueError, match=r"space\.params\[opt\]\.branches\.sgd\[momentum\]\.hi: stored 0\.99, given 0\.9"):
        Study.create("c", other, any_url, seed=0, num_trials=4)
    # a larger budget together with another difference: refused, nothing grows
    with pytest.raises(ValueError, match=r"differing keys: \['seed', 'num_trials'\]"):
        Study.create("c", space(), any_url, seed=1, num_trials=8)
    assert Study.load("c", any_url).num_trials == 4


def test_requeue_stale_now(any_url):
    s = Study.create("r", space(), any_url, seed=0, num_trials=3)
    store = s._storage
    a = store.claim_trial("r", "dead:1", 3, 3600.0, s.params)
    store.report("r", a.index, "dead:1", 7, {"val_error": 0.3}, 0.3, 7)
    b = store.claim_trial("r", "dead:2", 3, 3600.0, s.params)
    assert s.requeue_stale(older_than=3600) == []
    time.sleep(0.05)
    store.heartbeat("r", b.index, "dead:2")
    assert s.requeue_stale(older_than=0.04) == [a.index]
    assert s.requeue_stale() == [b.index]
    assert s.status_counts()["pending"] == 2
    # the re-queued trial keeps its curve; re-running it counts an attempt
    s.run(objective, progress=False)
    t0 = s.trial(0)
    assert t0.status == "complete" and t0.attempts == 2 and s.metrics(0) == [(0, {"val_error": t0.params["lr"]})]
    with pytest.raises(ValueError, match="older_than=-1"):
        s.requeue_stale(older_than=-1)


def test_delete(any_url):
    s = Study.create("d", space(), any_url, seed=0, num_trials=2)
    keep = Study.create("keep", space(), any_url, seed=0, num_trials=2)
    s.run(objective, progress=False)
    s.delete()
    with pytest.raises(ValueError, match=r"No study named 'd'.*\['keep'\]"):
        Study.load("d", any_url)
    assert keep.trials() == [] and Study.load("keep", any_url) == keep


def test_load_never_creates_a_database(tmp_path):
    path = tmp_path / "nothing.db"
    with pytest.raises(ValueError, match=r"'x'.*nothing\.db' does not exist \(it was not created\)"):
        Study.load("x", f"sqlite:///{path}")
    assert not path.exists()


def test_load_of_a_corrupt_file_names_it(tmp_path):
    from playbook.tune.storage import StorageError

    path = tmp_path / "bad.db"
    path.write_text("not a database " * 200)
    with pytest.raises(StorageError, match=r"bad\.db.*file is not a database"):
        Study.load("x", f"sqlite:///{path}")


def test_resumed_trial_curve_has_no_duplicates(any_url):
    """The storage contract for trials resuming from a checkpoint: a re-queued trial keeps its
    metrics, and a report at step s replaces what was stored at steps >= s (by name at s)."""
    s = Study.create("resume", space(), any_url, seed=0, num_trials=1)
    store = open_storage(any_url)
    t = store.claim_trial("resume", "w1", 1, 60.0, s.params)
    for step in (0, 10, 20, 30):
        store.report("resume", t.index, "w1", step, {"val_error": 1.0 / (step + 1)}, None, None)
    assert s.requeue_stale() == [0]
    again = store.claim_trial("resume", "w2", 1, 60.0, s.params)
    assert again.attempts == 2 and [st for st, _ in s.metrics(0)] == [0, 10, 20, 30]
    for step in (20, 30, 40):  # resumed from the checkpoint of step 20
        store.report("resume", 0, "w2", step, {"val_error": 0.5}, None, None)
    assert s.metrics(0) == [(0, {"val_error": 1.0}), (10, {"val_error": 1 / 11}), (20, {"val_error": 0.5}),
                            (30, {"val_error": 0.5}), (40, {"val_error": 0.5})]


def test_sqlite_file_of_the_first_release_runs_on(tmp_path):
    import shutil
    from pathlib import Path

    path = tmp_path / "v1.db"
    shutil.copy(Path(__file__).parent / "data" / "studies_v1.db", path)
    s = Study.load("legacy", f"sqlite:///{path}")
    assert s.num_trials == 6 and s.seed == 3
    assert s.requeue_stale() == [3]
    s.run(objective, progress=False)
    trials = s.trials()
    assert [t.status for t in trials] == ["complete"] * 6 and trials[3].attempts == 2
    assert [t.params for t in trials] == s.space.samples(6, 3)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta").fetchone() == ("2",)
    conn.close()
