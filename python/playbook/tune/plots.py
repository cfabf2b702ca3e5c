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
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter

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
_OUTLIER_COLOR = "0.45"
_DPI = 100
# One colour per scientific value (matplotlib's tab10 without orange, kept for the best star,
# and red, kept for infeasible trials).
_PALETTE = ("tab:blue", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
            "tab:cyan", "tab:gray", "navy", "darkgoldenrod")
# Axis padding, as a fraction of the search-space range in the axis's own scale.
_X_MARGIN = 0.04
# Outlier clipping of the score axis: scores beyond the 90th percentile (10th for ``max``) by
# more than half the distance from the best score to it are drawn as markers on the edge.
_CLIP_QUANTILE = 90.0
_CLIP_SLACK = 0.5
_CLIP_MIN_TRIALS = 5


def _new_figure(width: float = 6.4, height: float = 4.0) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    return fig, fig.add_subplot(1, 1, 1)


def _legend_outside(ax: Any, **kwargs: Any) -> None:
    """Legend to the right of the axes, never over the data (constrained layout makes room)."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
              fontsize="small", frameon=False, **kwargs)


def _value_rank(hp: Any, value: Any) -> tuple:
    """Sort key of a scientific value: its position in the spec's values, else by value."""
    values = list(getattr(hp.spec, "values", None) or [])
    if value is None:
        return (2, 0, "")
    if value in values:
        return (0, values.index(value), "")
    if isinstance(value, str) and value.startswith("["):  # a binned Real: "[lo, hi)"
        try:
            return (0, float(value[1:].split(",")[0]), "")
        except ValueError:
            pass
    if isinstance(value, (int, float)):
        return (0, float(value), "")
    return (1, 0, str(value))


def _group_label(hps: Sequence[Any], key: tuple) -> str:
    return ", ".join(f"{h.name}={v:.4g}" if isinstance(v, float) else f"{h.name}={v}"
                     for h, v in zip(hps, key))


def _scientific_groups(analysis: Analysis, trials: Sequence[Any],
                       exclude_key: Optional[str] = None) -> tuple[list, list[tuple[tuple, list]]]:
    """``(hps, [(key, trials), ...])``: trials grouped by the values of the scientific
    hyperparameters other than ``exclude_key``, in the spec's value order."""
    hps = [h for h in analysis.scientific() if h.key != exclude_key]
    groups: dict[tuple, list] = {}
    for t in trials:
        groups.setdefault(analysis._group_key(t, hps), []).append(t)
    keys = sorted(groups, key=lambda k: tuple(_value_rank(h, v) for h, v in zip(hps, k)))
    return hps, [(k, groups[k]) for k in keys]


def _reverse_log_forward(x: Any) -> Any:
    return -np.log10(np.maximum(1.0 - np.asarray(x, dtype=float), 1e-300))


def _reverse_log_inverse(y: Any) -> Any:
    return 1.0 - 10.0 ** (-np.asarray(y, dtype=float))


def _set_reverse_log_axis(ax: Any, lo: float, hi: float) -> None:
    """x axis where ``1 - x`` is logarithmic (values close to 1 such as Adam's beta2): ticks at
    0.9, 0.99, 0.999, ... with minor ticks at 1 - m 10^-k."""
    ax.set_xscale("function", functions=(_reverse_log_forward, _reverse_log_inverse))
    f_lo, f_hi = float(_reverse_log_forward(lo)), float(_reverse_log_forward(hi))
    major, minor = [], []
    for k in range(math.floor(f_lo) - 1, math.ceil(f_hi) + 2):
        major.append(1.0 - 10.0 ** (-k))
        minor.extend(1.0 - m * 10.0 ** (-k - 1) for m in range(2, 10))
    inside = [t for t in major if f_lo - 0.05 <= _reverse_log_forward(t) <= f_hi + 0.05]
    if len(inside) < 2:  # a range within one decade: the edges as ticks
        inside = sorted(set(inside) | {float(lo), float(hi)})
    ax.xaxis.set_major_locator(FixedLocator(inside))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:.6g}"))
    ax.xaxis.set_minor_locator(FixedLocator(minor))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _padded(lo: float, hi: float, scale: str) -> tuple[float, float]:
    """``(lo, hi)`` widened by ``_X_MARGIN`` of the range in ``scale`` (never a single point)."""
    if scale == "log" and lo > 0:
        a, b = math.log(lo), math.log(hi)
        d = (b - a) * _X_MARGIN or 0.5
        return math.exp(a - d), math.exp(b + d)
    if scale == "reverse_log" and hi < 1:
        a, b = float(_reverse_log_forward(lo)), float(_reverse_log_forward(hi))
        d = (b - a) * _X_MARGIN or 0.5
        return float(_reverse_log_inverse(a - d)), float(_reverse_log_inverse(b + d))
    d = (hi - lo) * _X_MARGIN or max(abs(lo) * 0.5, 0.5)
    return lo - d, hi + d


def _clip_threshold(ys: Sequence[float], mode: str) -> Optional[float]:
    """Score beyond which a feasible trial is an outlier, or ``None`` (nothing to clip).

    ``min``: ``q90 + 0.5 (q90 - best)`` where ``q90`` is the 90th percentile of the scores;
    ``max`` mirrors it with the 10th percentile. Needs at least 5 scores.
    """
    y = np.asarray(ys, dtype=float)
    if y.size < _CLIP_MIN_TRIALS:
        return None
    if mode == "min":
        best, q = float(y.min()), float(np.percentile(y, _CLIP_QUANTILE))
        cut = q + _CLIP_SLACK * (q - best)
        return cut if q > best and float(y.max()) > cut else None
    best, q = float(y.max()), float(np.percentile(y, 100.0 - _CLIP_QUANTILE))
    cut = q - _CLIP_SLACK * (best - q)
    return cut if q < best and float(y.min()) < cut else None


def _set_score_limits(ax: Any, ys: Sequence[float], mode: str, edge_markers: bool) -> None:
    """y range of the drawn scores, with room on the worse edge for the edge markers."""
    if not len(ys):
        return
    lo, hi = float(min(ys)), float(max(ys))
    span = hi - lo or max(abs(hi) * 0.1, 1e-3)
    worse_pad = 0.18 if edge_markers else 0.05
    if mode == "min":
        ax.set_ylim(lo - 0.05 * span, hi + worse_pad * span)
    else:
        ax.set_ylim(lo - worse_pad * span, hi + 0.05 * span)


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
    """Scale, limits and labels of a hyperparameter's x axis.

    The limits come from the search space (its range plus a margin, in the axis's scale), so
    the axis never autoscales on a single x value (a space edge, a one-value axis): that is
    what made matplotlib warn "Attempting to set identical low and high xlims".
    """
    spec = hp.spec
    if is_ordered(spec):
        lo, hi = float(spec.lo), float(spec.hi)
        scale = spec_scale(spec)
        if scale == "log":
            ax.set_xscale("log")
        elif scale == "reverse_log":
            _set_reverse_log_axis(ax, lo, hi)
        ax.set_xlim(*_padded(lo, hi, scale))
        for bound in (lo, hi):
            ax.axvline(bound, color="0.6", linestyle="--", linewidth=0.8, zorder=0)
    elif numeric_values(spec):
        values = [float(v) for v in spec.values]
        lo, hi = min(values), max(values)
        log = spec_scale(spec) == "log" or (lo > 0 and hi / lo >= 100)
        if log:
            ax.set_xscale("log")
        ax.set_xlim(*_padded(lo, hi, "log" if log and lo > 0 else "linear"))
        if len(values) <= 12:
            ax.xaxis.set_major_locator(FixedLocator(sorted(set(values))))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:.6g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        values = list(spec.values)
        ax.set_xticks(range(len(values)))
        ax.set_xticklabels([str(v) for v in values])
        ax.set_xlim(-0.5, len(values) - 0.5)
    label = hp.name if hp.key == hp.name else f"{hp.name} ({hp.key})"
    if is_ordered(spec) and spec_scale(spec) == "reverse_log":
        label += "  [1 - x on a log scale]"
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


def _mark_outliers(ax: Any, xs: Sequence[float], ys: Sequence[float], mode: str) -> None:
    """Grey triangles on the worse edge (below the infeasible X) for clipped scores."""
    if not xs:
        return
    worst = max(ys) if mode == "min" else min(ys)
    y, marker = (0.91, "^") if mode == "min" else (0.09, "v")
    ax.scatter(
        xs, [y] * len(xs), marker=marker, color=_OUTLIER_COLOR, s=36, zorder=3,
        transform=ax.get_xaxis_transform(), clip_on=False,
        label=f"{len(xs)} beyond the y range (worst {worst:.4g})",
    )


def axis_plot(analysis: Analysis, hp: Any) -> Figure:
    """Basic hyperparameter axis plot: score versus ``hp`` (playbook 4.4, figure 1).

    Each point is a finished trial in which ``hp`` is active, coloured by the value of the
    other scientific hyperparameters (legend); the best trial is starred; infeasible trials are
    red X at the worse edge of the plot (top for ``mode="min"``). The y range is that of the
    useful scores: a feasible score beyond the 90th percentile (10th for ``max``) by more than
    half the distance from the best score to it is drawn as a grey triangle on the worse edge,
    and the legend counts them, so that one diverged trial does not squash the others. The
    legend sits to the right of the axes, off the data.
    """
    fig, ax = _new_figure(7.6, 4.2)
    trials = [t for t in analysis.finished() if hp.active(t.params) and hp.name in t.params]
    feasible = [t for t in trials if is_feasible(t)]
    infeasible = [t for t in trials if not is_feasible(t)]
    _setup_x_axis(ax, hp)
    cut = _clip_threshold([float(t.score) for t in feasible], analysis.mode)

    def beyond(t: Any) -> bool:
        if cut is None:
            return False
        return float(t.score) > cut if analysis.mode == "min" else float(t.score) < cut

    shown = [t for t in feasible if not beyond(t)]
    clipped = [t for t in feasible if beyond(t)]
    hps, groups = _scientific_groups(analysis, shown, exclude_key=hp.key)
    for i, (key, ts) in enumerate(groups):
        ax.scatter([_axis_position(hp, t.params[hp.name]) for t in ts], [float(t.score) for t in ts],
                   s=24, color=_PALETTE[i % len(_PALETTE)], alpha=0.85, zorder=2,
                   label=_group_label(hps, key) if hps else "trial")
    if feasible:
        best = sort_best(feasible, analysis.mode)[0]
        ax.scatter(
            [_axis_position(hp, best.params[hp.name])], [float(best.score)], marker="*",
            s=200, color=_BEST_COLOR, edgecolors="black", label=f"best (#{best.index})",
            zorder=4,
        )
    _set_score_limits(ax, [float(t.score) for t in shown], analysis.mode,
                      edge_markers=bool(clipped or infeasible))
    _mark_outliers(ax, [_axis_position(hp, t.params[hp.name]) for t in clipped],
                   [float(t.score) for t in clipped], analysis.mode)
    _mark_infeasible(ax, [_axis_position(hp, t.params[hp.name]) for t in infeasible],
                     analysis.mode, label=f"{len(infeasible)} infeasible")
    ax.set_ylabel(f"{analysis.metric} ({analysis.mode})")
    ax.set_title(f"{analysis.study.name}: {analysis.metric} vs {hp.name}", fontsize="medium")
    if feasible or infeasible:
        _legend_outside(ax)
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
    fig, ax = _new_figure(7.6, 4.2)
    _setup_x_axis(ax, hp)
    scientific = [h for h in analysis.scientific() if h.key != hp.key]
    groups: dict[tuple, list] = {}
    for t in analysis.feasible():
        if not (hp.active(t.params) and hp.name in t.params):
            continue
        key = analysis._group_key(t, scientific)
        groups.setdefault(key, []).append(t)
    series = []
    for key in sorted(groups, key=lambda k: tuple(_value_rank(h, v) for h, v in zip(scientific, k))):
        ts = groups[key]
        ids = _buckets(hp, [t.params[hp.name] for t in ts], n_buckets)
        best_by_bucket: dict[Any, list] = {}
        for b, t in zip(ids, ts):
            best_by_bucket.setdefault(b, []).append(t)
        best = [sort_best(v, analysis.mode)[0] for v in best_by_bucket.values()]
        pts = sorted((_axis_position(hp, t.params[hp.name]), float(t.score)) for t in best)
        label = _group_label(scientific, key) if scientific else "best per bucket"
        series.append((label, pts))
    all_ys = [y for _, pts in series for _, y in pts]
    cut = _clip_threshold(all_ys, analysis.mode)
    beyond = (lambda y: False) if cut is None else (
        (lambda y: y > cut) if analysis.mode == "min" else (lambda y: y < cut))
    for i, (label, pts) in enumerate(series):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label,
                color=_PALETTE[i % len(_PALETTE)])
    clipped = [p for _, pts in series for p in pts if beyond(p[1])]
    _set_score_limits(ax, [y for y in all_ys if not beyond(y)], analysis.mode, bool(clipped))
    _mark_outliers(ax, [p[0] for p in clipped], [p[1] for p in clipped], analysis.mode)
    ax.set_ylabel(f"best {analysis.metric} per bucket")
    ax.set_title(f"Isolation plot: {hp.name} (other nuisance params optimized away)",
                 fontsize="medium")
    if groups:
        _legend_outside(ax)
    ax.grid(True, alpha=0.3)
    return fig


def curves_plot(analysis: Analysis, *, k: int = 5, metrics: Optional[Sequence[str]] = None,
                max_metrics: int = 4) -> Figure:
    """Training curves (metric versus step) of the ``k`` best trials (playbook 4.4).

    One panel per reported metric, the study metric first, at most ``max_metrics`` panels.
    Each trial is labelled with its index, its scientific value(s) and its score; a ringed
    dot marks the step of its best value of the study metric (the retrospectively selected
    checkpoint, playbook 6.2).
    """
    best = analysis.best_trials(k)
    curves = {t.index: analysis.curves(t.index) for t in best}
    if metrics is None:
        names: list[str] = []
        for c in curves.values():
            names.extend(n for n in c if n not in names)
        names.sort(key=lambda n: (n != analysis.metric, n))
        metrics = names[:max_metrics] or [analysis.metric]
    fig = Figure(figsize=(8.0, 2.4 * len(metrics) + 0.8), dpi=_DPI, layout="constrained")
    axes = [fig.add_subplot(len(metrics), 1, i + 1) for i in range(len(metrics))]
    hps = analysis.scientific()
    colors = {t.index: f"C{i % 10}" for i, t in enumerate(best)}
    for ax, name in zip(axes, metrics):
        drawn = False
        for t in best:
            if name not in curves[t.index]:
                continue
            steps, values = curves[t.index][name]
            sci = _group_label(hps, analysis._group_key(t, hps)) if hps else ""
            step_text = "" if t.best_step is None else f" at step {t.best_step}"
            label = f"#{t.index}{' ' + sci if sci else ''}: {analysis.metric}={float(t.score):.4g}{step_text}"
            ax.plot(steps, values, marker="." if len(steps) < 30 else None, color=colors[t.index],
                    label=label)
            if name == analysis.metric and t.best_step is not None:
                ax.scatter([t.best_step], [float(t.score)], s=70, facecolors="none",
                           edgecolors=colors[t.index], linewidths=1.8, zorder=4)
            drawn = True
        if name == analysis.metric and drawn:
            ax.scatter([], [], s=70, facecolors="none", edgecolors="black", linewidths=1.8,
                       label="best step")
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
        if drawn:
            if ax is axes[0]:
                _legend_outside(ax, title="trial")
        else:
            ax.text(0.5, 0.5, "no reports", ha="center", va="center", transform=ax.transAxes)
    axes[-1].set_xlabel("step")
    axes[0].set_title(f"Training curves of the {len(best)} best trials", fontsize="medium")
    return fig


def bootstrap_plot(analysis: Analysis, *, n_resamples: int = 1000, seed: Optional[int] = 0,
                   ks: Optional[Sequence[int]] = None) -> Figure:
    """Box plot of the best score versus the number of trials (FAQ 7.7, figure 3).

    Boxes show the quartiles of the best score over bootstrap resamples (whiskers 5-95%);
    resamples with no feasible trial are left out of the boxes. The x axis has regular integer
    ticks whatever the ``ks``.
    """
    boot = analysis.bootstrap(ks, n_resamples=n_resamples, seed=seed)
    fig, ax = _new_figure(6.4, 4.0)
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
        ax.set_xlim(positions[0] - width, positions[-1] + width)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=10, integer=True, min_n_ticks=1))
    ax.set_xlabel("number of trials (resampled with replacement)")
    ax.set_ylabel(f"best {analysis.metric}")
    ax.set_title(f"Best {analysis.metric} vs number of trials\n({boot.n_trials} finished, "
                 f"{n_resamples} resamples; boxes 25-75%, whiskers 5-95%)", fontsize="medium")
    ax.grid(True, alpha=0.3)
    return fig


def scientific_plot(analysis: Analysis, *, n_resamples: int = 1000,
                    seed: Optional[int] = 0) -> Figure:
    """Best score per value of the scientific hyperparameters, with bootstrap IQR error bars.

    Values are evenly spaced in the order the search space declares them.
    """
    hps = analysis.scientific()
    comps = [c for c in analysis.compare_scientific(n_resamples=n_resamples, seed=seed)
             if c.best is not None]
    comps.sort(key=lambda c: tuple(_value_rank(h, c.values.get(h.name)) for h in hps))
    fig, ax = _new_figure(max(6.4, 0.9 * len(comps) + 3.0), 4.2)
    xs = np.arange(len(comps))
    if comps:
        q = np.array([c.spread for c in comps])
        ax.vlines(xs, q[:, 0], q[:, 2], color="tab:blue", linewidth=8, alpha=0.4,
                  label="bootstrap 25-75%")
        ax.scatter(xs, q[:, 1], marker="_", s=300, color="tab:blue", label="bootstrap median")
        ax.scatter(xs, [c.best_score for c in comps], marker="*", s=170, color=_BEST_COLOR,
                   edgecolors="black", label="best trial", zorder=3)
        _legend_outside(ax)
    ax.set_xticks(xs)
    ax.set_xticklabels([c.label for c in comps], rotation=20 if len(comps) > 3 else 0,
                       ha="right" if len(comps) > 3 else "center", fontsize="small")
    ax.set_xlim(-0.6, max(len(comps), 1) - 0.4)
    ax.set_xlabel(", ".join(h.name for h in hps) or "all trials")
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
