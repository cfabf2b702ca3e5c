"""Automatic plots of a tuning study (playbook 4.4-4.6, FAQ 7.7).

Every function builds a ``matplotlib.figure.Figure`` directly (no ``pyplot``: no global figure
registry, nothing to close, no GUI backend; PNGs are rendered by Agg) and returns it;
:func:`write_all` saves them all.

- :func:`axis_plot`: basic hyperparameter axis plot, score versus one hyperparameter, each point
  a trial; infeasible trials as red X at the worse edge of the plot; log x axis for log-scaled
  hyperparameters; categorical values at integer positions; dashed lines at the search-space
  edges (playbook 4.4, "Identifying bad search space boundaries", figure 1).
- :func:`isolation_plot`: for one nuisance hyperparameter, its axis is bucketed and the best
  trial per bucket is kept, one series per value of the scientific hyperparameters (playbook
  4.5, "Detecting whether a change is useful with isolation plots").
- :func:`curves_plot`: training curves (every reported metric versus step) of the best trials
  (playbook 4.4, "Examining the training curves").
- :func:`bootstrap_plot`: box plot of the best score versus the number of trials (FAQ 7.7,
  figure 3).
- :func:`scientific_plot`: best score per scientific value with its bootstrap spread.
- :func:`retrospective_plot`: best step per trial and its histogram relative to the training
  length (playbook "Deciding how long to train").

Example:
    >>> from playbook.tune import plots
    >>> paths = plots.write_all(study.analysis(), "plots")   # doctest: +SKIP
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from matplotlib.figure import Figure

from playbook.tune.analysis import (
    Analysis,
    is_feasible,
    is_ordered,
    numeric_values,
    sort_best,
    spec_scale,
)

__all__ = [
    "axis_plot",
    "isolation_plot",
    "curves_plot",
    "bootstrap_plot",
    "scientific_plot",
    "retrospective_plot",
    "write_all",
    "save",
]

_BEST_COLOR = "tab:orange"
_DPI = 100


def _new_figure(width: float = 6.0, height: float = 4.0) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    return fig, fig.add_subplot(1, 1, 1)


def save(fig: Figure, path: "str | Path") -> Path:
    """Save a figure as PNG (Agg) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def slug(text: str) -> str:
    """File-name-safe version of a hyperparameter key (``"optimizer=adam/lr"`` ->
    ``"optimizer-adam_lr"``)."""
    text = text.replace("=", "-").replace("/", "_")
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "param"


def _axis_position(hp: Any, value: Any) -> float:
    """x coordinate of a value: the value itself for numbers, the index for categories."""
    spec = hp.spec
    if is_ordered(spec) or numeric_values(spec):
        return float(value)
    try:
        return float(spec.index(value)) if hasattr(spec, "index") else float(
            list(spec.values).index(value))
    except ValueError:
        return math.nan


def _setup_x_axis(ax: Any, hp: Any) -> None:
    spec = hp.spec
    if is_ordered(spec):
        if spec_scale(spec) == "log":
            ax.set_xscale("log")
        for bound in (spec.lo, spec.hi):
            ax.axvline(float(bound), color="0.6", linestyle="--", linewidth=0.8, zorder=0)
    elif numeric_values(spec):
        if spec_scale(spec) == "log" or (
            min(spec.values) > 0 and max(spec.values) / min(spec.values) >= 100
        ):
            ax.set_xscale("log")
    else:
        values = list(spec.values)
        ax.set_xticks(range(len(values)))
        ax.set_xticklabels([str(v) for v in values])
        ax.set_xlim(-0.5, len(values) - 0.5)
    label = hp.name if hp.key == hp.name else f"{hp.name} ({hp.key})"
    ax.set_xlabel(label)


def _mark_infeasible(ax: Any, xs: Sequence[float], mode: str, label: str = "infeasible") -> None:
    """Red X at the worse edge: top of the axes for ``min``, bottom for ``max``."""
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return
    y = 0.97 if mode == "min" else 0.03
    ax.scatter(
        xs, [y] * len(xs), marker="x", color="red", s=40, linewidths=1.5,
        transform=ax.get_xaxis_transform(), clip_on=False, label=label, zorder=3,
    )


def axis_plot(analysis: Analysis, hp: Any) -> Figure:
    """Basic hyperparameter axis plot: score versus ``hp`` (playbook 4.4, figure 1).

    Each point is a finished trial in which ``hp`` is active; the best trial is highlighted;
    infeasible trials are red X at the worse edge of the plot (top for ``mode="min"``).
    """
    fig, ax = _new_figure()
    trials = [t for t in analysis.finished() if hp.active(t.params) and hp.name in t.params]
    feasible = [t for t in trials if is_feasible(t)]
    infeasible = [t for t in trials if not is_feasible(t)]
    xs = [_axis_position(hp, t.params[hp.name]) for t in feasible]
    ys = [float(t.score) for t in feasible]
    _setup_x_axis(ax, hp)
    if feasible:
        ax.scatter(xs, ys, s=22, color="tab:blue", alpha=0.8, label="trial", zorder=2)
        best = sort_best(feasible, analysis.mode)[0]
        ax.scatter(
            [_axis_position(hp, best.params[hp.name])], [float(best.score)], marker="*",
            s=180, color=_BEST_COLOR, edgecolors="black", label=f"best (#{best.index})",
            zorder=4,
        )
    _mark_infeasible(ax, [_axis_position(hp, t.params[hp.name]) for t in infeasible],
                     analysis.mode)
    ax.set_ylabel(f"{analysis.metric} ({analysis.mode})")
    ax.set_title(f"{analysis.study.name}: {analysis.metric} vs {hp.name}")
    if feasible or infeasible:
        ax.legend(loc="best", fontsize="small")
    ax.grid(True, alpha=0.3)
    return fig


def _buckets(hp: Any, values: Sequence[Any], n_buckets: int) -> list[Any]:
    """Bucket id per value: equal slices of the unit cube for Real/Int, the value otherwise."""
    spec = hp.spec
    if is_ordered(spec):
        out = []
        for v in values:
            u = float(spec.to_unit(v))
            out.append(min(n_buckets - 1, max(0, int(u * n_buckets))))
        return out
    return list(values)


def isolation_plot(analysis: Analysis, hp: Any, *, n_buckets: int = 10) -> Figure:
    """Approximate isolation plot for nuisance hyperparameter ``hp`` (playbook 4.5).

    The axis of ``hp`` is cut into ``n_buckets`` equal slices in unit coordinates (each value
    is its own slice for Discrete/Categorical specs); the best feasible trial of each slice is
    drawn at its own ``hp`` value, one connected series per value of the scientific
    hyperparameters. The other nuisance hyperparameters are thereby optimized away.
    """
    if n_buckets < 1:
        raise ValueError(f"Invalid n_buckets: {n_buckets}; it must be >= 1")
    fig, ax = _new_figure()
    _setup_x_axis(ax, hp)
    scientific = [h for h in analysis.scientific() if h.key != hp.key]
    groups: dict[tuple, list] = {}
    for t in analysis.feasible():
        if not (hp.active(t.params) and hp.name in t.params):
            continue
        key = analysis._group_key(t, scientific)
        groups.setdefault(key, []).append(t)
    for key, ts in groups.items():
        ids = _buckets(hp, [t.params[hp.name] for t in ts], n_buckets)
        best_by_bucket: dict[Any, list] = {}
        for b, t in zip(ids, ts):
            best_by_bucket.setdefault(b, []).append(t)
        best = [sort_best(v, analysis.mode)[0] for v in best_by_bucket.values()]
        pts = sorted((_axis_position(hp, t.params[hp.name]), float(t.score)) for t in best)
        label = (", ".join(f"{h.name}={v}" for h, v in zip(scientific, key))
                 if scientific else "best per bucket")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_ylabel(f"best {analysis.metric} per bucket")
    ax.set_title(f"Isolation plot: {hp.name} (other nuisance params optimized away)",
                 fontsize="medium")
    if groups:
        ax.legend(loc="best", fontsize="small")
    ax.grid(True, alpha=0.3)
    return fig


def curves_plot(analysis: Analysis, *, k: int = 5, metrics: Optional[Sequence[str]] = None,
                max_metrics: int = 4) -> Figure:
    """Training curves (metric versus step) of the ``k`` best trials (playbook 4.4).

    One panel per reported metric, the study metric first, at most ``max_metrics`` panels.
    """
    best = analysis.best_trials(k)
    curves = {t.index: analysis.curves(t.index) for t in best}
    if metrics is None:
        names: list[str] = []
        for c in curves.values():
            names.extend(n for n in c if n not in names)
        names.sort(key=lambda n: (n != analysis.metric, n))
        metrics = names[:max_metrics] or [analysis.metric]
    fig = Figure(figsize=(6.0, 2.6 * len(metrics) + 0.6), dpi=_DPI, layout="constrained")
    axes = [fig.add_subplot(len(metrics), 1, i + 1) for i in range(len(metrics))]
    for ax, name in zip(axes, metrics):
        drawn = False
        for t in best:
            if name in curves[t.index]:
                steps, values = curves[t.index][name]
                ax.plot(steps, values, marker="." if len(steps) < 30 else None,
                        label=f"#{t.index} ({analysis.metric}={float(t.score):.4g})")
                drawn = True
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
        if drawn:
            ax.legend(loc="best", fontsize="x-small")
        else:
            ax.text(0.5, 0.5, "no reports", ha="center", va="center", transform=ax.transAxes)
    axes[-1].set_xlabel("step")
    axes[0].set_title(f"Training curves of the {len(best)} best trials")
    return fig


def bootstrap_plot(analysis: Analysis, *, n_resamples: int = 1000, seed: Optional[int] = 0,
                   ks: Optional[Sequence[int]] = None) -> Figure:
    """Box plot of the best score versus the number of trials (FAQ 7.7, figure 3).

    Boxes show the quartiles of the best score over bootstrap resamples (whiskers 5-95%);
    resamples with no feasible trial are left out of the boxes.
    """
    boot = analysis.bootstrap(ks, n_resamples=n_resamples, seed=seed)
    fig, ax = _new_figure(max(6.0, 0.35 * len(boot.ks) + 2), 4.0)
    data, positions = [], []
    for k, row in zip(boot.ks, boot.samples):
        finite = row[~np.isnan(row)]
        if finite.size:
            data.append(finite)
            positions.append(int(k))
    if data:
        width = 0.6 * (min(np.diff(positions)) if len(positions) > 1 else 1)
        ax.boxplot(data, positions=positions, widths=width, whis=(5, 95), showfliers=False,
                   manage_ticks=False)
        if len(positions) > 12:
            step = max(1, len(positions) // 10)
            ax.set_xticks(positions[::step])
        else:
            ax.set_xticks(positions)
    ax.set_xlabel("number of trials (resampled with replacement)")
    ax.set_ylabel(f"best {analysis.metric}")
    ax.set_title(f"Best {analysis.metric} vs number of trials ({boot.n_trials} finished, "
                 f"{n_resamples} resamples)", fontsize="medium")
    ax.grid(True, alpha=0.3)
    return fig


def scientific_plot(analysis: Analysis, *, n_resamples: int = 1000,
                    seed: Optional[int] = 0) -> Figure:
    """Best score per value of the scientific hyperparameters, with bootstrap IQR error bars."""
    comps = [c for c in analysis.compare_scientific(n_resamples=n_resamples, seed=seed)
             if c.best is not None]
    fig, ax = _new_figure(max(6.0, 0.8 * len(comps) + 2), 4.0)
    xs = np.arange(len(comps))
    if comps:
        q = np.array([c.spread for c in comps])
        ax.vlines(xs, q[:, 0], q[:, 2], color="tab:blue", linewidth=6, alpha=0.4,
                  label="bootstrap 25-75%")
        ax.scatter(xs, q[:, 1], marker="_", s=200, color="tab:blue", label="bootstrap median")
        ax.scatter(xs, [c.best_score for c in comps], marker="*", s=150, color=_BEST_COLOR,
                   edgecolors="black", label="best trial", zorder=3)
        ax.legend(loc="best", fontsize="small")
    ax.set_xticks(xs)
    ax.set_xticklabels([c.label for c in comps], rotation=20, ha="right", fontsize="small")
    ax.set_ylabel(f"best {analysis.metric}")
    ax.set_title("Best score per scientific value", fontsize="medium")
    ax.grid(True, alpha=0.3)
    return fig


def retrospective_plot(analysis: Analysis, *, late: float = 0.9) -> Figure:
    """Best step of every feasible trial versus trial index, and the histogram of best step /
    training length (playbook "Deciding how long to train": "plot the training step that
    retrospective checkpoint selection finds in order to refine the choice of max_train_steps").

    The length is the recorded ``max_train_steps`` (param or study config) when there is one,
    else the trial's last reported step; the last ``1 - late`` of training is shaded.
    """
    retro = analysis.retrospective()
    fig = Figure(figsize=(10.0, 4.0), dpi=_DPI, layout="constrained")
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    if len(retro.indices):
        ax1.scatter(retro.indices, retro.best_steps, color="tab:blue", label="best step")
        best = analysis.best_trials(1)
        if best and best[0].best_step is not None:
            ax1.scatter([best[0].index], [best[0].best_step], marker="*", s=200, color=_BEST_COLOR,
                        edgecolors="black", zorder=3, label=f"best trial #{best[0].index}")
        mts = retro.max_train_steps
        if mts is not None:
            ax1.axhline(mts, color="gray", linestyle="--", label=f"max_train_steps={mts}")
            ax1.axhspan(late * mts, mts, color="tab:red", alpha=0.1)
        ax1.legend(loc="best", fontsize="small")
        frac = retro.fractions[np.isfinite(retro.fractions)]
        ax2.hist(np.clip(frac, 0.0, 1.0), bins=np.linspace(0.0, 1.0, 11), color="tab:blue", edgecolor="white")
        ax2.axvspan(late, 1.0, color="tab:red", alpha=0.1, label=f"last {1 - late:.0%}")
        ax2.legend(loc="best", fontsize="small")
    else:
        for ax in (ax1, ax2):
            ax.text(0.5, 0.5, "no feasible trial with a best step", ha="center", va="center",
                    transform=ax.transAxes)
    ax1.set_xlabel("trial index")
    ax1.set_ylabel(f"step of best {analysis.metric}")
    ax1.set_title("Retrospective checkpoint selection", fontsize="medium")
    ax1.grid(True, alpha=0.3)
    denom = "max_train_steps" if len(retro.recorded) and retro.recorded.all() else "training length"
    ax2.set_xlabel(f"best step / {denom}")
    ax2.set_ylabel("trials")
    ax2.set_xlim(0.0, 1.0)
    ax2.set_title("Where the best checkpoint falls", fontsize="medium")
    ax2.grid(True, alpha=0.3)
    return fig


def write_all(analysis: Analysis, out_dir: "str | Path", *, curves_k: int = 5,
              n_buckets: int = 10, n_resamples: int = 1000,
              seed: Optional[int] = 0) -> list[Path]:
    """Write every automatic plot of a study as PNG (playbook 4.6 "Automate generically useful
    plots"); returns the written paths in a stable order.

    Files: ``axis_<key>.png`` per varied hyperparameter, ``isolation_<key>.png`` per varied
    nuisance hyperparameter, ``curves.png`` (if any trial is feasible), ``bootstrap.png``
    (if any trial finished) and ``scientific.png`` (if there are scientific hyperparameters).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for hp in analysis.hyperparameters():
        paths.append(save(axis_plot(analysis, hp), out / f"axis_{slug(hp.key)}.png"))
    for hp in analysis.nuisance():
        paths.append(save(isolation_plot(analysis, hp, n_buckets=n_buckets),
                          out / f"isolation_{slug(hp.key)}.png"))
    if analysis.feasible():
        paths.append(save(curves_plot(analysis, k=curves_k), out / "curves.png"))
    if analysis.finished():
        paths.append(save(bootstrap_plot(analysis, n_resamples=n_resamples, seed=seed),
                          out / "bootstrap.png"))
    if analysis.scientific() and analysis.feasible():
        paths.append(save(scientific_plot(analysis, n_resamples=n_resamples, seed=seed),
                          out / "scientific.png"))
    if len(analysis.retrospective().indices):
        paths.append(save(retrospective_plot(analysis), out / "retrospective.png"))
    return paths
