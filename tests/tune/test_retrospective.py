"""Retrospective checkpoint selection in the analysis (playbook "Deciding how long to train")."""

from __future__ import annotations

import time

import numpy as np

from playbook import tune
from playbook.tune import Fixed, Real, SearchSpace

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(db_url, name, peak_fraction, max_train_steps=1000, fixed=True, num_trials=8):
    space = {"lr": Real(1e-3, 1e-1, scale="log")}
    if fixed:
        space["max_train_steps"] = Fixed(max_train_steps)
    study = tune.Study.create(name, SearchSpace(space), storage=db_url, seed=0, num_trials=num_trials,
                              metric="val_error", mode="min")

    def objective(trial):
        peak = int(peak_fraction(trial.index) * max_train_steps)
        for step in range(0, max_train_steps + 1, 50):
            trial.report(step, val_error=0.1 + trial.index * 0.01 + abs(step - peak) / max_train_steps)

    study.run(objective, progress=False)
    return study


def test_best_steps_and_fractions_match_the_curves(db_url):
    study = _run(db_url, "late", lambda i: 0.95)
    retro = study.analysis().retrospective()
    assert retro.indices.tolist() == list(range(8))
    # reference: the argmin of each stored curve
    for i, step in zip(retro.indices, retro.best_steps):
        curve = study.metrics(int(i))
        assert step == min(curve, key=lambda sv: (sv[1]["val_error"], sv[0]))[0]
    assert retro.max_train_steps == 1000
    np.testing.assert_allclose(retro.fractions, retro.best_steps / 1000.0)


def test_warns_train_longer_when_best_trials_peak_in_the_last_10_percent(db_url):
    study = _run(db_url, "late", lambda i: 0.95)
    warnings = study.analysis().warnings()
    late = [w for w in warnings if "last 10% of training" in w]
    assert len(late) == 1 and "train longer" in late[0]
    assert "max_train_steps=1000" in late[0]
    assert "if the best step is consistently in the last 25% of training" in late[0]


def test_warns_when_best_step_is_always_early_and_not_when_in_the_middle(db_url):
    early = _run(db_url, "early", lambda i: 0.05)
    assert any("maximum number of steps is way too high" in w for w in early.analysis().warnings())
    middle = _run(db_url, "middle", lambda i: 0.5)
    assert not middle.analysis().training_length_warnings()


def test_without_recorded_max_train_steps_uses_the_last_reported_step(db_url):
    study = _run(db_url, "nofixed", lambda i: 0.95, fixed=False)
    retro = study.analysis().retrospective()
    assert retro.max_train_steps is None and not retro.recorded.any()
    assert np.all(retro.lengths == 1000)
    (w,) = study.analysis().training_length_warnings()
    assert "each trial's last reported step" in w


def test_report_has_the_plot_the_section_and_resumed_trials(db_url, tmp_path):
    study = _run(db_url, "late", lambda i: 0.95, num_trials=4)
    store = study._storage
    # trial 4 is interrupted once and resumed by another worker
    rec = store.claim_trial(study.name, "w1", 5, 60.0, study.params)
    store.report(study.name, rec.index, "w1", 0, {"val_error": 1.0}, 1.0, 0)
    time.sleep(0.02)
    rec = store.claim_trial(study.name, "w2", 5, 0.01, study.params)
    store.report(study.name, rec.index, "w2", 50, {"val_error": 0.5}, 0.5, 50)
    store.finish_trial(study.name, rec.index, "w2", "complete", score=0.5, best_step=50, error=None, final={})
    analysis = study.analysis()
    assert [t.index for t in analysis.resumed_trials()] == [4]
    html = analysis.report(tmp_path / "rep", n_resamples=50).read_text(encoding="utf-8")
    png = (tmp_path / "rep" / "retrospective.png").read_bytes()
    assert png.startswith(PNG_MAGIC)
    assert "Retrospective checkpoint selection" in html and "Resumed trials" in html
    assert "<th>attempts</th>" in html
