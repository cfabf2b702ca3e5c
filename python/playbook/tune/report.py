"""Self-contained HTML report of a study (playbook 4.4-4.6, 6.3, FAQ 7.7).

:func:`write_report` writes every automatic plot (see :mod:`playbook.tune.plots`) as PNG and one
HTML page, ``report.html``, that needs nothing else: the PNGs are embedded as base64 ``data:``
URIs, and the few lines of script that sort a table when a header is clicked are inline. The
page holds the study configuration (the search-space table; the stored JSON config collapsed
under a ``<details>``) and notes (playbook 6.3 "Setting up experiment tracking"), the status
counts and infeasible fraction, the warnings (bad search-space boundaries, playbook 4.4), the
best trials overall and per scientific value (4.5), the bootstrap table of the best score versus
the number of trials (FAQ 7.7), the plots, the failed and infeasible trials with their reasons
(the one-line error, the full traceback under it) and every trial with its duration and
attempts, params in the order the search space declares them.

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
th{background:#f3f3f3;white-space:nowrap} td.num{text-align:right;font-variant-numeric:tabular-nums}
.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:.4em .8em;margin:.3em 0}
.ok{background:#eef8ee;border-left:4px solid #40a040;padding:.4em .8em}
figure{display:inline-block;margin:.5em;vertical-align:top;max-width:100%}
figure img{max-width:100%;border:1px solid #eee}
th.sortable{cursor:pointer;user-select:none} th.sortable:after{content:" \\2195";color:#aaa}
th[aria-sort=ascending]:after{content:" \\2191";color:#333}
th[aria-sort=descending]:after{content:" \\2193";color:#333}
td.reason{min-width:16em;max-width:32em;font-size:.85em}
div.scroll{overflow-x:auto;max-width:100%}
td.reason details pre{white-space:pre-wrap;max-height:24em;overflow:auto;font-size:.9em}
details>summary{cursor:pointer}
figcaption{font-size:.85em;color:#555}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto}
"""


# Click a header to sort its table (again to reverse). Cells sort by their data-v attribute
# (numbers) or text; empty cells go last. Plain DOM, no external assets.
_SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function(table){
  var heads = table.querySelectorAll('tr:first-child th');
  heads.forEach(function(th, col){
    th.classList.add('sortable');
    th.addEventListener('click', function(){
      var asc = th.getAttribute('aria-sort') !== 'ascending';
      heads.forEach(function(h){ h.removeAttribute('aria-sort'); });
      th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
      var rows = Array.prototype.slice.call(table.querySelectorAll('tr')).slice(1);
      function key(tr){ var td = tr.children[col]; if (!td) return [2, ''];
        var v = td.getAttribute('data-v'); if (v !== null && v !== '') return [0, parseFloat(v)];
        var t = td.textContent.trim(); return t === '' ? [2, ''] : [1, t.toLowerCase()]; }
      rows.sort(function(a, b){ var x = key(a), y = key(b);
        if (x[0] !== y[0]) return x[0] - y[0];
        var c = x[1] < y[1] ? -1 : x[1] > y[1] ? 1 : 0; return asc ? c : -c; });
      rows.forEach(function(tr){ tr.parentNode.appendChild(tr); });
    });
  });
});
"""


def data_uri(path: "str | Path", mime: str = "image/png") -> str:
    """``data:`` URI embedding a file (base64)."""
    payload = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"data:{mime};base64,{payload}"


class Cell:
    """A table cell with its own HTML (already escaped) and sort value."""

    def __init__(self, html_text: str, sort_value: Any = None, cls: str = "") -> None:
        self.html = html_text
        self.sort_value = sort_value
        self.cls = cls


def _cell(v: Any) -> str:
    if isinstance(v, Cell):
        cls = f' class="{v.cls}"' if v.cls else ""
        data = "" if v.sort_value is None else f' data-v="{html.escape(str(v.sort_value))}"'
        return f"<td{cls}{data}>{v.html}</td>"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        data = "" if isinstance(v, float) and v != v else f' data-v="{v!r}"'
        return f'<td class="num"{data}>{html.escape(_fmt(v))}</td>'
    return f"<td>{html.escape(_fmt(v))}</td>"


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, sortable: bool = False) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = ["<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows]
    cls = ' class="sortable"' if sortable else ""
    return f"<div class='scroll'><table{cls}><tr>{head}</tr>{''.join(body)}</table></div>"


def _param_names(analysis: Analysis, trials: Sequence[Any]) -> list[str]:
    """Param names in the order the search space declares them (then any others)."""
    names: list[str] = []
    for hp in analysis.hyperparameters(varied_only=False):
        if hp.name not in names and any(hp.name in t.params for t in trials):
            names.append(hp.name)
    for t in trials:
        names.extend(n for n in t.params if n not in names)
    return names


def _duration(t: Any) -> Optional[float]:
    started, finished = getattr(t, "started", None), getattr(t, "finished", None)
    return None if started is None or finished is None else float(finished) - float(started)


def _reason_cell(t: Any) -> Any:
    """Why a trial failed or is infeasible: one line, the full text (traceback) under it."""
    from playbook.tune.runner import error_summary

    error = getattr(t, "error", None)
    if not error or t.status in ("complete",):
        return ""
    summary = error_summary(error, width=160)
    if summary == error.strip():
        return Cell(html.escape(summary), cls="reason")
    return Cell(f"<details><summary>{html.escape(summary)}</summary><pre>{html.escape(error)}</pre>"
                "</details>", sort_value=None, cls="reason")


def _trials_table(analysis: Analysis, trials: Sequence[Any], *, reason_first: bool = False) -> str:
    """Trials with status, score, best step, duration, attempts, the reason of a failed or
    infeasible trial (right after the status with ``reason_first``, else last) and the params
    in search-space order; sortable by any column."""
    names = _param_names(analysis, trials)
    reasons = any(t.status in ("failed", "infeasible") and t.error for t in trials)
    head = ["#", "status"]
    middle = [analysis.metric, "best step", "duration (s)", "attempts"] + names
    reason = ["reason (failed / infeasible)"] if reasons else []
    headers = head + reason + middle if reason_first else head + middle + reason
    rows = []
    for t in trials:
        duration = _duration(t)
        cells_head = [t.index, t.status]
        cells_middle = [None if t.score is None else float(t.score), t.best_step,
                        None if duration is None else round(duration, 3),
                        getattr(t, "attempts", None)] + [t.params.get(n) for n in names]
        cells_reason = [_reason_cell(t)] if reasons else []
        rows.append(cells_head + cells_reason + cells_middle if reason_first
                    else cells_head + cells_middle + cells_reason)
    return _table(headers, rows, sortable=True)


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
    parts.append(_table(["hyperparameter", "role", "spec", "condition"], _space_rows(analysis)))
    parts.append("<details><summary>Stored config (JSON)</summary>"
                 f"<pre>{esc(json.dumps(config, indent=2, sort_keys=True, default=str))}</pre>"
                 "</details>")
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
              c.best_score, *c.spread] for c in comps], sortable=True))

    if analysis.finished():
        boot = analysis.bootstrap(n_resamples=n_resamples, seed=seed)
        parts.append("<h2>Best score vs number of trials (bootstrap)</h2>")
        parts.append(_table(["trials", "q25", "median", "q75", "P(no feasible)"],
                            [[r["k"], r["q25"], r["median"], r["q75"],
                              r["p_no_feasible"]] for r in boot.table()], sortable=True))

    parts.extend(_retrospective_section(analysis))

    parts.append("<h2>Plots</h2>")
    for img in images:
        img = Path(img)
        parts.append(f"<figure><img src='{data_uri(img)}' alt='{esc(img.stem)}'>"
                     f"<figcaption>{esc(img.name)}</figcaption></figure>")

    trials = analysis.trials()
    unsuccessful = [t for t in trials if t.status in ("failed", "infeasible")]
    if unsuccessful:
        parts.append("<h2>Failed and infeasible trials</h2>")
        parts.append(_trials_table(analysis, unsuccessful, reason_first=True))

    parts.append("<h2>All trials</h2>")
    parts.append("<p>Click a column header to sort.</p>")
    parts.append(_trials_table(analysis, trials))
    parts.append(f"<script>{_SORT_JS}</script>")
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
