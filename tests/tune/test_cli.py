"""Tests of the ``playbook`` CLI (playbook 6.3 "Setting up experiment tracking") and of the
analysis on real SQLite studies."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from playbook import tune
from playbook.tune import cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def objective(trial) -> None:
    """Fast deterministic objective: best loss at the upper lr edge, sgd worse, lr > 0.05
    diverges (infeasible), three reports per trial."""
    lr, wd = trial.params["lr"], trial.params["wd"]
    base = (math.log10(lr) + 1.0) ** 2 + wd + (0.5 if trial.params["opt"] == "sgd" else 0.0)
    for step in range(3):
        loss = float("nan") if lr > 0.05 and step == 2 else base + 1.0 / (step + 1)
        trial.report(step, loss=loss, acc=1.0 / (1.0 + base + step))


@pytest.fixture()
def storage(tmp_path) -> str:
    url = f"sqlite:///{tmp_path}/s.db"
    space = tune.SearchSpace({
        "lr": tune.Real(1e-4, 1e-1, scale="log"),
        "wd": tune.Real(0.0, 0.1),
        "opt": tune.Categorical(["adam", "sgd"], role="scientific"),
    })
    study = tune.Study.create("lr-sweep", space, metric="loss", mode="min", seed=1,
                              num_trials=24, storage=url, notes="baseline sweep")
    study.run(objective, progress=False)
    other = tune.Study.create("other", tune.SearchSpace({"x": tune.Real(0.0, 1.0)}),
                              metric="loss", mode="min", seed=0, num_trials=4, storage=url)
    other.run(lambda t: t.report(0, loss=(t.params["x"] - 0.5) ** 2), progress=False)
    return url


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------------------------------------------
# analysis on a real study
# ------------------------------------------------------------------------------------------------


def test_real_study_analysis(storage, tmp_path):
    study = tune.Study.load("lr-sweep", storage)
    analysis = study.analysis()
    trials = study.trials()
    lrs = {t.index: t.params["lr"] for t in trials}
    n_infeasible = sum(lr > 0.05 for lr in lrs.values())
    assert 0 < n_infeasible < len(trials)
    assert analysis.infeasible_fraction == pytest.approx(n_infeasible / len(trials))
    feasible = [t for t in trials if t.status == "complete"]
    best = min(feasible, key=lambda t: t.score)
    assert analysis.best_trials(1)[0].index == best.index
    # Boundary check against an independent computation: lr's unit coordinate on its log
    # scale is (log10(lr) + 4) / 3; the top k = max(3, ceil(10%)) feasible trials are examined;
    # an edge is reported when the best trial or at least half of them are within the margin.
    ranked = sorted(feasible, key=lambda t: (t.score, t.index))
    top = ranked[:max(3, math.ceil(0.1 * len(ranked)))]
    units = [(math.log10(t.params["lr"]) + 4) / 3 for t in top]
    positives = 0
    for margin in (0.05, 0.1, 0.15, 0.2, 0.3):
        near = [u >= 1 - margin for u in units]
        expect = [("lr", "upper")] if near[0] or 2 * sum(near) >= len(near) else []
        got = [(w.param, w.edge) for w in analysis.boundary_warnings(margin=margin)
               if w.param == "lr"]
        assert got == expect, margin
        positives += bool(expect)
    assert positives >= 1  # the objective pushes the best lr towards the upper edge
    per_opt = analysis.best_per_scientific()
    assert per_opt[("adam",)].score < per_opt[("sgd",)].score
    assert per_opt[("adam",)].index == best.index
    boot = analysis.bootstrap(n_resamples=200)
    assert boot.n_trials == len(trials)
    html = analysis.report(tmp_path / "report", n_resamples=200)
    assert html.exists() and (tmp_path / "report" / "axis_lr.png").read_bytes()[:8] == PNG_MAGIC
    assert "curves.png" in html.read_text()


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------


def test_list_is_the_tracking_table(storage, capsys):
    code, out, _ = run(capsys, "study", "list", "--storage", storage)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:6] == ["name", "config", "notes", "trials", "best", "reproduce"]
    sweep = next(line for line in lines if line.startswith("lr-sweep"))
    study = tune.Study.load("lr-sweep", storage)
    best = study.best_trials(1)[0]
    assert "24/24" in sweep and "baseline sweep" in sweep and "3 params: lr,wd,opt" in sweep
    assert "seed=1" in sweep and f"{best.score:.6g}" in sweep
    assert f"playbook study show lr-sweep --storage {storage}" in sweep
    other = next(line for line in lines if line.startswith("other"))
    assert "4/4" in other and f"playbook study show other --storage {storage}" in other


def test_list_uses_env_storage_and_missing_file_is_empty(storage, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PLAYBOOK_STORAGE", storage)
    code, out, _ = run(capsys, "study", "list")
    assert code == 0 and "lr-sweep" in out
    missing = tmp_path / "missing.db"
    code, out, _ = run(capsys, "study", "list", "--storage", f"sqlite:///{missing}")
    assert code == 0 and "No studies" in out and not missing.exists()


def test_show_prints_config_and_trials(storage, capsys):
    code, out, _ = run(capsys, "study", "show", "lr-sweep", "--storage", storage)
    assert code == 0
    assert "baseline sweep" in out and '"num_trials": 24' in out and "infeasible fraction" in out
    assert "param.lr" in out and "param.opt" in out
    table = out[out.index("index"):].splitlines()[2:]
    assert len(table) == 24


def test_export_csv_round_trip(storage, capsys, tmp_path):
    study = tune.Study.load("lr-sweep", storage)
    code, out, _ = run(capsys, "study", "export", "lr-sweep", "--storage", storage,
                       "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    trials = study.trials()
    assert len(rows) == len(trials)
    for row, t in zip(rows, trials):
        assert int(row["index"]) == t.index and row["status"] == t.status
        assert (row["score"] == "") == (t.score is None)
        if t.score is not None:
            assert float(row["score"]) == t.score  # repr round trip: exact
        assert float(row["param.lr"]) == t.params["lr"] and float(row["param.wd"]) == t.params["wd"]
        assert row["param.opt"] == t.params["opt"]
    out_file = tmp_path / "trials.csv"
    assert run(capsys, "study", "export", "lr-sweep", "--storage", storage, "--format", "csv",
               "--output", str(out_file))[0] == 0
    assert out_file.read_text() == out


def test_export_json_round_trip(storage, capsys, tmp_path):
    study = tune.Study.load("lr-sweep", storage)
    out_file = tmp_path / "s.json"
    code, out, _ = run(capsys, "study", "export", "lr-sweep", "--storage", storage,
                       "--format", "json", "--output", str(out_file), "--metrics")
    assert code == 0 and out == ""
    data = json.loads(out_file.read_text())
    assert data["name"] == "lr-sweep" and data["metric"] == "loss" and data["mode"] == "min"
    trials = study.trials()
    assert [d["index"] for d in data["trials"]] == [t.index for t in trials]
    for d, t in zip(data["trials"], trials):
        assert d["params"] == t.params and d["status"] == t.status
        assert d["score"] == t.score and d["best_step"] == t.best_step
        assert [m["step"] for m in d["metrics"]] == [s for s, _ in study.metrics(t.index)]


def test_plot_writes_report(storage, capsys, tmp_path):
    code, out, _ = run(capsys, "study", "plot", "lr-sweep", "--storage", storage,
                       "--out", str(tmp_path / "plots"))
    assert code == 0 and "report.html" in out
    assert (tmp_path / "plots" / "report.html").exists()
    assert (tmp_path / "plots" / "bootstrap.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("command", ["show", "plot", "export"])
def test_unknown_study_exits_2_and_lists_known(storage, capsys, tmp_path, command):
    argv = ["study", command, "nope", "--storage", storage]
    if command == "plot":
        argv += ["--out", str(tmp_path / "x")]
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert "'nope'" in err and "lr-sweep" in err and "other" in err


def test_usage_error_returns_2(capsys):
    assert run(capsys, "study", "export", "x", "--format", "xml")[0] == 2
    assert run(capsys, "study")[0] == 2


def test_module_entry_point(storage):
    proc = subprocess.run(
        [sys.executable, "-m", "playbook.tune.cli", "study", "list", "--storage", storage],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(Path(tune.__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])},
    )
    assert proc.returncode == 0, proc.stderr
    assert "lr-sweep" in proc.stdout
