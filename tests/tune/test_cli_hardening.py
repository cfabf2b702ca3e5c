"""The CLI on real studies (issue 7, items 11 and 15): errors of failed trials in ``study show``,
a closed pipe is not a traceback, ``study list`` fits the terminal and qualifies branch keys."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from playbook import tune
from playbook.tune import cli
from playbook.tune import storage as storage_mod

REPO = Path(__file__).resolve().parents[2]


def objective(trial) -> None:
    if trial.index == 2:
        raise KeyError("no column 'val_acc' in the eval output")
    if trial.index == 3:
        trial.report(0, val_error=float("nan"))
    trial.report(0, val_error=trial.params["lr"])


@pytest.fixture()
def storage(tmp_path) -> str:
    url = f"sqlite:///{tmp_path}/s.db"
    space = tune.SearchSpace({
        "optimizer": tune.Categorical(["adam", "sgd"], role="scientific"),
        "lr": tune.Real(1e-4, 1e-1, scale="log"),
    })
    study = tune.Study.create("fails", space, storage=url, seed=0, num_trials=6,
                              notes="a long note " * 10)
    study.run(objective, progress=False)
    yield url
    storage_mod.close_all()


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_show_has_error_column_and_trial_traceback(storage, capsys, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    code, out, _ = run(capsys, "study", "show", "fails", "--storage", storage)
    assert code == 0
    header = next(line for line in out.splitlines() if line.startswith("index"))
    assert "attempts" in header and "duration" in header and header.rstrip().endswith("error")
    row2 = next(line for line in out.splitlines() if line.startswith("2 "))
    assert "failed" in row2 and "KeyError: \"no column 'val_acc' in the eval output\"" in row2
    row3 = next(line for line in out.splitlines() if line.startswith("3 "))
    assert "infeasible" in row3 and "non-finite val_error=nan at step 0" in row3
    assert f"Tracebacks: playbook study show fails --storage {storage} --trial INDEX" in out

    code, out, _ = run(capsys, "study", "show", "fails", "--storage", storage, "--trial", "2")
    assert code == 0
    assert out.startswith("Trial 2 of study fails: failed")
    assert "Error: KeyError: \"no column 'val_acc' in the eval output\"" in out
    assert "Traceback (most recent call last)" in out and "in objective" in out
    assert "attempts: 1" in out

    code, _, err = run(capsys, "study", "show", "fails", "--storage", storage, "--trial", "99")
    assert code == 2 and "no stored trial 99" in err


def test_closed_pipe_is_not_a_traceback(storage):
    read_end, write_end = os.pipe()
    os.close(read_end)  # like `| head` that already exited: every write fails with EPIPE
    env = dict(os.environ, PYTHONPATH=str(REPO / "python"))
    proc = subprocess.run(
        [sys.executable, "-m", "playbook.tune.cli", "study", "show", "fails", "--storage", storage],
        stdout=write_end, stderr=subprocess.PIPE, text=True, env=env, timeout=120,
    )
    os.close(write_end)
    assert proc.stderr == ""
    assert proc.returncode == 141


def test_show_piped_into_head(storage):
    env = dict(os.environ, PYTHONPATH=str(REPO / "python"))
    cmd = f"{sys.executable} -m playbook.tune.cli study show fails --storage {storage} | head -n 1"
    proc = subprocess.run(cmd, shell=True, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0
    assert proc.stdout.startswith("Study fails")
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr


def test_list_fits_the_terminal_width(storage, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = run(capsys, "study", "list", "--storage", storage)
    assert code == 0
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80, out
    assert lines[0].split()[:6] == ["name", "config", "notes", "trials", "best", "reproduce"]
    assert "..." in lines[2] and "6/6" in lines[2]


def test_list_qualifies_branch_keys(tmp_path, capsys, monkeypatch):
    url = f"sqlite:///{tmp_path}/b.db"
    space = tune.SearchSpace({
        "optimizer": tune.Categorical(["adam", "sgd"], role="scientific", branches={
            "adam": {"lr": tune.Real(1e-4, 1e-2, scale="log")},
            "sgd": {"lr": tune.Real(1e-3, 1.0, scale="log")},
        }),
    })
    tune.Study.create("branches", space, storage=url, seed=0, num_trials=2)
    monkeypatch.setenv("COLUMNS", "300")
    code, out, _ = run(capsys, "study", "list", "--storage", url)
    assert code == 0
    assert "3 params: optimizer,optimizer=adam/lr,optimizer=sgd/lr" in out
    assert len(out.splitlines()[2]) <= 300
