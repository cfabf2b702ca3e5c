"""``Study.to_dataframe()`` (issue 7, item 17) against the stored trial records."""

from __future__ import annotations

import math
import sys

import pytest

from playbook.tune import Categorical, Real, SearchSpace, Study


def objective(trial):
    if trial.index == 1:
        raise RuntimeError("boom")
    if trial.index == 2:
        trial.report(0, val_error=float("nan"))
    trial.report(0, val_error=1.0)
    trial.report(5, val_error=trial.params["lr"])
    trial.complete(test_error=0.5)


def test_to_dataframe_matches_the_records(db_url):
    pd = pytest.importorskip("pandas")
    space = SearchSpace({
        "wd": Real(0.0, 0.1),
        "optimizer": Categorical(["adam", "sgd"], role="scientific", branches={
            "adam": {"lr": Real(1e-4, 1e-2, scale="log"), "beta1": Real(0.8, 0.95)},
            "sgd": {"lr": Real(1e-3, 1.0, scale="log")},
        }),
    })
    study = Study.create("df", space, storage=db_url, seed=0, num_trials=6)
    study.run(objective, progress=False)
    df = study.to_dataframe()
    records = study.trials()
    assert list(df.index) == [t.index for t in records] and df.index.name == "index"
    assert list(df.columns) == ["status", "score", "best_step", "duration", "attempts", "started",
                                "finished", "worker", "error", "param.wd", "param.optimizer",
                                "param.lr", "param.beta1", "final.test_error"]
    for t in records:
        row = df.loc[t.index]
        assert row.status == t.status and row.attempts == t.attempts and row.worker == t.worker
        if t.score is None:
            assert math.isnan(row.score) and pd.isna(row.best_step)
        else:
            assert row.score == t.score and row.best_step == t.best_step == 5
        assert row.duration == pytest.approx(t.finished - t.started)
        assert row.started == pd.Timestamp(t.started, unit="s", tz="UTC")
        for name, value in t.params.items():
            assert row[f"param.{name}"] == value
        if t.params["optimizer"] == "sgd":
            assert pd.isna(row["param.beta1"])
    assert "RuntimeError: boom" in df.loc[1, "error"]
    assert df.loc[2, "status"] == "infeasible" and "non-finite" in df.loc[2, "error"]
    assert df.loc[0, "final.test_error"] == 0.5
    assert df["score"].dtype == "float64" and str(df["attempts"].dtype) == "Int64"


def test_to_dataframe_without_pandas_names_the_extra(db_url, monkeypatch):
    study = Study.create("nopd", SearchSpace({"x": Real(0.0, 1.0)}), storage=db_url, seed=0, num_trials=1)
    monkeypatch.setitem(sys.modules, "pandas", None)  # `import pandas` raises ImportError
    with pytest.raises(ImportError, match=r'pip install "playbook\[pandas\]"'):
        study.to_dataframe()


def test_tune_import_does_not_import_pandas():
    import subprocess

    code = "import sys, playbook.tune; s = tune = playbook.tune; print('pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
