"""Studies end to end (playbook 4.5-4.6, 6.2, 7.5, 7.8): create/load, run with workers,
failure handling, retrospective scores, killed workers, resuming, study designs."""

from __future__ import annotations

import functools
import math
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from playbook import tune
from playbook.tune import Categorical, Fixed, Int, Real, SearchSpace, Study, Trial

# ---------------------------------------------------------------------------------------------
# objectives: module level so that spawned worker processes can unpickle them
# ---------------------------------------------------------------------------------------------


def space() -> SearchSpace:
    return SearchSpace({
        "optimizer": Categorical(["adam", "nesterov"], role="scientific"),
        "lr": Real(1e-4, 1e-1, scale="log"),
        "weight_decay": Real(1e-6, 1e-2, scale="log"),
        "layers": Int(1, 4),
        "dropout": Fixed(0.1),
    })


def curve_objective(trial: Trial) -> None:
    """Deterministic curves with a minimum in the middle of training (retrospective score)."""
    lr = trial.params["lr"]
    base = (math.log10(lr) + 2.0) ** 2
    for step in range(0, 50, 10):
        trial.report(step, val_error=base + abs(step - 20) / 100.0, train_loss=base + 1.0 / (step + 1))


def mixed_objective(trial: Trial):
    """Exercises every way a trial can end."""
    i = trial.index
    if i == 0:
        raise RuntimeError("boom in trial 0")
    if i == 1:
        trial.report(0, val_error=0.5)
        trial.report(1, val_error=float("nan"))  # diverged: infeasible
        raise AssertionError("not reached")
    if i == 2:
        trial.report(0, val_error=0.5, train_loss=float("inf"))
    if i == 3:
        trial.infeasible("violated a memory constraint")
        return None
    if i == 4:
        trial.report(0, val_error=0.9)
        trial.complete(val_error=0.2, test_error=0.25)  # final value counts in the score
        return None
    if i == 5:
        return 0.7  # a returned number is the metric
    if i == 6:
        return {"val_error": 0.6, "extra": 3}
    if i == 7:
        trial.report(3, other=1.0)  # never reports the metric: failed with a message
        return None
    trial.report(0, val_error=1.0 + i)
    trial.report(5, val_error=0.5 + i)
    trial.report(9, val_error=0.8 + i)
    return None


def sleepy_objective(trial: Trial) -> None:
    time.sleep(0.05)
    trial.report(0, val_error=float(trial.index))


def hang_on_first_attempt(marker_dir: str, index: int, trial: Trial) -> None:
    """Trial ``index`` hangs (until killed) the first time it runs; the others are fast."""
    marker = Path(marker_dir)
    if trial.index == index and not (marker / "killed").exists():
        tmp = marker / f".pid-{trial.index}.tmp"  # whole or absent: the test reads it as soon as it exists
        tmp.write_text(str(os.getpid()))
        os.replace(tmp, marker / f"pid-{trial.index}")
        time.sleep(60)
    trial.report(0, val_error=float(trial.index))


def fast_objective(trial: Trial) -> None:
    trial.report(0, val_error=float(trial.index), train_loss=1.0)
    trial.report(1, val_error=float(trial.index) / 2)


def _create(db_url: str, name: str = "s", **kw) -> Study:
    args = dict(seed=0, num_trials=12, metric="val_error", mode="min")
    args.update(kw)
    return Study.create(name, space(), db_url, **args)


# ---------------------------------------------------------------------------------------------
# create / load
# ---------------------------------------------------------------------------------------------


def test_create_and_load(db_url):
    s = Study.create("wd-vs-optimizer", space(), storage=db_url, seed=0, num_trials=32,
                     metric="val_error", mode="min", notes="first try")
    assert (s.name, s.seed, s.num_trials, s.metric, s.mode, s.notes) == ("wd-vs-optimizer", 0, 32, "val_error", "min", "first try")
    assert s.space == space()
    assert s.storage_url == db_url
    assert s.config["space"] == space().to_dict() and s.config["num_trials"] == 32
    assert s.trials() == []
    loaded = Study.load("wd-vs-optimizer", db_url)
    assert loaded.space == s.space and loaded.seed == 0 and loaded.notes == "first try"
    assert loaded.config == s.config
    # same config (notes and seed=None do not count): opens it
    again = Study.create("wd-vs-optimizer", space(), db_url, seed=None, num_trials=32, metric="val_error",
                         notes="other notes")
    assert again.seed == 0 and again.notes == "first try"
    assert [x.name for x in tune.list_studies(db_url)] == ["wd-vs-optimizer"]
    assert isinstance(tune.list_studies(db_url)[0], Study)
    assert pickle.loads(pickle.dumps(s)) == s


def test_create_with_different_config_names_the_keys(db_url):
    _create(db_url)
    with pytest.raises(ValueError, match=r"differing keys: \['num_trials', 'metric'\]"):
        _create(db_url, num_trials=13, metric="loss")
    other = SearchSpace({"lr": Real(1e-4, 1e-1, scale="log")})
    with pytest.raises(ValueError, match=r"\['space'\]"):
        Study.create("s", other, db_url, seed=0, num_trials=12, metric="val_error")
    with pytest.raises(ValueError, match=r"\['seed'\]"):
        _create(db_url, seed=1)
    with pytest.raises(ValueError, match=r"\['mode'\]"):
        _create(db_url, mode="max")


def test_seed_none_is_drawn_and_stored(db_url):
    s = _create(db_url, name="auto", seed=None)
    assert isinstance(s.seed, int)
    assert Study.load("auto", db_url).seed == s.seed


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"num_trials": 0}, "num_trials=0"),
        ({"mode": "minimize"}, "'minimize'"),
        ({"metric": ""}, "metric=''"),
        ({"seed": -5}, "-5"),
    ],
)
def test_create_validation(db_url, kw, match):
    with pytest.raises(ValueError, match=match):
        _create(db_url, **kw)


def test_load_missing_names_it(db_url):
    _create(db_url, name="exists")
    with pytest.raises(ValueError, match=r"'missing'.*\['exists'\]"):
        Study.load("missing", db_url)


# ---------------------------------------------------------------------------------------------
# running in process
# ---------------------------------------------------------------------------------------------


def test_run_in_process_scores_and_curves(db_url):
    s = _create(db_url, num_trials=6)
    s.run(curve_objective, progress=False)
    trials = s.trials()
    assert [t.index for t in trials] == list(range(6))
    for t in trials:
        assert t.status == "complete" and t.error is None
        assert t.params == s.params(t.index) == s.space.sample(t.index, 0)
        # retrospective selection (playbook 6.2): the best value is mid-training, at step 20
        base = (math.log10(t.params["lr"]) + 2.0) ** 2
        assert t.best_step == 20 and t.score == pytest.approx(base)
        assert t.created <= t.started <= t.finished
        curves = s.metrics(t.index)
        assert [step for step, _ in curves] == [0, 10, 20, 30, 40]
        assert set(curves[0][1]) == {"val_error", "train_loss"}
    best = s.best_trials(k=3)
    assert [b.score for b in best] == sorted(t.score for t in trials)[:3]
    assert s.is_finished


def test_outcomes(db_url):
    s = _create(db_url, num_trials=10)
    s.run(mixed_objective, progress=False)
    by = {t.index: t for t in s.trials()}
    assert by[0].status == "failed" and "RuntimeError: boom in trial 0" in by[0].error
    assert "Traceback" in by[0].error
    assert by[1].status == "infeasible" and "val_error=nan" in by[1].error
    assert by[1].score == 0.5  # the finite reports still count for the curves
    assert by[2].status == "infeasible" and "train_loss=inf" in by[2].error
    assert by[3].status == "infeasible" and by[3].error == "violated a memory constraint"
    assert by[4].status == "complete" and by[4].score == 0.2 and by[4].best_step is None
    assert by[4].final == {"val_error": 0.2, "test_error": 0.25}
    assert by[5].status == "complete" and by[5].score == 0.7
    assert by[6].status == "complete" and by[6].score == 0.6 and by[6].final["extra"] == 3
    assert by[7].status == "failed" and "'val_error'" in by[7].error
    for i in (8, 9):
        assert by[i].status == "complete" and by[i].score == 0.5 + i and by[i].best_step == 5
    assert [t.index for t in s.best_trials(k=10)] == [4, 6, 5, 8, 9]
    assert s.status_counts() == {"pending": 0, "running": 0, "complete": 5, "infeasible": 3, "failed": 2}


def test_mode_max(db_url):
    s = _create(db_url, num_trials=4, mode="max", metric="acc")

    s.run(functools.partial(_report_acc), progress=False)
    best = s.best_trials(k=4)
    assert [b.index for b in best] == [3, 2, 1, 0]
    assert all(b.score == b.index + 0.5 and b.best_step == 1 for b in best)


def _report_acc(trial: Trial) -> None:
    trial.report(0, acc=float(trial.index))
    trial.report(1, acc=trial.index + 0.5)
    trial.report(2, acc=trial.index - 1.0)


def test_running_a_finished_study_does_nothing(db_url):
    s = _create(db_url, num_trials=4)
    s.run(fast_objective, progress=False)
    before = s.trials()
    calls = []
    s.run(lambda t: calls.append(t), progress=False)
    assert calls == [] and s.trials() == before


def test_trial_api_errors():
    t = Trial(index=0, params={}, study_name="x", metric="m", mode="min", storage=None, worker="w")
    with pytest.raises(ValueError, match="'3'"):
        t.report("3", m=1.0)
    with pytest.raises(ValueError, match="at least one metric"):
        t.report(0)
    with pytest.raises(ValueError, match="m='abc'"):
        t.report(0, m="abc")
    t.report(0, m=2.0)
    t.complete()
    assert t.status == "complete" and t.score == 2.0
    with pytest.raises(RuntimeError, match="already complete"):
        t.report(1, m=1.0)


def test_progress_line(db_url, capsys):
    s = _create(db_url, num_trials=5)
    s.run(fast_objective, progress=True)
    err = capsys.readouterr().err
    assert "5/5 trials" in err and "best val_error=0 (trial 0)" in err


def test_timeout_then_resume(db_url):
    s = _create(db_url, num_trials=12)
    s.run(sleepy_objective, timeout=0.2, progress=False)
    done = len(s.trials())
    assert 1 <= done < 12
    s.run(sleepy_objective, progress=False)
    assert [t.status for t in s.trials()] == ["complete"] * 12


def test_retry_failed(db_url):
    s = _create(db_url, num_trials=3)
    s.run(lambda t: 1 / 0, progress=False)
    assert [t.status for t in s.trials()] == ["failed"] * 3
    s.run(fast_objective, progress=False)
    assert [t.status for t in s.trials()] == ["failed"] * 3  # finished is finished
    s.run(fast_objective, progress=False, retry_failed=True)
    assert [(t.status, t.attempts) for t in s.trials()] == [("complete", 2)] * 3


def test_run_argument_errors(db_url):
    s = _create(db_url, num_trials=2)
    with pytest.raises(ValueError, match="n_workers=0"):
        s.run(fast_objective, n_workers=0)
    with pytest.raises(ValueError, match="timeout=-1"):
        s.run(fast_objective, timeout=-1)
    with pytest.raises(ValueError, match="cannot be pickled"):
        s.run(lambda t: None, n_workers=2, progress=False)
    with pytest.raises(ValueError, match="'nope'"):
        s.run(fast_objective, n_workers=2, mp_context="nope")


def test_analysis_is_lazy(db_url):
    s = _create(db_url, num_trials=3)
    s.run(fast_objective, progress=False)
    from playbook.tune.analysis import Analysis

    assert isinstance(s.analysis(), Analysis)


def test_no_torch_import():
    code = "import sys, playbook.tune, playbook.tune.study, playbook.tune.runner; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------
# worker processes
# ---------------------------------------------------------------------------------------------


def test_four_workers_hundred_trials_no_duplicates_none_lost(db_url):
    s = _create(db_url, name="par", num_trials=100)
    s.run(fast_objective, n_workers=4, progress=False)
    trials = s.trials()
    assert [t.index for t in trials] == list(range(100))
    assert all(t.status == "complete" and t.attempts == 1 for t in trials)
    assert all(len(s.metrics(t.index)) == 2 for t in trials[:10])
    # Same points as one in-process worker and as the pure function (playbook 7.5 d).
    ref = _create(db_url, name="serial", num_trials=100)
    ref.run(fast_objective, n_workers=1, progress=False)
    assert [t.params for t in ref.trials()] == [t.params for t in trials] == s.space.samples(100, 0)
    workers = Counter(t.worker for t in trials)
    assert all(w.split(":")[-1] != str(os.getpid()) for w in workers)  # ran in the children


def test_killed_worker_trial_is_rerun(db_url, tmp_path):
    s = _create(db_url, name="kill", num_trials=8)
    objective = functools.partial(hang_on_first_attempt, str(tmp_path), 3)
    runner = threading.Thread(
        target=s.run, args=(objective,), kwargs=dict(n_workers=2, progress=False, heartbeat_timeout=0.5)
    )
    runner.start()
    pid_file = tmp_path / "pid-3"
    deadline = time.time() + 60
    while not pid_file.exists() and time.time() < deadline:
        time.sleep(0.02)
    pid = int(pid_file.read_text())
    (tmp_path / "killed").write_text("yes")
    os.kill(pid, signal.SIGKILL)
    runner.join(timeout=90)
    assert not runner.is_alive()
    trials = s.trials()
    assert [t.status for t in trials] == ["complete"] * 8
    assert trials[3].attempts == 2 and trials[3].worker != f"{os.uname().nodename}:{pid}"
    assert all(t.attempts == 1 for t in trials if t.index != 3)


_DRIVER = textwrap.dedent(
    """
    import functools, sys
    sys.path.insert(0, {test_dir!r})
    from test_study import hang_on_first_attempt
    from playbook.tune import Study

    if __name__ == "__main__":
        study = Study.load("resume", {db_url!r})
        study.run(functools.partial(hang_on_first_attempt, {marker!r}, 2), n_workers=2, progress=False)
    """
)


def test_resume_after_every_worker_was_killed(db_url, tmp_path):
    s = _create(db_url, name="resume", num_trials=10)
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER.format(test_dir=str(Path(__file__).parent), db_url=db_url, marker=str(tmp_path)))
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, str(driver)], env=env, start_new_session=True)
    try:
        deadline = time.time() + 60
        while not (tmp_path / "pid-2").exists() and time.time() < deadline:
            assert proc.poll() is None, "driver exited early"
            time.sleep(0.02)
        time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the manager and every worker
        proc.wait(timeout=30)
    (tmp_path / "killed").write_text("yes")
    stuck = [t for t in s.trials() if t.status == "running"]
    assert [t.index for t in stuck] == [2]
    # Resume: trial 2's worker stopped heartbeating, so after the timeout it is re-run.
    t0 = time.time()
    s.run(functools.partial(hang_on_first_attempt, str(tmp_path), 2), progress=False, heartbeat_timeout=0.5)
    assert time.time() - t0 < 30
    trials = s.trials()
    assert [t.index for t in trials] == list(range(10))
    assert [t.status for t in trials] == ["complete"] * 10
    assert trials[2].attempts == 2


# ---------------------------------------------------------------------------------------------
# the playbook's two designs (4.5)
# ---------------------------------------------------------------------------------------------


def conditional_space() -> SearchSpace:
    return SearchSpace({
        "optimizer": Categorical(["adam", "nesterov"], role="scientific", branches={
            "adam": {"lr": Real(1e-4, 1e-2, scale="log"), "beta1": Real(0.8, 0.999, scale="reverse_log")},
            "nesterov": {"lr": Real(1e-3, 1.0, scale="log"), "momentum": Real(0.8, 0.99, scale="reverse_log")},
        }),
        "weight_decay": Real(1e-6, 1e-2, scale="log"),
    })


def lr_objective(trial: Trial) -> None:
    trial.report(0, val_error=abs(math.log10(trial.params["lr"]) + 2.5))


def test_studies_per_scientific_value(db_url):
    studies = tune.studies_per_scientific_value("opt", conditional_space(), db_url, seed=4, num_trials=6)
    assert set(studies) == {"adam", "nesterov"}
    adam, nesterov = studies["adam"], studies["nesterov"]
    assert adam.name == "opt/optimizer=adam" and nesterov.name == "opt/optimizer=nesterov"
    assert [h.key for h in adam.space.hyperparameters()] == ["optimizer", "lr", "beta1", "weight_decay"]
    assert [h.key for h in nesterov.space.hyperparameters()] == ["optimizer", "lr", "momentum", "weight_decay"]
    assert adam.seed == nesterov.seed == 4
    for st in studies.values():
        st.run(lr_objective, progress=False)
        assert all(t.params["optimizer"] == st.space["optimizer"].spec.value for t in st.trials())
    best = tune.best_per_value(studies)
    assert best["adam"] == adam.best_trials(1)[0] and best["nesterov"] == nesterov.best_trials(1)[0]
    # reopening gives the same studies
    again = tune.studies_per_scientific_value("opt", conditional_space(), db_url, seed=4, num_trials=6)
    assert again == studies
    with pytest.raises(ValueError, match="Real"):
        tune.studies_per_scientific_value("x", SearchSpace({"lr": Real(0.1, 1.0, role="scientific")}), db_url)
    with pytest.raises(ValueError, match="no scientific"):
        tune.studies_per_scientific_value("x", SearchSpace({"lr": Real(0.1, 1.0)}), db_url)


def test_joint_study(db_url):
    st = tune.joint_study("joint", conditional_space(), db_url, seed=1, num_trials=16)
    st.run(lr_objective, progress=False)
    counts = Counter(t.params["optimizer"] for t in st.trials())
    assert counts == {"adam": 8, "nesterov": 8}  # the scientific value is sampled uniformly
    for t in st.trials():
        assert ("beta1" in t.params) == (t.params["optimizer"] == "adam")
        assert ("momentum" in t.params) == (t.params["optimizer"] == "nesterov")
    best = tune.best_per_value(st)
    assert set(best) == {"adam", "nesterov"} and best["adam"].params["optimizer"] == "adam"
    with pytest.raises(ValueError, match="scientific"):
        tune.joint_study("j2", SearchSpace({"lr": Real(0.1, 1.0)}), db_url)


def test_requeued_trial_is_abandoned_by_its_old_worker(db_url):
    from playbook.tune.runner import run_trial

    s = _create(db_url, num_trials=2)
    store = s._storage
    rec = store.claim_trial(s.name, "slow", 2, 60.0, s.params)
    time.sleep(0.02)
    again = store.claim_trial(s.name, "fresh", 2, 0.01, s.params)  # "slow" missed its heartbeats
    assert again.index == rec.index
    old = Trial(index=rec.index, params=rec.params, study_name=s.name, metric="val_error", mode="min",
                storage=store, worker="slow")
    with pytest.raises(tune.TrialLost, match="re-queued"):
        old.report(0, val_error=0.1)
    old2 = Trial(index=rec.index, params=rec.params, study_name=s.name, metric="val_error", mode="min",
                 storage=store, worker="slow")
    run_trial(fast_objective, old2)  # abandoned quietly, nothing written
    (t,) = s.trials()
    assert t.status == "running" and t.worker == "fresh" and s.metrics(t.index) == []
