"""Plots and HTML report you can read (issue 7, items 18-21), on real SQLite studies: figures
are rendered with Agg and inspected through matplotlib's own objects; the report's table
sorting runs in headless Chromium when it is installed."""

from __future__ import annotations

import math
import re
import shutil
import subprocess

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from playbook.tune import Categorical, Discrete, Fixed, Int, Real, SearchSpace, Study
from playbook.tune import plots

# ---------------------------------------------------------------------------------------------
# studies
# ---------------------------------------------------------------------------------------------

OUTLIER = 1000.0


def space() -> SearchSpace:
    return SearchSpace({
        "opt": Categorical(["adam", "sgd", "nesterov"], role="scientific"),
        "lr": Real(1e-4, 1e-1, scale="log"),
        "beta2": Real(0.9, 0.999, scale="reverse_log"),
        "layers": Int(1, 3),
        "dropout": Fixed(0.1),
    })


def score_of(trial) -> float:
    return (math.log10(trial.params["lr"]) + 2.5) ** 2 + {"adam": 0.0, "sgd": 0.3, "nesterov": 0.1}[trial.params["opt"]]


def objective(trial):
    if trial.index == 3:
        raise ValueError("shape mismatch in layer 2")
    if trial.index == 4:
        trial.report(0, val_error=float("nan"))
    base = OUTLIER if trial.index == 5 else score_of(trial)
    for step in range(0, 50, 10):
        trial.report(step, val_error=base + abs(step - 30) / 100.0, train_loss=base + 1.0 / (step + 1))


@pytest.fixture()
def study(db_url) -> Study:
    s = Study.create("plots", space(), storage=db_url, seed=0, num_trials=24, notes="plot test")
    s.run(objective, progress=False)
    return s


def draw(fig):
    FigureCanvasAgg(fig).draw()
    return fig


def legend_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def right_of_axes(ax) -> bool:
    return ax.get_legend().get_window_extent().x0 >= ax.get_window_extent().x1


# ---------------------------------------------------------------------------------------------
# item 20: the cause of "identical low and high xlims"
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_trials", [1, 2, 6])
def test_no_singular_xlim_warning_for_log_scientific_or_single_value_axes(db_url, num_trials, tmp_path):
    # pytest turns warnings into errors: the old code warned here (first axvline on a log axis
    # autoscaled to a single x value).
    s = Study.create("one", SearchSpace({"wd": Real(1e-5, 1e-2, scale="log", role="scientific"),
                                         "bs": Discrete([64]), "x": Real(0.0, 1.0)}),
                     storage=db_url, seed=0, num_trials=num_trials)
    s.run(lambda t: t.report(0, val_error=0.1 * t.index), progress=False)
    paths = plots.write_all(s.analysis(), tmp_path, n_resamples=50)
    assert {p.name for p in paths} >= {"axis_wd.png", "axis_bs.png", "axis_x.png"}
    fig = draw(plots.axis_plot(s.analysis(), s.space["wd"]))
    lo, hi = fig.axes[0].get_xlim()
    assert lo < 1e-5 and hi > 1e-2  # the space's range with margins, not autoscaled


# ---------------------------------------------------------------------------------------------
# item 18: axis plots
# ---------------------------------------------------------------------------------------------


def test_axis_plot_colours_by_scientific_value_clips_outliers_legend_off_data(study):
    a = study.analysis()
    fig = draw(plots.axis_plot(a, study.space["lr"]))
    ax = fig.axes[0]
    texts = legend_texts(ax)
    assert texts[:3] == ["opt=adam", "opt=sgd", "opt=nesterov"]  # search-space order
    feasible = [t for t in study.trials() if t.status == "complete"]
    best = min(feasible, key=lambda t: t.score)
    assert f"best (#{best.index})" in texts
    assert f"1 beyond the y range (worst {OUTLIER + 0.3:.4g})" in texts
    assert "1 infeasible" in texts
    assert right_of_axes(ax)
    # one colour per group, and each group's points are exactly its trials (outlier excluded)
    groups = ax.collections[:3]
    assert len({tuple(np.round(c.get_facecolor()[0], 3)) for c in groups}) == 3
    for c, value in zip(groups, ["adam", "sgd", "nesterov"]):
        ys = sorted(c.get_offsets()[:, 1])
        expected = sorted(t.score for t in feasible if t.params["opt"] == value and t.score < OUTLIER)
        assert ys == pytest.approx(expected)
    low, high = ax.get_ylim()
    others = [t.score for t in feasible if t.score < OUTLIER]
    assert low <= min(others) and max(others) <= high < OUTLIER  # one diverged trial does not squash the rest


def test_axis_plot_without_outliers_shows_every_score(db_url):
    s = Study.create("smooth", space(), storage=db_url, seed=0, num_trials=12)
    s.run(lambda t: t.report(0, val_error=score_of(t)), progress=False)
    ax = draw(plots.axis_plot(s.analysis(), s.space["lr"])).axes[0]
    scores = [t.score for t in s.trials()]
    low, high = ax.get_ylim()
    assert low <= min(scores) and max(scores) <= high
    assert not any("beyond" in t for t in legend_texts(ax))


def test_reverse_log_axis(study):
    ax = draw(plots.axis_plot(study.analysis(), study.space["beta2"])).axes[0]
    assert ax.get_xscale() == "function"
    ticks = [t for t in ax.get_xticks() if 0.9 <= t <= 0.999]
    assert ticks == pytest.approx([0.9, 0.99, 0.999])
    # equal decades of 1 - x get equal widths on screen
    x = ax.transData.transform([(0.9, 0), (0.99, 0), (0.999, 0)])[:, 0]
    assert x[1] - x[0] == pytest.approx(x[2] - x[1], rel=1e-6)


# ---------------------------------------------------------------------------------------------
# item 19: scientific, bootstrap, curves
# ---------------------------------------------------------------------------------------------


def test_scientific_plot_spacing_labels_and_legend(study):
    ax = draw(plots.scientific_plot(study.analysis(), n_resamples=100)).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["opt=adam", "opt=sgd", "opt=nesterov"]
    assert list(ax.get_xticks()) == [0, 1, 2]
    lo, hi = ax.get_xlim()
    assert lo < -0.5 and hi > 2.5
    assert ax.get_xlabel() == "opt"
    assert right_of_axes(ax)
    fig_box = ax.figure.bbox
    for label in ax.get_xticklabels():  # not cut off
        box = label.get_window_extent()
        assert box.x0 >= fig_box.x0 and box.x1 <= fig_box.x1 and box.y0 >= fig_box.y0


def test_bootstrap_ticks_are_regular_integers(db_url):
    s = Study.create("boot", space(), storage=db_url, seed=0, num_trials=37)
    s.run(lambda t: t.report(0, val_error=score_of(t)), progress=False)
    ax = draw(plots.bootstrap_plot(s.analysis(), n_resamples=50)).axes[0]
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert len(ticks) >= 4 and all(float(t).is_integer() for t in ticks)
    assert len(set(np.round(np.diff(ticks), 9))) == 1


def test_curves_mark_best_step_and_label_scientific_value(study):
    a = study.analysis()
    fig = draw(plots.curves_plot(a, k=3))
    ax = fig.axes[0]
    best = a.best_trials(3)
    texts = legend_texts(ax)
    for t in best:
        label = f"#{t.index} opt={t.params['opt']}: val_error={t.score:.4g} at step {t.best_step}"
        assert label in texts
    marks = {tuple(np.round(o, 9)) for c in ax.collections for o in c.get_offsets()}
    for t in best:
        assert t.best_step == 30
        assert (30.0, round(t.score, 9)) in marks
    assert "best step" in texts and right_of_axes(ax)


# ---------------------------------------------------------------------------------------------
# item 21: the HTML report
# ---------------------------------------------------------------------------------------------


def test_report_details_reasons_durations_order_and_self_contained(study, tmp_path):
    path = study.analysis().report(tmp_path / "rep", n_resamples=100)
    page = path.read_text(encoding="utf-8")
    # raw JSON config only inside a <details>; the hyperparameter table stays
    details = re.search(r"<details><summary>Stored config \(JSON\)</summary><pre>(.*?)</pre></details>", page, re.S)
    assert details and "&quot;num_trials&quot;: 24" in details.group(1)
    assert page.count("&quot;num_trials&quot;") == 1
    assert "<th>hyperparameter</th>" in page
    # every trials table: duration, attempts; params in search-space order (dropout is Fixed)
    head = re.search(r"<h2>All trials</h2>.*?<tr>(.*?)</tr>", page, re.S).group(1)
    cols = re.findall(r"<th>(.*?)</th>", head)
    assert cols == ["#", "status", "val_error", "best step", "duration (s)", "attempts", "opt", "lr",
                    "beta2", "layers", "dropout", "reason (failed / infeasible)"]
    # reasons of the failed and the infeasible trial, with the traceback under the summary
    section = page[page.index("<h2>Failed and infeasible trials</h2>"):page.index("<h2>All trials</h2>")]
    assert "ValueError: shape mismatch in layer 2" in section and "Traceback (most recent call last)" in section
    assert "non-finite val_error=nan at step 0" in section
    # sortable tables, inline script, nothing external
    assert "<table class=\"sortable\">" in page and "<script>" in page
    assert not re.search(r"(src|href)=['\"]?(https?:|//)", page)
    assert re.findall(r"<img src='([a-z]+):", page) == ["data"] * page.count("<img ")
    durations = re.findall(r'<td class="num" data-v="([0-9.e-]+)">', page)
    assert durations  # numbers carry their sort value


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="needs headless Chromium")
def test_report_tables_sort_by_clicking_a_header_in_a_browser(study, tmp_path):
    path = study.analysis().report(tmp_path / "rep", n_resamples=50)
    page = path.read_text(encoding="utf-8")
    click = (
        "<script>var t=document.querySelectorAll('table.sortable');var last=t[t.length-1];"
        "var th=last.querySelectorAll('tr:first-child th');th[2].click();"
        "document.title='ORDER:'+Array.prototype.slice.call(last.querySelectorAll('tr')).slice(1)"
        ".map(function(r){return r.children[0].textContent}).join(',');</script></body>"
    )
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", click), encoding="utf-8")
    out = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=180,
    ).stdout
    order = [int(i) for i in re.search(r"<title>ORDER:([0-9,]*)</title>", out).group(1).split(",")]
    trials = study.trials()
    scored = sorted((t for t in trials if t.score is not None), key=lambda t: (t.score, t.index))
    unscored = [t.index for t in trials if t.score is None]
    assert order[:len(scored)] == [t.index for t in scored]  # ascending numbers, empty cells last
    assert sorted(order[len(scored):]) == unscored
