"""A study's trials as a pandas DataFrame (one row per stored trial).

pandas is an optional dependency (``pip install "playbook[pandas]"``), imported only when
:func:`to_dataframe` is called.

Example:
    >>> df = study.to_dataframe()                                  # doctest: +SKIP
    >>> df[df.status == "complete"].sort_values("score").head()    # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas

    from playbook.tune.study import Study

__all__ = ["to_dataframe", "COLUMNS"]

# Columns before the ``param.*`` and ``final.*`` ones, in this order.
COLUMNS = ("status", "score", "best_step", "duration", "attempts", "started", "finished", "worker", "error")


def _import_pandas() -> Any:
    try:
        import pandas
    except ImportError as exc:
        raise ImportError(
            f"Study.to_dataframe needs pandas, which is not installed ({exc}). Install the extra: "
            'pip install "playbook[pandas]" (or pip install pandas).'
        ) from None
    return pandas


def _param_names(study: Study) -> list[str]:
    """Names of ``trial.params`` in the order the search space declares them (a name shared by
    several branches, such as two ``lr``, is one column)."""
    names: list[str] = []
    for hp in study.space.hyperparameters():
        if hp.name not in names:
            names.append(hp.name)
    return names


def to_dataframe(study: Study) -> pandas.DataFrame:
    """Every stored trial of ``study`` as a DataFrame indexed by trial index.

    Columns: ``status``, ``score`` (best value of the study metric, retrospective, playbook 6.2),
    ``best_step``, ``duration`` (seconds from the last start to the finish), ``attempts``,
    ``started`` / ``finished`` (UTC timestamps), ``worker``, ``error`` (traceback of a failed
    trial, reason of an infeasible one), then ``param.<name>`` per hyperparameter in search-space
    order (missing where a conditional one is inactive) and ``final.<name>`` per value given to
    ``trial.complete``.

    Raises:
        ImportError: pandas is not installed (the message names the ``pandas`` extra).
    """
    pd = _import_pandas()
    trials = study.trials()
    params = _param_names(study)
    for t in trials:
        params.extend(n for n in t.params if n not in params)
    finals: list[str] = []
    for t in trials:
        finals.extend(n for n in (t.final or {}) if n not in finals)
    rows = []
    for t in trials:
        duration = None if t.started is None or t.finished is None else float(t.finished) - float(t.started)
        row: dict[str, Any] = {
            "status": t.status,
            "score": t.score,
            "best_step": t.best_step,
            "duration": duration,
            "attempts": t.attempts,
            "started": t.started,
            "finished": t.finished,
            "worker": t.worker,
            "error": t.error,
        }
        row.update({f"param.{n}": t.params.get(n) for n in params})
        row.update({f"final.{n}": (t.final or {}).get(n) for n in finals})
        rows.append(row)
    columns = list(COLUMNS) + [f"param.{n}" for n in params] + [f"final.{n}" for n in finals]
    df = pd.DataFrame(rows, columns=columns, index=pd.Index([t.index for t in trials], name="index"))
    for col in ("score", "duration"):
        df[col] = df[col].astype("float64")
    for col in ("best_step", "attempts"):
        df[col] = df[col].astype("Int64")
    for col in ("started", "finished"):
        df[col] = pd.to_datetime(df[col].astype("float64"), unit="s", utc=True)
    return df
