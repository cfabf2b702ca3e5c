"""Trials that resume: artifacts directories, trial.checkpoints(), curves without duplicates."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from playbook import tune
from playbook.tune import SearchSpace, Real
from playbook.tune.trial import Trial


def params_for(i):
    return {"x": float(i)}


def _study(db_url, name="resume", **kw):
    kw.setdefault("num_trials", 2)
    return tune.Study.create(name, SearchSpace({"lr": Real(1e-3, 1e-1, scale="log")}), storage=db_url,
                             seed=0, metric="val_error", mode="min", **kw)


# -- the storage contract: metrics survive a re-queue; a report at s replaces steps >= s ---------


def test_requeued_trial_keeps_its_metrics_and_counts_attempts(db_url):
    s = _study(db_url)
    store = s._storage
    t = store.claim_trial(s.name, "dead", 2, 60.0, params_for)
    for step in (0, 10, 20):
        store.report(s.name, t.index, "dead", step, {"val_error": 1.0 - step / 100}, None, None)
    time.sleep(0.02)
    again = store.claim_trial(s.name, "alive", 2, 0.01, params_for)
    assert again.index == t.index and again.attempts == 2
    assert [step for step, _ in store.metrics(s.name, t.index)] == [0, 10, 20]
    assert s.trial(t.index).attempts == 2  # visible in TrialRecord
    # resumed from a checkpoint at step 10: its next report (15) rewrites the curve from there on
    assert store.report(s.name, t.index, "alive", 15, {"val_error": 0.5}, None, None)
    assert store.metrics(s.name, t.index) == [(0, {"val_error": 1.0}), (10, {"val_error": 0.9}), (15, {"val_error": 0.5})]


def test_trial_score_follows_the_stored_curve_after_resume(db_url):
    s = _study(db_url)
    store = s._storage
    rec = store.claim_trial(s.name, "w1", 2, 60.0, s.params)
    first = Trial(index=rec.index, params=rec.params, study_name=s.name, metric="val_error", mode="min",
                  storage=store, worker="w1")
    for step, v in [(0, 0.9), (10, 0.4), (20, 0.1), (30, 0.3)]:
        first.report(step, val_error=v)
    assert (first.score, first.best_step) == (0.1, 20)
    store.requeue(s.name, workers=["w1"])
    rec = store.claim_trial(s.name, "w2", 2, 60.0, s.params)
    resumed = Trial(index=rec.index, params=rec.params, study_name=s.name, metric="val_error", mode="min",
                    storage=store, worker="w2")
    resumed.report(11, val_error=0.6)  # resumed from the checkpoint of step 10: steps 20, 30 are gone
    assert (resumed.score, resumed.best_step) == (0.4, 10)
    resumed.report(21, val_error=0.05)
    resumed.complete()
    (t,) = [t for t in s.trials() if t.index == rec.index]
    assert (t.status, t.score, t.best_step, t.attempts) == ("complete", 0.05, 21, 2)
    assert [step for step, _ in s.metrics(t.index)] == [0, 10, 11, 21]


# -- artifacts directories -----------------------------------------------------------------------


def test_default_artifacts_beside_the_sqlite_file(tmp_path):
    url = f"sqlite:///{tmp_path}/db/studies.db"
    s = _study(url, name="group/opt=adam")
    assert s.artifacts == tmp_path / "db" / "studies_artifacts" / "group" / "opt=adam"
    assert "artifacts" not in s.config
    store = s._storage
    rec = store.claim_trial(s.name, "w", 2, 60.0, s.params)
    t = Trial(index=rec.index, params=rec.params, study_name=s.name, metric="val_error", mode="min",
              storage=store, worker="w")
    assert t.directory == s.artifacts / "trial_00000" and t.directory.is_dir()
    tune.storage.close_all()


def test_artifacts_option_is_stored_and_checked_on_reopen(db_url, tmp_path):
    s = _study(db_url, artifacts=tmp_path / "art")
    assert s.config["artifacts"] == str(tmp_path / "art") and s.artifacts == tmp_path / "art"
    assert tune.Study.load(s.name, db_url).artifacts == tmp_path / "art"
    assert _study(db_url).artifacts == tmp_path / "art"  # reopening without the option keeps it
    with pytest.raises(ValueError, match="artifacts"):
        _study(db_url, artifacts=tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="Invalid artifacts"):
        _study(db_url, name="other", artifacts="")
    with pytest.raises(ValueError, match="path component"):
        _study(db_url, name="../escape").artifacts


def test_trial_without_storage_needs_a_directory(tmp_path):
    t = Trial(index=0, params={}, study_name="s", metric="m", mode="min", storage=None, worker="w")
    with pytest.raises(ValueError, match="no storage"):
        t.directory
    t = Trial(index=0, params={}, study_name="s", metric="m", mode="max", storage=None, worker="w",
              directory=tmp_path / "t0")
    mgr = t.checkpoints(keep_best=2)
    assert (mgr.directory, mgr.metric, mgr.mode, mgr.keep_best) == (tmp_path / "t0" / "checkpoints", "m", "max", 2)


# -- an interrupted study resumes its trials from their checkpoints ------------------------------


class _Interrupted(BaseException):
    """Stands for Ctrl-C / SystemExit: the runner re-queues the trial and re-raises."""


def _objective(trial):
    import torch

    mgr = trial.checkpoints(keep_best=1, keep_latest=1)
    w = torch.zeros(1)
    start = mgr.restore_into(w=w)
    log = Path(trial.directory) / "starts.txt"
    with open(log, "a") as f:
        f.write(f"{start}\n")
    for step in range(start, 40):
        w += trial.params["lr"]
        err = 1.0 / (1.0 + float(w))
        if step % 10 == 9:
            mgr.save(step, {"w": w}, metrics={"val_error": err})
            trial.report(step, val_error=err)
        if step == 25 and not (Path(trial.directory).parent / "interrupted").exists():
            (Path(trial.directory).parent / "interrupted").touch()
            raise _Interrupted  # interrupted in the middle of the first trial


def test_interrupted_study_resumes_from_checkpoints(db_url):
    s = _study(db_url, num_trials=2)
    with pytest.raises(_Interrupted):
        s.run(_objective, progress=False)
    (t0,) = s.trials()
    assert t0.status == "pending" and t0.attempts == 1
    s.run(_objective, progress=False)
    trials = s.trials()
    assert [(t.status, t.attempts) for t in trials] == [("complete", 2), ("complete", 1)]
    starts = (s.artifacts / "trial_00000" / "starts.txt").read_text().split()
    assert starts == ["0", "20"]  # the second attempt restored the checkpoint of step 19
    assert [step for step, _ in s.metrics(0)] == [9, 19, 29, 39]  # no duplicates
    # the resumed run computes exactly what an uninterrupted one would
    lr = trials[0].params["lr"]
    for step, values in s.metrics(0):
        assert values["val_error"] == pytest.approx(1.0 / (1.0 + (step + 1) * lr), rel=1e-5)
    ckpts = sorted(os.listdir(s.artifacts / "trial_00000" / "checkpoints"))
    assert ckpts == ["step_00000039"]
