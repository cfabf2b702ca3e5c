"""`playbook study create | work | requeue | delete`, and storage errors as one line (no traceback)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest

from playbook.tune import Categorical, Real, SearchSpace, Study
from playbook.tune.cli import main

CLI = [sys.executable, "-m", "playbook.tune.cli"]


def space() -> SearchSpace:
    return SearchSpace({
        "opt": Categorical(["adam", "sgd"], role="scientific"),
        "lr": Real(1e-4, 1e-1, scale="log"),
    })


@pytest.fixture()
def space_json(tmp_path):
    path = tmp_path / "space.json"
    path.write_text(json.dumps(space().to_dict()))
    return path


def test_create_from_json_and_yaml(db_url, space_json, tmp_path, capsys):
    import yaml  # installed by the test extra
    assert main(["study", "create", "a", "--space", str(space_json), "--storage", db_url,
                 "--num-trials", "5", "--seed", "3", "--metric", "loss", "--mode", "min"]) == 0
    assert "Created: study a" in capsys.readouterr().out
    s = Study.load("a", db_url)
    assert (s.space, s.num_trials, s.seed, s.metric) == (space(), 5, 3, "loss")
    y = tmp_path / "space.yaml"
    y.write_text(yaml.safe_dump(space().to_dict()))
    assert main(["study", "create", "b", "--space", str(y), "--storage", db_url, "--seed", "1"]) == 0
    assert Study.load("b", db_url).space == space() and Study.load("b", db_url).num_trials == 32
    # again with a larger budget: grows; same: reopens; smaller: error naming both values
    assert main(["study", "create", "a", "--space", str(space_json), "--storage", db_url,
                 "--num-trials", "8", "--seed", "3", "--metric", "loss"]) == 0
    assert "Grew (from 5 trials)" in capsys.readouterr().out and Study.load("a", db_url).num_trials == 8
    assert main(["study", "create", "a", "--space", str(space_json), "--storage", db_url,
                 "--num-trials", "4", "--seed", "3", "--metric", "loss"]) == 1
    assert "num_trials: stored 8, given 4" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content,suffix,match",
    [
        ("{not json", ".json", "not valid JSON"),
        ("[1, 2]", ".json", "must hold a mapping"),
        ('{"params": [{"name": "lr", "type": "real", "lo": 1, "hi": 0.1}]}', ".json", "invalid search space"),
        ("{}", ".txt", "unknown file type '.txt'"),
    ],
)
def test_create_bad_space_file(db_url, tmp_path, capsys, content, suffix, match):
    path = tmp_path / f"space{suffix}"
    path.write_text(content)
    assert main(["study", "create", "x", "--space", str(path), "--storage", db_url]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "studies.db").exists()  # nothing created


def test_work_requeue_delete(db_url, space_json, tmp_path, monkeypatch, capsys):
    (tmp_path / "myobj.py").write_text(
        "def objective(trial):\n    trial.report(0, val_error=trial.params['lr'])\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PLAYBOOK_STORAGE", db_url)
    assert main(["study", "create", "w", "--space", str(space_json), "--num-trials", "4", "--seed", "0"]) == 0
    assert main(["study", "work", "w", "--objective", "myobj:objective", "--quiet"]) == 0
    assert "4 complete of 4" in capsys.readouterr().out
    s = Study.load("w", db_url)
    assert [t.params for t in s.trials()] == space().samples(4, 0)
    # requeue: needs a choice, then re-queues running trials of dead workers
    s.extend(1)
    s._storage.claim_trial("w", "dead:1", 5, 60.0, s.params)
    assert main(["study", "requeue", "w", "--stale-after", "3600"]) == 0
    assert "re-queued 0 running trial(s)" in capsys.readouterr().out
    assert main(["study", "requeue", "w", "--all-running"]) == 0
    assert "re-queued 1 running trial(s): [4]" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        from playbook.tune.cli import build_parser

        build_parser().parse_args(["study", "requeue", "w"])
    assert main(["study", "requeue", "w", "--stale-after", "-3"]) == 2
    # delete needs --yes
    assert main(["study", "delete", "w"]) == 2
    assert "without --yes" in capsys.readouterr().err and Study.load("w", db_url)
    assert main(["study", "delete", "w", "--yes"]) == 0
    with pytest.raises(ValueError, match="No study named 'w'"):
        Study.load("w", db_url)


@pytest.mark.parametrize(
    "objective,match",
    [
        ("nocolon", "use module:function"),
        ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
        ("myobj2:missing", "has no 'missing'"),
    ],
)
def test_work_bad_objective(db_url, space_json, tmp_path, monkeypatch, capsys, objective, match):
    (tmp_path / "myobj2.py").write_text("x = 1\n")
    monkeypatch.chdir(tmp_path)
    main(["study", "create", "w", "--space", str(space_json), "--storage", db_url, "--num-trials", "2"])
    assert main(["study", "work", "w", "--objective", objective, "--storage", db_url]) == 2
    assert match in capsys.readouterr().err
    assert Study.load("w", db_url).trials() == []


def test_storage_errors_are_one_line_without_traceback(tmp_path):
    bad = tmp_path / "corrupt.db"
    bad.write_text("garbage " * 500)
    for args in (["study", "list"], ["study", "show", "x"], ["study", "requeue", "x", "--all-running"],
                 ["study", "delete", "x", "--yes"]):
        out = subprocess.run(CLI + args + ["--storage", f"sqlite:///{bad}"], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
        assert "corrupt.db" in out.stderr and "file is not a database" in out.stderr
    missing = tmp_path / "missing.db"
    out = subprocess.run(CLI + ["study", "work", "x", "--objective", "m:f", "--storage", f"sqlite:///{missing}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr  # the objective is checked first
    out = subprocess.run(CLI + ["study", "requeue", "x", "--all-running", "--storage", f"sqlite:///{missing}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "does not exist (it was not created)" in out.stderr
    assert not missing.exists()


def test_locked_database_cli_gives_up_with_a_message(tmp_path, space_json):
    url = f"sqlite:///{tmp_path}/locked.db"
    assert main(["study", "create", "l", "--space", str(space_json), "--storage", url, "--num-trials", "2"]) == 0
    blocker = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        out = subprocess.run(CLI + ["study", "requeue", "l", "--all-running", "--storage", url],
                             capture_output=True, text=True, timeout=120,
                             env={**__import__("os").environ, "PLAYBOOK_LOCK_TIMEOUT": "0.5"})
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "locked.db' is locked by another process" in out.stderr and "lock_timeout=0.5" in out.stderr
