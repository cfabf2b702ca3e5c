"""A study run that never fails silently (issue 7, items 7-11, 16): bad objective return values,
the 3-deaths limit, scripts without the ``__main__`` guard, SIGTERM, the progress output and
failed trials announced during the run. Real worker processes and real signals throughout."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from playbook.tune import Real, SearchSpace, Study, Trial
from playbook.tune.trial import as_number

REPO = Path(__file__).resolve().parents[2]


def small_space() -> SearchSpace:
    return SearchSpace({"lr": Real(1e-4, 1e-1, scale="log")})


# ---------------------------------------------------------------------------------------------
# objectives (module level: spawned workers unpickle them)
# ---------------------------------------------------------------------------------------------


def returns_none_value(trial: Trial):
    if trial.index == 1:
        return {"val_error": None}
    return {"val_error": 0.1 * trial.index}


def returns_bad_values(trial: Trial):
    import torch

    i = trial.index
    if i == 0:
        return {"val_error": 0.3, "extra": [1, 2]}
    if i == 1:
        return {"val_error": "0.3"}
    if i == 2:
        return "0.3"
    if i == 3:
        return torch.tensor([0.3, 0.4])
    if i == 4:
        return {"val_error": torch.tensor(0.25), "acc": np.float32(0.5), "steps": np.int64(7)}
    if i == 5:
        return np.float32(0.125)
    return torch.tensor(0.5, dtype=torch.float64)


def exits_in_trial_0(trial: Trial):
    if trial.index == 0:
        sys.exit(3)
    return 0.5


def fails_in_odd_trials(trial: Trial):
    if trial.index % 2:
        raise KeyError(f"no such column in trial {trial.index}")
    return 0.1


def sleepy(trial: Trial):
    time.sleep(0.05)
    return float(trial.index)


# ---------------------------------------------------------------------------------------------
# item 7: numbers only, everywhere
# ---------------------------------------------------------------------------------------------


def test_as_number_accepts_scalars_and_refuses_the_rest():
    import torch

    assert as_number("m", 3) == 3 and as_number("m", 0.5) == 0.5
    assert as_number("m", np.float32(0.5)) == 0.5 and isinstance(as_number("m", np.int64(2)), int)
    assert as_number("m", np.array(0.25)) == 0.25
    assert as_number("m", torch.tensor(0.75)) == 0.75
    assert as_number("m", torch.tensor(4)) == 4
    for bad, pattern in [
        (None, r"m=None is not a number \(NoneType\)"),
        ("0.3", r"m='0.3' is not a number \(str\)"),
        ([1, 2], r"m=\[1, 2\] is not a number \(list\)"),
        (True, r"m=True is not a number \(bool\)"),
        (1 + 2j, r"is not a number \(complex\)"),
        (torch.tensor([0.3, 0.4]), r"shape \(2,\)"),
        (np.zeros((1, 1)), r"shape \(1, 1\)"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            as_number("m", bad)


def test_report_and_complete_refuse_strings_and_change_nothing():
    import torch

    t = Trial(index=0, params={}, study_name="s", metric="val_error", mode="min", storage=None, worker="w")
    with pytest.raises(ValueError, match=r"val_error='0.3' is not a number"):
        t.report(0, val_error="0.3")
    assert t.score is None and t._last_step is None
    with pytest.raises(ValueError, match=r"acc=None is not a number"):
        t.complete(val_error=0.2, acc=None)
    assert t.status == "running" and t.final == {} and t.score is None
    t.report(1, val_error=torch.tensor(0.4), train_loss=np.float32(1.5))
    assert t.score == pytest.approx(0.4) and t.best_step == 1
    t.complete(val_error=np.float64(0.3), steps=torch.tensor(10))
    assert t.status == "complete" and t.score == pytest.approx(0.3) and t.final["steps"] == 10


@pytest.mark.parametrize("n_workers", [1, 2])
def test_dict_with_none_marks_the_trial_failed_once(db_url, n_workers, capfd):
    study = Study.create("none", small_space(), storage=db_url, seed=0, num_trials=4)
    study.run(returns_none_value, n_workers=n_workers, progress=False)
    by = {t.index: t for t in study.trials()}
    assert [by[i].status for i in range(4)] == ["complete", "failed", "complete", "complete"]
    assert by[1].attempts == 1
    assert "val_error=None is not a number" in by[1].error
    assert "requeued" not in by[1].error
    # a second run does nothing: the failed trial is not retried or re-counted
    study.run(returns_none_value, n_workers=n_workers, progress=False)
    assert study.trial(1).attempts == 1
    assert "Traceback" not in capfd.readouterr().err


def test_bad_return_values_fail_with_the_key_and_value(db_url):
    study = Study.create("bad", small_space(), storage=db_url, seed=0, num_trials=7)
    study.run(returns_bad_values, n_workers=1, progress=False)
    by = {t.index: t for t in study.trials()}
    assert by[0].status == "failed" and "extra=[1, 2] is not a number (list)" in by[0].error
    assert by[1].status == "failed" and "val_error='0.3' is not a number (str)" in by[1].error
    assert by[2].status == "failed" and "returned '0.3' (str)" in by[2].error
    assert by[3].status == "failed" and "tensor([0.3000, 0.4000])" in by[3].error
    assert by[4].status == "complete" and by[4].score == pytest.approx(0.25)
    assert by[4].final == {"val_error": pytest.approx(0.25), "acc": 0.5, "steps": 7}
    assert by[5].status == "complete" and by[5].score == 0.125
    assert by[6].status == "complete" and by[6].score == 0.5
    assert all(t.attempts == 1 for t in by.values())


def test_three_deaths_limit_with_worker_processes(db_url):
    study = Study.create("exits", small_space(), storage=db_url, seed=0, num_trials=3)
    study.run(exits_in_trial_0, n_workers=2, progress=False)
    t0 = study.trial(0)
    assert t0.status == "failed" and t0.attempts == 3
    assert "SystemExit" in t0.error and "gave up after 3 attempts" in t0.error
    assert [t.status for t in study.trials()[1:]] == ["complete", "complete"]


def test_three_deaths_limit_in_process(db_url):
    study = Study.create("exits1", small_space(), storage=db_url, seed=0, num_trials=3)
    for attempt in (1, 2, 3):
        with pytest.raises(SystemExit):
            study.run(exits_in_trial_0, n_workers=1, progress=False)
        t0 = study.trial(0)
        assert t0.attempts == attempt
        assert t0.status == ("failed" if attempt == 3 else "pending")
    assert "gave up after 3 attempts" in study.trial(0).error
    study.run(exits_in_trial_0, n_workers=1, progress=False)
    assert study.status_counts()["complete"] == 2


CRASH_SCRIPT = """
    import os
    from playbook import tune

    def objective(trial):
        if trial.index == 0:
            os._exit(7)  # dies without a trace: no exception, no clean-up, no supervisor
        return 0.5

    if __name__ == "__main__":
        study = tune.Study.create("crash", tune.SearchSpace({{"lr": tune.Real(0.1, 1.0)}}),
                                  storage={url!r}, seed=0, num_trials=3)
        study.run(objective, n_workers=1, heartbeat_timeout=0.5, progress=False)
"""


@pytest.mark.slow
def test_three_deaths_limit_when_the_calling_process_crashes(tmp_path, db_url):
    path = _script(tmp_path, CRASH_SCRIPT.format(url=db_url))
    for attempt in (1, 2, 3):
        proc = _run_script(path)
        proc.communicate(timeout=300)
        assert proc.returncode == 7
        assert Study.load("crash", db_url).trial(0).attempts == attempt
    proc = _run_script(path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    t0 = Study.load("crash", db_url).trial(0)
    assert t0.status == "failed" and "gave up after 3 attempts" in t0.error
    assert "stopped heartbeating" in t0.error
    assert Study.load("crash", db_url).status_counts()["complete"] == 2


# ---------------------------------------------------------------------------------------------
# items 8 and 9: scripts, real processes, real signals
# ---------------------------------------------------------------------------------------------


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "study_script.py"
    path.write_text(textwrap.dedent(body))
    return path


def _run_script(path: Path, *args: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO / "python") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, str(path), *args], cwd=path.parent, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_script_without_main_guard_raises_one_clear_error(tmp_path, db_url):
    path = _script(tmp_path, f"""
        from playbook import tune

        def objective(trial):
            return trial.params["lr"]

        study = tune.Study.create("noguard", tune.SearchSpace({{"lr": tune.Real(0.1, 1.0)}}),
                                  storage={db_url!r}, seed=0, num_trials=4)
        study.run(objective, n_workers=2, progress=False)
        print("DONE")
    """)
    proc = _run_script(path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    assert "DONE" not in out
    assert 'if __name__ == "__main__":' in err
    assert "before it could start" in err  # the parent's error, after the workers' own
    assert err.count("Traceback") <= 3  # at most one per worker plus the parent's
    study = Study.load("noguard", db_url)
    assert study.status_counts()["running"] == 0


SLOW_SCRIPT = """
    import sys, time
    from playbook import tune

    def objective(trial):
        for step in range(600):
            trial.report(step, val_error=1.0)
            time.sleep(0.1)

    if __name__ == "__main__":
        study = tune.Study.create("slow", tune.SearchSpace({{"lr": tune.Real(0.1, 1.0)}}),
                                  storage={url!r}, seed=0, num_trials=8)
        study.run(objective, n_workers=int(sys.argv[1]), progress=True)
        print("DONE")
"""


def _wait_running(url: str, n: int, proc: subprocess.Popen) -> list:
    for _ in range(1200):
        assert proc.poll() is None, proc.communicate()
        try:
            trials = [t for t in Study.load("slow", url).trials() if t.status == "running"]
        except ValueError:  # not created yet
            trials = []
        if len(trials) >= n:
            return trials
        time.sleep(0.1)
    raise AssertionError(f"never saw {n} running trials")


def _alive(pid: int) -> bool:
    """Running (a zombie left to a PID 1 that does not reap counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


@pytest.mark.slow
@pytest.mark.parametrize("n_workers", [1, 2])
def test_sigterm_stops_workers_requeues_and_exits_nonzero(tmp_path, db_url, n_workers):
    path = _script(tmp_path, SLOW_SCRIPT.format(url=db_url))
    proc = _run_script(path, str(n_workers))
    running = _wait_running(db_url, n_workers, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "DONE" not in out
    assert "stopped by SIGTERM" in err
    pids = {int(t.worker.rsplit(":", 1)[1]) for t in running}
    if n_workers > 1:
        assert proc.pid not in pids
        assert not any(_alive(pid) for pid in pids)  # no orphan finishes the study
    trials = Study.load("slow", db_url).trials()
    assert [t.status for t in trials] == ["pending"] * len(trials)
    assert all("interrupted" in t.error for t in trials)


# ---------------------------------------------------------------------------------------------
# items 10 (progress line), 11 (failures visible), 16 (progress bar)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_workers", [1, 2])
def test_failed_trials_are_announced_once_with_the_way_to_the_traceback(db_url, capfd, n_workers):
    study = Study.create("fails", small_space(), storage=db_url, seed=0, num_trials=4)
    study.run(fails_in_odd_trials, n_workers=n_workers, progress=True)
    err = capfd.readouterr().err
    for i in (1, 3):
        line = f"[fails] trial {i} failed: KeyError: 'no such column in trial {i}' (traceback: " \
               f"playbook study show fails --storage {db_url} --trial {i})"
        assert err.count(line) == 1, err
    assert "trial 0 failed" not in err and "Traceback" not in err
    assert "[fails] 4/4 trials (2 failed)" in err


def test_progress_counts_live_workers_and_says_why_it_waits(tmp_path, db_url, capfd):
    # A real process claims trial 0 and is SIGKILLed: its trial stays "running" in storage.
    path = _script(tmp_path, SLOW_SCRIPT.format(url=db_url))
    proc = _run_script(path, "1")
    _wait_running(db_url, 1, proc)
    proc.kill()
    proc.communicate(timeout=60)
    study = Study.load("slow", db_url)
    assert study.status_counts()["running"] == 1
    capfd.readouterr()
    study.run(sleepy, n_workers=1, heartbeat_timeout=2.0, progress=True)
    err = capfd.readouterr().err
    assert "waiting for trial(s) 0 of dead workers: re-queued once silent for 2 s (heartbeat_timeout)" in err
    assert "2 running" not in err
    assert study.is_finished and all(t.status == "complete" for t in study.trials())


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal_and_lines_otherwise(db_url, monkeypatch):
    study = Study.create("bar", small_space(), storage=db_url, seed=0, num_trials=6)
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    study.run(fails_in_odd_trials, n_workers=1, progress=True)
    text = term.getvalue()
    assert re.search(r"bar: +100%\|[^|]+\| 6/6 \[\d\d:\d\d<\d\d:\d\d", text), text
    assert "trial 1 failed: KeyError" in text  # printed above the bar
    plain = io.StringIO()
    monkeypatch.setattr(sys, "stderr", plain)
    study2 = Study.create("lines", small_space(), storage=db_url, seed=0, num_trials=2)
    study2.run(sleepy, n_workers=1, progress=True)
    lines = plain.getvalue().splitlines()
    assert lines[-1] == "[lines] 2/2 trials best val_error=0 (trial 0)"
    assert "%|" not in plain.getvalue() and "\r" not in plain.getvalue()


QUICK_SCRIPT = """
    import time
    from playbook import tune

    def objective(trial):
        time.sleep(0.2)
        trial.report(0, val_error=float(trial.index))

    if __name__ == "__main__":
        study = tune.Study.create("quick", tune.SearchSpace({{"lr": tune.Real(0.1, 1.0)}}),
                                  storage={url!r}, seed=0, num_trials=200)
        study.run(objective, n_workers=2, progress=False)
"""


@pytest.mark.slow
def test_workers_stop_claiming_when_the_main_process_is_killed(tmp_path, db_url):
    path = _script(tmp_path, QUICK_SCRIPT.format(url=db_url))
    proc = _run_script(path)
    for _ in range(1200):
        assert proc.poll() is None
        try:
            trials = Study.load("quick", db_url).trials()
        except ValueError:
            trials = []
        if sum(t.status == "complete" for t in trials) >= 2 and sum(t.status == "running" for t in trials) == 2:
            break
        time.sleep(0.1)
    pids = {int(t.worker.rsplit(":", 1)[1]) for t in trials if t.status == "running"}
    proc.kill()  # SIGKILL: no clean-up in the main process
    proc.communicate(timeout=60)
    for _ in range(600):  # the orphans finish their current trial, then exit
        if not any(_alive(pid) for pid in pids):
            break
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids)
    study = Study.load("quick", db_url)
    assert not study.is_finished and study.status_counts()["running"] == 0
