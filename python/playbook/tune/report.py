"""Self-contained HTML report of a study (playbook 4.4-4.6, 6.3, FAQ 7.7).

:func:`write_report` writes every automatic plot (see :mod:`playbook.tune.plots`) as PNG and one
HTML page, ``report.html``, that needs nothing else: the PNGs are embedded as base64 ``data:``
URIs. The page holds the study configuration and notes (playbook 6.3 "Setting up experiment
tracking"), the status counts and infeasible fraction, the warnings (bad search-space
boundaries, playbook 4.4), the best trials overall and per scientific value (4.5), the bootstrap
table of the best score versus the number of trials (FAQ 7.7) and the plots.

Example:
    >>> path = study.analysis().report("report")   # doctest: +SKIP
    >>> path.name                                   # doctest: +SKIP
    'report.html'
"""

from __future__ import annotations

import base64
import html
import json
import time
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from playbook.tune import plots as _plots
from playbook.tune.analysis import Analysis
from playbook.tune.cli import _fmt  # one cell formatter for the text and HTML tables

__all__ = ["write_report", "render_html", "data_uri"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3} td.num{text-align:right;font-variant-numeric:tabular-nums}
.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:.4em .8em;margin:.3em 0}
.ok{background:#eef8ee;border-left:4px solid #40a040;padding:.4em .8em}
figure{display:inline-block;margin:.5em;vertical-align:top}
figure img{max-width:520px;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto}
"""


def data_uri(path: "str | Path", mime: str = "image/png") -> str:
    """``data:`` URI embedding a file (base64)."""
    payload = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"data:{mime};base64,{payload}"


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for v in row:
            cls = ' class="num"' if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
            cells.append(f"<td{cls}>{html.escape(_fmt(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _trials_table(analysis: Analysis, trials: Sequence[Any]) -> str:
    names: list[str] = []
    for t in trials:
        names.extend(n for n in t.params if n not in names)
    headers = ["#", "status", analysis.metric, "best step", "attempts"] + names
    rows = [[t.index, t.status, None if t.score is None else float(t.score), t.best_step,
             getattr(t, "attempts", None)] + [t.params.get(n) for n in names] for t in trials]
    return _table(headers, rows)


def _space_rows(analysis: Analysis) -> list[list[Any]]:
    rows = []
    for hp in analysis.hyperparameters(varied_only=False):
        spec = hp.spec
        if hasattr(spec, "lo"):
            desc = f"{type(spec).__name__}[{spec.lo}, {spec.hi}] {getattr(spec, 'scale', '')}"
        elif hasattr(spec, "values"):
            desc = f"{type(spec).__name__}{list(spec.values)}"
        else:
            desc = f"{type(spec).__name__}({getattr(spec, 'value', '')})"
        cond = "" if hp.condition is None else f"{hp.condition[0]}={hp.condition[1]}"
        rows.append([hp.key, hp.role, desc.strip(), cond])
    return rows


def _retrospective_section(analysis: Analysis) -> list[str]:
    """Retrospective checkpoint selection (best step vs training length) and resumed trials."""
    parts = []
    retro = analysis.retrospective()
    if len(retro.indices):
        frac = retro.fractions
        mts = retro.max_train_steps
        length = f"max_train_steps={mts}" if mts is not None else (
            "each trial's max_train_steps" if retro.recorded.all() else "each trial's last reported step")
        parts.append("<h2>Retrospective checkpoint selection</h2>")
        parts.append(
            f"<p>Best step / training length ({html.escape(length)}) over {len(frac)} feasible trials: "
            f"median {html.escape(_fmt(float(np.nanmedian(frac))))}, "
            f"{int(np.sum(frac >= 0.9))} in the last 10%, {int(np.sum(frac < 0.1))} in the first 10% "
            "(playbook &quot;Deciding how long to train&quot;; see retrospective.png).</p>")
    resumed = analysis.resumed_trials()
    if resumed:
        parts.append("<h2>Resumed trials</h2>")
        parts.append(f"<p>{len(resumed)} trial(s) ran more than once (interrupted or re-queued, then "
                     "resumed from their checkpoints when the objective restores them).</p>")
        parts.append(_trials_table(analysis, resumed))
    return parts


def render_html(analysis: Analysis, images: Sequence["str | Path"], *,
                n_resamples: int = 1000, seed: Optional[int] = 0, top: int = 10) -> str:
    """The report page as a string, with ``images`` embedded as data URIs."""
    study = analysis.study
    esc = html.escape
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>Study {esc(study.name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Study <code>{esc(study.name)}</code></h1>",
        f"<p>Metric <b>{esc(analysis.metric)}</b> ({esc(analysis.mode)}), seed "
        f"{esc(str(getattr(study, 'seed', '')))}, generated "
        f"{esc(time.strftime('%Y-%m-%d %H:%M:%S'))}.</p>",
    ]
    notes = getattr(study, "notes", None)
    if notes:
        parts.append(f"<h2>Notes</h2><p>{esc(str(notes))}</p>")

    parts.append("<h2>Configuration</h2>")
    config = getattr(study, "config", None) or {}
    parts.append(f"<pre>{esc(json.dumps(config, indent=2, sort_keys=True, default=str))}</pre>")
    parts.append(_table(["hyperparameter", "role", "spec", "condition"], _space_rows(analysis)))
    storage = getattr(study, "storage_url", None)
    if storage:
        parts.append(f"<p>Storage: <code>{esc(str(storage))}</code></p>")

    counts = analysis.status_counts()
    parts.append("<h2>Trials</h2>")
    parts.append(_table(list(counts) + ["num_trials", "infeasible fraction", "failed fraction"],
                        [list(counts.values()) + [getattr(study, "num_trials", None),
                                                  analysis.infeasible_fraction,
                                                  analysis.failed_fraction]]))

    parts.append("<h2>Warnings</h2>")
    warnings = analysis.warnings()
    if warnings:
        parts.extend(f"<div class='warn'>{esc(w)}</div>" for w in warnings)
    else:
        parts.append("<div class='ok'>No warnings: the best trials are away from the "
                     "search-space edges.</div>")

    parts.append(f"<h2>Best trials (top {top})</h2>")
    best = analysis.best_trials(top)
    parts.append(_trials_table(analysis, best) if best else "<p>No feasible trial.</p>")

    if analysis.scientific() and analysis.finished():
        parts.append("<h2>Best per scientific value</h2>")
        comps = analysis.compare_scientific(n_resamples=n_resamples, seed=seed)
        parts.append(_table(
            ["scientific value", "finished", "feasible", "best #", f"best {analysis.metric}",
             "bootstrap q25", "bootstrap median", "bootstrap q75"],
            [[c.label, c.n_trials, c.n_feasible, None if c.best is None else c.best.index,
              c.best_score, *c.spread] for c in comps]))

    if analysis.finished():
        boot = analysis.bootstrap(n_resamples=n_resamples, seed=seed)
        parts.append("<h2>Best score vs number of trials (bootstrap)</h2>")
        parts.append(_table(["trials", "q25", "median", "q75", "P(no feasible)"],
                            [[r["k"], r["q25"], r["median"], r["q75"],
                              r["p_no_feasible"]] for r in boot.table()]))

    parts.extend(_retrospective_section(analysis))

    parts.append("<h2>Plots</h2>")
    for img in images:
        img = Path(img)
        parts.append(f"<figure><img src='{data_uri(img)}' alt='{esc(img.stem)}'>"
                     f"<figcaption>{esc(img.name)}</figcaption></figure>")

    parts.append("<h2>All trials</h2>")
    parts.append(_trials_table(analysis, analysis.trials()))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(analysis: Analysis, out_dir: "str | Path", *, name: str = "report.html",
                 n_resamples: int = 1000, seed: Optional[int] = 0, **plot_kwargs: Any) -> Path:
    """Write all PNGs and a self-contained HTML page into ``out_dir``; return the HTML path.

    Args:
        analysis: the study's :class:`~playbook.tune.analysis.Analysis`.
        out_dir: created if missing.
        name: file name of the page.
        n_resamples: bootstrap resamples (tables and box plot).
        seed: bootstrap seed.
        **plot_kwargs: passed to :func:`playbook.tune.plots.write_all` (``curves_k``,
            ``n_buckets``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = _plots.write_all(analysis, out, n_resamples=n_resamples, seed=seed, **plot_kwargs)
    page = render_html(analysis, images, n_resamples=n_resamples, seed=seed)
    path = out / name
    path.write_text(page, encoding="utf-8")
    return path
