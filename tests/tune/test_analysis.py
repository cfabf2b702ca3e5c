"""Tests of playbook.tune.analysis, plots and report (playbook 4.4-4.6, FAQ 7.7).

Studies with exactly controlled trials are built with :class:`ConstructedStudy` (a real
``SearchSpace`` plus hand-made trial records, same attributes as ``tune.Study``); the end-to-end
tests run real ``tune.Study`` objects on SQLite.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pytest

from playbook.tune import analysis as A
from playbook.tune.space import Categorical, Discrete, Int, Real, SearchSpace

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Rec:
    """Same fields as ``tune.TrialRecord``."""

    index: int
    params: dict
    status: str = "complete"
    score: Optional[float] = None
    best_step: Optional[int] = None
    worker: Any = None
    error: Optional[str] = None
    created: Optional[float] = None
    started: Optional[float] = None
    finished: Optional[float] = None
    final: dict = field(default_factory=dict)


class ConstructedStudy:
    """Minimal study: the attributes Analysis reads, with trials given explicitly."""

    def __init__(self, space, trials, *, mode="min", metric="loss", metrics=None, name="s"):
        self.name, self.space, self.mode, self.metric = name, space, mode, metric
        self.seed, self.num_trials, self.notes = 0, len(trials), "constructed"
        self.config, self.storage_url = {"model": "toy"}, None
        self._trials, self._metrics = list(trials), metrics or {}

    def trials(self):
        return list(self._trials)

    def metrics(self, index):
        return self._metrics.get(index, [])

    def best_trials(self, k=1):
        return A.sort_best(self._trials, self.mode)[:k]

    def analysis(self):
        return A.Analysis(self)


def lr_space() -> SearchSpace:
    return SearchSpace({
        "lr": Real(1e-4, 1e-1, scale="log"),
        "wd": Real(0.0, 0.1),
        "opt": Categorical(["adam", "sgd"], role="scientific"),
    })


def grid_study(loss_of_unit, n: int = 40, *, mode: str = "min", space=None) -> ConstructedStudy:
    """Trials on a deterministic grid of unit coordinates; score = loss_of_unit(u_lr, u_wd, opt)."""
    space = space or lr_space()
    hps = {h.name: h for h in space.hyperparameters()}
    trials = []
    for i in range(n):
        u_lr = (i + 0.5) / n
        u_wd = ((i * 7) % n + 0.5) / n
        opt = "adam" if i % 2 == 0 else "sgd"
        params = {"lr": hps["lr"].spec.from_unit(u_lr), "wd": hps["wd"].spec.from_unit(u_wd),
                  "opt": opt}
        trials.append(Rec(i, params, "complete", float(loss_of_unit(u_lr, u_wd, opt)), 1))
    return ConstructedStudy(space, trials, mode=mode)


# ------------------------------------------------------------------------------------------------
# boundaries (playbook 4.4)
# ------------------------------------------------------------------------------------------------


def test_boundary_upper_edge_of_lr_is_reported():
    study = grid_study(lambda u, w, o: (u - 1.2) ** 2 + 0.01 * w)  # optimum beyond the upper edge
    warnings = study.analysis().boundary_warnings()
    assert [(w.param, w.edge) for w in warnings] == [("lr", "upper")]
    w = warnings[0]
    assert w.bound == pytest.approx(0.1)
    assert w.best_unit >= 0.95 and w.count >= 1 and w.k == 4  # max(3, ceil(0.1 * 40))
    text = "\n".join(study.analysis().warnings())
    assert "lr" in text and "upper" in text


def test_boundary_lower_edge_linear_and_maximize():
    # mode="max": the best trials have small wd (lower edge); lr optimum is interior.
    study = grid_study(lambda u, w, o: -((u - 0.5) ** 2) - w, mode="max")
    warnings = study.analysis().boundary_warnings()
    assert [(w.param, w.edge) for w in warnings] == [("wd", "lower")]
    assert warnings[0].bound == 0.0


def test_boundary_interior_optimum_gives_no_warning():
    study = grid_study(lambda u, w, o: (u - 0.5) ** 2 + (w - 0.4) ** 2)
    analysis = study.analysis()
    assert analysis.boundary_warnings() == []
    assert analysis.warnings() == []


def test_boundary_top_k_and_margin_are_configurable():
    # Best trial interior (u=0.5); the next two best at the upper edge of lr.
    space = SearchSpace({"lr": Real(0.0, 1.0)})
    units = [0.5, 0.99, 0.98, 0.3, 0.2, 0.1]
    scores = [0.0, 0.1, 0.2, 5.0, 6.0, 7.0]
    trials = [Rec(i, {"lr": u}, "complete", s) for i, (u, s) in enumerate(zip(units, scores))]
    study = ConstructedStudy(space, trials)
    assert [(w.param, w.edge, w.count) for w in A.Analysis(study, top_k=3).boundary_warnings()] \
        == [("lr", "upper", 2)]
    assert A.Analysis(study, top_k=1).boundary_warnings() == []
    # A 1% margin excludes u=0.98 and leaves 1 of 3: not enough without the best trial.
    assert A.Analysis(study, top_k=3).boundary_warnings(margin=0.01) == []


def test_boundary_uses_active_conditional_hyperparameter_and_int():
    space = SearchSpace({
        "opt": Categorical(["adam", "sgd"], branches={
            "adam": {"lr": Real(1e-4, 1e-2, scale="log")},
            "sgd": {"lr": Real(1e-3, 1.0, scale="log")},
        }),
        "layers": Int(1, 8),
    })
    trials = []
    for i in range(20):
        opt = "adam" if i % 2 == 0 else "sgd"
        u = (i // 2 + 0.5) / 10
        lo, hi = (1e-4, 1e-2) if opt == "adam" else (1e-3, 1.0)
        lr = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
        layers = 1 + (i * 3) % 8
        # adam trials are better and best at adam's top lr; sgd only interior.
        score = (1.0 - u) if opt == "adam" else 2.0 + abs(u - 0.5)
        trials.append(Rec(i, {"opt": opt, "lr": lr, "layers": layers}, "complete", score))
    warnings = ConstructedStudy(space, trials).analysis().boundary_warnings()
    keys = {(w.key, w.edge) for w in warnings}
    assert ("opt=adam/lr", "upper") in keys
    assert not any(k.startswith("opt=sgd/") for k, _ in keys)


# ------------------------------------------------------------------------------------------------
# infeasible / failed, best trials, scientific groups
# ------------------------------------------------------------------------------------------------


def mixed_status_study() -> ConstructedStudy:
    space = SearchSpace({"lr": Real(0.0, 1.0), "opt": Categorical(["a", "b"], role="scientific")})
    recs = [
        Rec(0, {"lr": 0.5, "opt": "a"}, "complete", 3.0),
        Rec(1, {"lr": 0.6, "opt": "b"}, "complete", 1.0),
        Rec(2, {"lr": 0.9, "opt": "a"}, "infeasible", None),
        Rec(3, {"lr": 0.7, "opt": "b"}, "complete", float("nan")),  # diverged: infeasible
        Rec(4, {"lr": 0.2, "opt": "a"}, "complete", 2.0),
        Rec(5, {"lr": 0.3, "opt": "b"}, "failed", None, error="RuntimeError: boom"),
        Rec(6, {"lr": 0.4, "opt": "a"}, "pending", None),
        Rec(7, {"lr": 0.95, "opt": "b"}, "infeasible", None),
    ]
    return ConstructedStudy(space, recs)


def test_infeasible_and_failed_fractions():
    analysis = mixed_status_study().analysis()
    # finished: 0,1,2,3,4,7 -> infeasible 2,3,7
    assert analysis.infeasible_fraction == pytest.approx(3 / 6)
    # ran: finished + failed = 7 -> 1 failed
    assert analysis.failed_fraction == pytest.approx(1 / 7)
    assert analysis.status_counts() == {"pending": 1, "running": 0, "complete": 4,
                                        "infeasible": 2, "failed": 1}
    assert any("failed" in w for w in analysis.warnings())


def test_infeasible_never_win_and_best_per_scientific_value():
    analysis = mixed_status_study().analysis()
    assert [t.index for t in analysis.best_trials(5)] == [1, 4, 0]
    best = analysis.best_per_scientific()
    assert {k: (None if t is None else t.index) for k, t in best.items()} == {("a",): 4, ("b",): 1}
    comps = {c.label: c for c in analysis.compare_scientific(n_resamples=200)}
    assert comps["opt=a"].n_trials == 3 and comps["opt=a"].n_feasible == 2
    assert comps["opt=b"].n_trials == 3 and comps["opt=b"].n_feasible == 1
    assert comps["opt=a"].best_score == 2.0 and comps["opt=b"].best_score == 1.0


def test_no_feasible_trial_is_a_warning():
    space = SearchSpace({"lr": Real(0.0, 1.0)})
    study = ConstructedStudy(space, [Rec(i, {"lr": 0.1 * i}, "infeasible") for i in range(3)])
    analysis = study.analysis()
    assert analysis.infeasible_fraction == 1.0
    assert analysis.best_trials(3) == []
    assert any("No feasible trial" in w for w in analysis.warnings())


# ------------------------------------------------------------------------------------------------
# bootstrap (FAQ 7.7, figure 3)
# ------------------------------------------------------------------------------------------------


def test_bootstrap_matches_direct_numpy_computation():
    scores = np.array([5.0, 1.0, 4.0, 2.0, 3.0, 7.0, 6.0])
    ks, R, seed = [1, 2, 5], 500, 3
    got = A.bootstrap_best(scores, ks, mode="min", n_resamples=R, seed=seed)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, scores.size, size=(R, max(ks)))
    want = np.stack([scores[idx[:, :k]].min(axis=1) for k in ks])
    np.testing.assert_array_equal(got, want)
    got_max = A.bootstrap_best(scores, ks, mode="max", n_resamples=R, seed=seed)
    np.testing.assert_array_equal(got_max, np.stack([scores[idx[:, :k]].max(axis=1) for k in ks]))


def test_bootstrap_k1_median_and_exact_best_of_k_distribution():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=11)
    R = 20000
    samples = A.bootstrap_best(scores, [1, 3, 6], n_resamples=R, seed=1)
    assert np.median(samples[0]) == np.median(scores)  # k=1: resampling the scores themselves
    # P(best of k <= s_(j)) = 1 - (1 - j/n)^k for the j-th smallest score s_(j).
    sorted_scores = np.sort(scores)
    for row, k in zip(samples, [1, 3, 6]):
        for j in (1, 3, 6):
            expect = 1 - (1 - j / scores.size) ** k
            assert np.mean(row <= sorted_scores[j - 1]) == pytest.approx(expect, abs=0.015)


@pytest.mark.parametrize("mode", ["min", "max"])
def test_bootstrap_quantiles_are_monotone_in_k(mode):
    study = grid_study(lambda u, w, o: math.sin(7 * u) + w, n=30, mode=mode)
    boot = study.analysis().bootstrap(n_resamples=300, seed=0)
    assert boot.ks[0] == 1 and boot.ks[-1] == 30 and len(boot.ks) == 20  # 20-point grid
    q = boot.quantiles((0.1, 0.25, 0.5, 0.75, 0.9))
    diffs = np.diff(q, axis=0)
    assert (diffs <= 0).all() if mode == "min" else (diffs >= 0).all()
    # seeded: same seed, same numbers; another seed, other numbers
    again = study.analysis().bootstrap(n_resamples=300, seed=0)
    np.testing.assert_array_equal(boot.samples, again.samples)
    other = study.analysis().bootstrap(n_resamples=300, seed=1)
    assert not np.array_equal(boot.samples, other.samples)


def test_bootstrap_counts_infeasible_in_budget():
    # 2 feasible of 4 finished: a resample of k has no feasible trial with probability 0.5^k.
    space = SearchSpace({"lr": Real(0.0, 1.0)})
    recs = [Rec(0, {"lr": 0.1}, "complete", 1.0), Rec(1, {"lr": 0.2}, "complete", 2.0),
            Rec(2, {"lr": 0.3}, "infeasible"), Rec(3, {"lr": 0.4}, "complete", float("inf")),
            Rec(4, {"lr": 0.5}, "failed")]
    analysis = ConstructedStudy(space, recs).analysis()
    boot = analysis.bootstrap([1, 2, 3], n_resamples=20000, seed=0)
    assert boot.n_trials == 4
    np.testing.assert_allclose(boot.p_no_feasible, [0.5, 0.25, 0.125], atol=0.015)
    finite = boot.samples[~np.isnan(boot.samples)]
    assert set(np.unique(finite)) <= {1.0, 2.0}
    only_feasible = analysis.bootstrap([1, 2], n_resamples=100, include_infeasible=False)
    assert only_feasible.n_trials == 2 and not np.isnan(only_feasible.samples).any()
    rows = boot.table()
    assert [r["k"] for r in rows] == [1, 2, 3] and rows[2]["median"] == 1.0


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="Invalid ks"):
        A.bootstrap_best([1.0], [0])
    with pytest.raises(ValueError, match="Unknown mode: 'mean'"):
        A.bootstrap_best([1.0], [1], mode="mean")
    with pytest.raises(ValueError, match="Invalid margin: 0.7"):
        A.Analysis(grid_study(lambda u, w, o: u), margin=0.7)
    empty = ConstructedStudy(lr_space(), [])
    with pytest.raises(ValueError, match="no finished trials"):
        empty.analysis().bootstrap()


# ------------------------------------------------------------------------------------------------
# plots and report (playbook 4.5, 4.6)
# ------------------------------------------------------------------------------------------------


def report_study() -> ConstructedStudy:
    space = SearchSpace({
        "lr": Real(1e-4, 1e-1, scale="log"),
        "beta": Real(0.9, 0.999, scale="reverse_log"),
        "batch": Discrete([32, 64, 128]),
        "layers": Int(1, 4),
        "opt": Categorical(["adam", "sgd"], role="scientific"),
    })
    trials, metrics = [], {}
    for i, params in enumerate(space.samples(24, seed=0)):
        u = space["lr"].spec.to_unit(params["lr"])
        status, score = ("infeasible", None) if u > 0.9 else ("complete", (u - 0.4) ** 2)
        trials.append(Rec(i, params, status, score, 2 if score is not None else None))
        if score is not None:
            metrics[i] = [(s, {"loss": score + 1.0 / (s + 1), "train_loss": 0.5 / (s + 1)})
                          for s in range(3)]
    return ConstructedStudy(space, trials, metrics=metrics, name="report<&>")


def test_report_writes_valid_pngs_and_embeds_them(tmp_path):
    analysis = report_study().analysis()
    html_path = analysis.report(tmp_path / "rep", n_resamples=200)
    html = html_path.read_text(encoding="utf-8")
    pngs = sorted(p.name for p in (tmp_path / "rep").glob("*.png"))
    expected = {"axis_lr.png", "axis_beta.png", "axis_batch.png", "axis_layers.png",
                "axis_opt.png", "isolation_lr.png", "isolation_beta.png", "isolation_batch.png",
                "isolation_layers.png", "curves.png", "bootstrap.png", "scientific.png",
                "retrospective.png"}
    assert set(pngs) == expected
    for name in pngs:
        data = (tmp_path / "rep" / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
        assert "data:image/png;base64," + base64.b64encode(data).decode() in html
    assert "<img src='data:image/png;base64," in html and "src='axis" not in html
    assert "report&lt;&amp;&gt;" in html and "report<&>" not in html  # escaped study name
    assert "constructed" in html and "toy" in html  # notes and config
    assert "infeasible fraction" in html


def test_plots_return_listed_paths(tmp_path):
    analysis = grid_study(lambda u, w, o: (u - 0.5) ** 2).analysis()
    paths = analysis.plots(tmp_path, n_resamples=100)
    assert [p.name for p in paths] == ["axis_lr.png", "axis_wd.png", "axis_opt.png",
                                       "isolation_lr.png", "isolation_wd.png", "curves.png",
                                       "bootstrap.png", "scientific.png", "retrospective.png"]
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in paths)


def test_continuous_scientific_values_are_binned():
    space = SearchSpace({"wd": Real(0.0, 1.0, role="scientific"), "lr": Real(0.0, 1.0)})
    recs = [Rec(i, {"wd": (i + 0.5) / 10, "lr": 0.5}, "complete", float(i)) for i in range(10)]
    best = ConstructedStudy(space, recs).analysis().best_per_scientific()
    assert list(best) == [("[0, 0.2)",), ("[0.2, 0.4)",), ("[0.4, 0.6)",), ("[0.6, 0.8)",),
                          ("[0.8, 1]",)]
    assert [t.index for t in best.values()] == [0, 2, 4, 6, 8]
