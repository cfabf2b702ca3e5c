"""The examples run as documented (small settings)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_tune_mlp_example(tmp_path, capsys):
    from playbook import tune

    example = _load("tune_mlp")
    storage = f"sqlite:///{tmp_path}/studies.db"
    assert example.main(["--trials", "4", "--workers", "1", "--storage", storage, "--out", str(tmp_path / "out")]) == 0
    study = tune.Study.load("mlp-optimizer", storage)
    records = study.trials()
    assert [r.index for r in records] == [0, 1, 2, 3]
    assert all(r.status == "complete" for r in records)
    best = study.best_trials(k=1)[0]
    assert best.score == min(r.score for r in records)
    assert 0.0 <= best.score < 0.5  # three classes: far better than chance
    assert (tmp_path / "out" / "report.html").is_file()
    assert "report:" in capsys.readouterr().out
