"""Post-hoc analysis of a tuning study.

Implements the checklist of the playbook section "Extracting insight from experimental results"
(4.4) and FAQ 7.7 ("How many trials are needed to get good results with quasi-random search?"):

- best trials overall, and best trial per value of the scientific hyperparameters (the
  "optimize away the nuisance hyperparameters" step behind isolation plots, 4.5);
- bad search space boundaries: the best trials lie within a small margin of an edge of the
  search space, measured in unit-cube coordinates (``spec.to_unit``) (4.4, "Identifying bad
  search space boundaries");
- the fraction of infeasible (and failed) trials (4.4);
- a bootstrap of the best score versus the number of trials (FAQ 7.7, figure 3), overall and
  per scientific value.

Conventions used throughout:

- *finished* trials are those with status ``"complete"`` or ``"infeasible"``: they consumed
  budget. ``"failed"`` trials (the objective raised) and ``"pending"``/``"running"`` trials are
  not part of the budget.
- *feasible* trials are ``"complete"`` trials with a finite score. A ``"complete"`` trial whose
  score is missing or non-finite (NaN/inf: a diverged run) is treated as infeasible.
- Infeasible trials count in the budget but never win: in a bootstrap resample they take the
  worst possible score, and a resample without a feasible trial has no best score (NaN).

Example:
    >>> analysis = study.analysis()                        # doctest: +SKIP
    >>> analysis.best_trials(3)                            # doctest: +SKIP
    >>> print("\\n".join(analysis.warnings()))              # doctest: +SKIP
    >>> boot = analysis.bootstrap(n_resamples=1000)        # doctest: +SKIP
    >>> boot.quantiles((0.25, 0.5, 0.75))                  # doctest: +SKIP
    >>> analysis.report("report_dir")                      # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

__all__ = [
    "Analysis",
    "BoundaryWarning",
    "BootstrapResult",
    "RetrospectiveSelection",
    "ScientificComparison",
    "bootstrap_best",
    "default_top_k",
    "is_ordered",
]

FINISHED = ("complete", "infeasible")
_MODES = ("min", "max")


# ----------------------------------------------------------------------------------------------
# small pure helpers
# ----------------------------------------------------------------------------------------------


def _check_mode(mode: str) -> str:
    if mode not in _MODES:
        raise ValueError(f"Unknown mode: {mode!r}. It needs to be one of {list(_MODES)}")
    return mode


def is_feasible(trial: Any) -> bool:
    """Whether a trial can win: status ``"complete"`` and a finite score."""
    score = getattr(trial, "score", None)
    return (
        trial.status == "complete"
        and score is not None
        and math.isfinite(float(score))
    )


def is_ordered(spec: Any) -> bool:
    """Whether a spec has ordered edges (``lo``/``hi``): Real and Int specs.

    Boundary checks (playbook 4.4) only make sense for these; Discrete and Categorical specs
    have no "beyond the edge" to expand into.
    """
    return hasattr(spec, "lo") and hasattr(spec, "hi")


def spec_scale(spec: Any) -> str:
    """The scale of a spec: ``"linear"``, ``"log"`` or ``"reverse_log"`` (linear if unknown)."""
    scale = getattr(spec, "scale", None)
    if scale is None:
        return "log" if getattr(spec, "is_log", False) else "linear"
    return str(scale)


def numeric_values(spec: Any) -> bool:
    """Whether a Discrete/Categorical spec only has numbers (so it can be drawn on a number axis).

    A spec whose class is called ``Categorical`` is never numeric: its values are unordered.
    """
    if type(spec).__name__ == "Categorical":
        return False
    values = getattr(spec, "values", None)
    if not values:
        return False
    return all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
               for v in values)


def default_top_k(n_feasible: int) -> int:
    """Default number of best trials the boundary check looks at: ``max(3, ceil(10% of n))``.

    Never more than ``n_feasible`` (and at least 1 when there is a feasible trial).
    """
    if n_feasible <= 0:
        return 0
    return min(n_feasible, max(3, math.ceil(0.1 * n_feasible)))


def sort_best(trials: Iterable[Any], mode: str) -> list[Any]:
    """Feasible trials sorted best first (ties broken by trial index, so the order is stable)."""
    _check_mode(mode)
    sign = 1.0 if mode == "min" else -1.0
    feasible = [t for t in trials if is_feasible(t)]
    return sorted(feasible, key=lambda t: (sign * float(t.score), t.index))


def _nan_quantiles(samples: np.ndarray, q: Sequence[float]) -> np.ndarray:
    """Quantiles over the last axis ignoring NaN; rows that are all NaN give NaN (no warning)."""
    samples = np.atleast_2d(np.asarray(samples, dtype=float))
    q = np.asarray(q, dtype=float)
    out = np.full((samples.shape[0], q.size), np.nan)
    for i, row in enumerate(samples):
        finite = row[~np.isnan(row)]
        if finite.size:
            out[i] = np.quantile(finite, q)
    return out


def bootstrap_best(
    scores: Sequence[float],
    ks: Sequence[int],
    *,
    mode: str = "min",
    n_resamples: int = 1000,
    seed: Optional[int] = 0,
) -> np.ndarray:
    """Best score of ``k`` trials drawn with replacement, resampled many times (FAQ 7.7, fig. 3).

    For each resample ``r`` one sequence of ``max(ks)`` trial indices is drawn uniformly with
    replacement; the best-of-``k`` value is the best score among its first ``k`` entries. The
    resamples are therefore nested in ``k``, so every quantile of the result is monotone in
    ``k`` (non-increasing for ``mode="min"``, non-decreasing for ``"max"``), as it is in
    expectation.

    Args:
        scores: one entry per trial in the budget; NaN marks an infeasible trial (it is drawn,
            so it uses budget, but it never wins).
        ks: numbers of trials, each >= 1.
        mode: ``"min"`` or ``"max"``.
        n_resamples: resamples per ``k``.
        seed: seed of the ``numpy.random.Generator`` (same seed, same result).

    Returns:
        Array of shape ``(len(ks), n_resamples)``; NaN where a resample drew no feasible trial.

    Example:
        >>> bootstrap_best([3.0, 1.0, 2.0], [1, 3], n_resamples=4, seed=0).shape
        (2, 4)
    """
    _check_mode(mode)
    x = np.asarray(scores, dtype=float).ravel()
    if x.size == 0:
        raise ValueError("bootstrap_best needs at least one trial, got 0 scores")
    ks_arr = np.asarray(list(ks), dtype=int)
    if ks_arr.size == 0 or ks_arr.min() < 1:
        raise ValueError(f"Invalid ks: {list(ks)}; every k must be >= 1")
    if n_resamples < 1:
        raise ValueError(f"Invalid n_resamples: {n_resamples}; it must be >= 1")
    sign = 1.0 if mode == "min" else -1.0
    worst_filled = np.where(np.isnan(x), np.inf, sign * x)  # minimize sign*x
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_resamples, int(ks_arr.max())))
    running = np.minimum.accumulate(worst_filled[idx], axis=1)  # (R, kmax)
    best = running[:, ks_arr - 1].T.copy()  # (len(ks), R)
    best[np.isinf(best)] = np.nan
    return sign * best


def default_ks(n: int, max_points: int = 20) -> list[int]:
    """Numbers of trials for the bootstrap: every k up to ``max_points``, else an even grid."""
    if n <= 0:
        return []
    if n <= max_points:
        return list(range(1, n + 1))
    grid = np.unique(np.round(np.linspace(1, n, max_points)).astype(int))
    return [int(k) for k in grid]


SCIENTIFIC_REAL_BINS = 5


def scientific_value(hp: Any, value: Any, bins: int = SCIENTIFIC_REAL_BINS) -> Any:
    """Group label of a scientific value: the value itself, except for a continuous ``Real``
    scientific hyperparameter, which is cut into ``bins`` equal slices of the unit cube and
    labelled by the slice's value range (e.g. ``"[0.001, 0.00398)"``)."""
    spec = hp.spec
    if value is None or type(spec).__name__ != "Real":
        return value
    b = min(bins - 1, max(0, int(float(spec.to_unit(value)) * bins)))
    lo, hi = spec.from_unit(b / bins), spec.from_unit(min((b + 1) / bins, 1.0))
    lo, hi = min(lo, hi), max(lo, hi)
    close = "]" if b == bins - 1 else ")"
    return f"[{lo:.3g}, {hi:.3g}{close}"


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# ----------------------------------------------------------------------------------------------
# result objects
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BoundaryWarning:
    """The best trials sit near an edge of the search space (playbook 4.4).

    Attributes:
        param: hyperparameter name (the key in ``trial.params``).
        key: the unique hyperparameter key (differs from ``param`` for conditional ones).
        edge: ``"lower"`` or ``"upper"``.
        bound: the edge value (``spec.lo`` or ``spec.hi``).
        count: how many of the top ``k`` trials lie within ``margin`` of that edge.
        k: how many best trials were examined (those where the parameter is active).
        best_value: the parameter value of the best such trial.
        best_unit: that value in unit coordinates (``spec.to_unit``).
        margin: the margin in unit coordinates (default 0.05).
    """

    param: str
    key: str
    edge: str
    bound: Any
    count: int
    k: int
    best_value: Any
    best_unit: float
    margin: float

    def message(self) -> str:
        """One-line warning naming the parameter and the edge."""
        direction = "raising" if self.edge == "upper" else "lowering"
        return (
            f"{self.param}: {self.count} of the top {self.k} trials lie within "
            f"{self.margin:.0%} of the {self.edge} edge ({self.param}={_format_value(self.bound)}; "
            f"best trial at {_format_value(self.best_value)}, unit {self.best_unit:.3f}). "
            f"Consider {direction} the {self.edge} bound of {self.param} (playbook 4.4)."
        )

    def __str__(self) -> str:
        return self.message()


@dataclass(frozen=True)
class BootstrapResult:
    """Distribution of the best score versus the number of trials (FAQ 7.7, figure 3).

    Attributes:
        ks: numbers of trials, shape ``(K,)``.
        samples: best score of each resample, shape ``(K, n_resamples)``; NaN where a resample
            held no feasible trial.
        mode: ``"min"`` or ``"max"``.
        n_trials: size of the pool that was resampled (the budget: complete + infeasible).
        seed: the seed used.
    """

    ks: np.ndarray
    samples: np.ndarray
    mode: str
    n_trials: int
    seed: Optional[int]

    def quantiles(self, q: Sequence[float] = (0.25, 0.5, 0.75)) -> np.ndarray:
        """Quantiles of the best score per k, NaN-aware; shape ``(K, len(q))``."""
        return _nan_quantiles(self.samples, q)

    @property
    def median(self) -> np.ndarray:
        """Median best score per k, shape ``(K,)``."""
        return self.quantiles((0.5,))[:, 0]

    @property
    def p_no_feasible(self) -> np.ndarray:
        """Fraction of resamples per k that drew only infeasible trials, shape ``(K,)``."""
        return np.isnan(self.samples).mean(axis=1)

    def table(self) -> list[dict[str, float]]:
        """Rows ``{k, q25, median, q75, p_no_feasible}`` for reports and JSON."""
        qs = self.quantiles((0.25, 0.5, 0.75))
        return [
            {
                "k": int(k),
                "q25": float(qs[i, 0]),
                "median": float(qs[i, 1]),
                "q75": float(qs[i, 2]),
                "p_no_feasible": float(self.p_no_feasible[i]),
            }
            for i, k in enumerate(self.ks)
        ]


@dataclass(frozen=True)
class ScientificComparison:
    """Best trial for one value of the scientific hyperparameters (playbook 4.5).

    Attributes:
        values: ``{name: value}`` of the scientific hyperparameters for this group (``None``
            when a conditional parameter is inactive).
        n_trials: finished trials (complete + infeasible) in the group.
        n_feasible: feasible trials in the group.
        best: the best trial of the group, or ``None`` without a feasible trial.
        spread: bootstrap quantiles (25%, 50%, 75%) of the best score of a study of
            ``n_trials`` trials resampled from this group: the study-to-study variance of
            the best score (FAQ 7.7).
    """

    values: dict
    n_trials: int
    n_feasible: int
    best: Any
    spread: tuple

    @property
    def label(self) -> str:
        """``"name=value, ..."`` (``"all trials"`` with no scientific hyperparameter)."""
        if not self.values:
            return "all trials"
        return ", ".join(f"{k}={_format_value(v)}" for k, v in self.values.items())

    @property
    def best_score(self) -> Optional[float]:
        return None if self.best is None else float(self.best.score)


# ----------------------------------------------------------------------------------------------
# Analysis
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetrospectiveSelection:
    """Where retrospective checkpoint selection found each trial's best step (playbook "Deciding
    how long to train when training is not compute-bound").

    Attributes:
        indices: trial indices (feasible trials with a best step), ascending.
        best_steps: step of each trial's best value of the study metric.
        lengths: each trial's training length: its ``max_train_steps`` (a param, or the study
            config's ``max_train_steps``) when recorded, else its last reported step.
        recorded: True where ``lengths`` is a recorded ``max_train_steps``.
        scores: each trial's score.
    """

    indices: np.ndarray
    best_steps: np.ndarray
    lengths: np.ndarray
    recorded: np.ndarray
    scores: np.ndarray

    @property
    def fractions(self) -> np.ndarray:
        """``best_step / length`` per trial (NaN where the length is 0)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.lengths > 0, self.best_steps / np.maximum(self.lengths, 1), np.nan)

    @property
    def max_train_steps(self) -> Optional[int]:
        """The recorded ``max_train_steps`` when every trial has the same one, else ``None``."""
        if len(self.lengths) and self.recorded.all() and np.all(self.lengths == self.lengths[0]):
            return int(self.lengths[0])
        return None


@dataclass
class Analysis:
    """Analysis of one study (playbook 4.4-4.6, FAQ 7.7); usually built by ``study.analysis()``.

    The trials are read once at construction: build a new ``Analysis`` to see newer trials.

    Args:
        study: a ``playbook.tune.Study`` (or anything with the same attributes: ``name``,
            ``space``, ``metric``, ``mode``, ``trials()``, ``metrics(index)``).
        top_k: number of best trials examined by the boundary check; ``None`` means
            ``max(3, ceil(10% of the feasible trials))``.
        margin: distance to an edge, in unit coordinates, that counts as "at the edge".
        infeasible_warn: warn when the infeasible fraction exceeds this (playbook 4.4).

    Example:
        >>> a = study.analysis()                    # doctest: +SKIP
        >>> [w.param for w in a.boundary_warnings()]  # doctest: +SKIP
        ['lr']
    """

    study: Any
    top_k: Optional[int] = None
    margin: float = 0.05
    infeasible_warn: float = 0.5
    _trials: list = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _check_mode(self.study.mode)
        if not 0.0 <= self.margin < 0.5:
            raise ValueError(f"Invalid margin: {self.margin}; it must be in [0, 0.5)")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"Invalid top_k: {self.top_k}; it must be >= 1 or None")
        self._trials = list(self.study.trials())

    # -- basic facts ---------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        return self.study.mode

    @property
    def metric(self) -> str:
        return self.study.metric

    def trials(self) -> list:
        """All trials, sorted by index."""
        return list(self._trials)

    def finished(self) -> list:
        """Trials that used budget: status ``"complete"`` or ``"infeasible"``."""
        return [t for t in self._trials if t.status in FINISHED]

    def feasible(self) -> list:
        """Complete trials with a finite score."""
        return [t for t in self._trials if is_feasible(t)]

    def hyperparameters(self, varied_only: bool = True) -> list:
        """The space's hyperparameters (``HParam``), the varied ones by default."""
        hps = list(self.study.space.hyperparameters())
        return [h for h in hps if h.varied] if varied_only else hps

    def scientific(self) -> list:
        """Varied hyperparameters with role ``"scientific"``."""
        return [h for h in self.hyperparameters() if h.role == "scientific"]

    def nuisance(self) -> list:
        """Varied hyperparameters with role ``"nuisance"``."""
        return [h for h in self.hyperparameters() if h.role == "nuisance"]

    def status_counts(self) -> dict[str, int]:
        """Number of trials per status (all five statuses present, zeros included)."""
        counts = {s: 0 for s in ("pending", "running", "complete", "infeasible", "failed")}
        for t in self._trials:
            counts[t.status] = counts.get(t.status, 0) + 1
        return counts

    @property
    def infeasible_fraction(self) -> float:
        """Infeasible share of the finished trials (NaN scores count as infeasible); 0 if none."""
        finished = self.finished()
        if not finished:
            return 0.0
        return sum(not is_feasible(t) for t in finished) / len(finished)

    @property
    def failed_fraction(self) -> float:
        """Failed share of the trials that ran (complete + infeasible + failed); 0 if none."""
        ran = [t for t in self._trials if t.status in FINISHED + ("failed",)]
        if not ran:
            return 0.0
        return sum(t.status == "failed" for t in ran) / len(ran)

    # -- best trials -----------------------------------------------------------------------------

    def best_trials(self, k: int = 1) -> list:
        """The ``k`` best feasible trials, best first (ties by index)."""
        if k < 0:
            raise ValueError(f"Invalid k: {k}; it must be >= 0")
        return sort_best(self._trials, self.mode)[:k]

    def _group_key(self, trial: Any, hps: Sequence[Any]) -> tuple:
        return tuple(
            scientific_value(h, trial.params.get(h.name)) if h.active(trial.params) else None
            for h in hps
        )

    def groups(self) -> dict[tuple, list]:
        """Finished trials grouped by the values of the scientific hyperparameters.

        Keys are tuples in the order of :meth:`scientific` (one empty-tuple group without
        scientific hyperparameters); groups are ordered by first appearance.
        """
        hps = self.scientific()
        out: dict[tuple, list] = {}
        for t in self.finished():
            out.setdefault(self._group_key(t, hps), []).append(t)
        return out

    def best_per_scientific(self) -> dict[tuple, Any]:
        """Best feasible trial per scientific value (``None`` for a group with none).

        This is the "optimize away the nuisance hyperparameters" step (playbook 4.5).
        """
        return {key: (sort_best(ts, self.mode) or [None])[0] for key, ts in self.groups().items()}

    def compare_scientific(
        self, *, n_resamples: int = 1000, seed: Optional[int] = 0
    ) -> list[ScientificComparison]:
        """Per-scientific-value comparison: best trial and bootstrap spread of its score.

        The spread resamples ``n`` trials (``n`` = the group's finished trials) with
        replacement from the group and records the best of each resample; its quartiles show
        how much the group's best score depends on the luck of the search (FAQ 7.7).
        """
        hps = self.scientific()
        out = []
        for i, (key, ts) in enumerate(self.groups().items()):
            scores = [float(t.score) if is_feasible(t) else math.nan for t in ts]
            best = (sort_best(ts, self.mode) or [None])[0]
            group_seed = None if seed is None else seed + i
            samples = bootstrap_best(
                scores, [len(ts)], mode=self.mode, n_resamples=n_resamples, seed=group_seed
            )
            q = _nan_quantiles(samples, (0.25, 0.5, 0.75))[0]
            out.append(
                ScientificComparison(
                    values={h.name: v for h, v in zip(hps, key)},
                    n_trials=len(ts),
                    n_feasible=sum(is_feasible(t) for t in ts),
                    best=best,
                    spread=tuple(float(v) for v in q),
                )
            )
        return out

    # -- boundaries ------------------------------------------------------------------------------

    def boundary_warnings(
        self, k: Optional[int] = None, margin: Optional[float] = None
    ) -> list[BoundaryWarning]:
        """Best trials near an edge of the search space (playbook 4.4).

        For every varied Real/Int hyperparameter, take the top ``k`` feasible trials in which it
        is active and map its value to unit coordinates with ``spec.to_unit``. Warn about an
        edge when the best of them, or at least half of them, lie within ``margin`` of it
        (``u <= margin`` for the lower edge, ``u >= 1 - margin`` for the upper one).

        Args:
            k: trials examined; default ``self.top_k`` or ``max(3, ceil(10%))``.
            margin: default ``self.margin`` (0.05).

        Returns:
            One :class:`BoundaryWarning` per (parameter, edge) that triggered.
        """
        margin = self.margin if margin is None else margin
        if not 0.0 <= margin < 0.5:
            raise ValueError(f"Invalid margin: {margin}; it must be in [0, 0.5)")
        ranked = sort_best(self._trials, self.mode)
        if k is None:
            k = self.top_k if self.top_k is not None else default_top_k(len(ranked))
        if k < 1:
            return []
        out = []
        for hp in self.hyperparameters():
            if not is_ordered(hp.spec):
                continue
            top = [t for t in ranked if hp.active(t.params) and hp.name in t.params][:k]
            if not top:
                continue
            units = [float(hp.spec.to_unit(t.params[hp.name])) for t in top]
            for edge, near in (
                ("lower", [u <= margin for u in units]),
                ("upper", [u >= 1.0 - margin for u in units]),
            ):
                count = sum(near)
                if near[0] or 2 * count >= len(top) and count > 0:
                    out.append(
                        BoundaryWarning(
                            param=hp.name,
                            key=hp.key,
                            edge=edge,
                            bound=hp.spec.lo if edge == "lower" else hp.spec.hi,
                            count=count,
                            k=len(top),
                            best_value=top[0].params[hp.name],
                            best_unit=units[0],
                            margin=margin,
                        )
                    )
        return out

    def warnings(self) -> list[str]:
        """Human-readable warnings: boundaries, infeasible and failed trials, nothing feasible."""
        msgs = [w.message() for w in self.boundary_warnings()]
        finished = self.finished()
        if finished and not self.feasible():
            msgs.append(
                f"No feasible trial among {len(finished)} finished trials: check the training "
                "code and the search space (playbook 4.4)."
            )
        elif self.infeasible_fraction > self.infeasible_warn:
            msgs.append(
                f"{self.infeasible_fraction:.0%} of the finished trials are infeasible: consider "
                "shrinking or reparameterizing the search space, or look for a bug (playbook 4.4)."
            )
        msgs.extend(self.training_length_warnings())
        if self.failed_fraction > 0:
            n_failed = self.status_counts()["failed"]
            msgs.append(
                f"{n_failed} trial(s) failed with an error ({self.failed_fraction:.0%} of the "
                "trials that ran); they are excluded from the analysis."
            )
        return msgs

    # -- bootstrap -------------------------------------------------------------------------------

    def bootstrap(
        self,
        ks: Optional[Sequence[int]] = None,
        *,
        n_resamples: int = 1000,
        seed: Optional[int] = 0,
        include_infeasible: bool = True,
    ) -> BootstrapResult:
        """Best score versus number of trials by bootstrap (FAQ 7.7, figure 3).

        Args:
            ks: numbers of trials; default every k up to 20, else a 20-point grid up to the
                number of finished trials. Values above the pool size are allowed (sampling is
                with replacement).
            n_resamples: resamples per k.
            seed: seed of the resampling (results are reproducible).
            include_infeasible: draw from the finished trials so that infeasible ones use
                budget without winning (default); ``False`` draws from the feasible ones only.

        Returns:
            A :class:`BootstrapResult`.

        Raises:
            ValueError: no trial to resample.
        """
        pool = self.finished() if include_infeasible else self.feasible()
        if not pool:
            raise ValueError(
                f"Study {self.study.name!r} has no finished trials to bootstrap "
                f"(status counts: {self.status_counts()})"
            )
        scores = [float(t.score) if is_feasible(t) else math.nan for t in pool]
        ks_list = default_ks(len(pool)) if ks is None else [int(k) for k in ks]
        samples = bootstrap_best(
            scores, ks_list, mode=self.mode, n_resamples=n_resamples, seed=seed
        )
        return BootstrapResult(
            ks=np.asarray(ks_list, dtype=int),
            samples=samples,
            mode=self.mode,
            n_trials=len(pool),
            seed=seed,
        )

    # -- metrics ---------------------------------------------------------------------------------

    def curves(self, index: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Training curves of one trial: ``{metric: (steps, values)}`` in step order."""
        out: dict[str, tuple[list, list]] = {}
        for step, values in self.study.metrics(index):
            for name, value in values.items():
                xs, ys = out.setdefault(name, ([], []))
                xs.append(step)
                ys.append(float(value))
        return {k: (np.asarray(x), np.asarray(y, dtype=float)) for k, (x, y) in out.items()}

    # -- retrospective checkpoint selection ------------------------------------------------------

    def _recorded_max_train_steps(self, trial: Any) -> Optional[int]:
        value = trial.params.get("max_train_steps")
        if value is None:
            value = (getattr(self.study, "config", None) or {}).get("max_train_steps")
        try:
            return int(value) if value is not None and int(value) > 0 else None
        except (TypeError, ValueError):
            return None

    def retrospective(self) -> RetrospectiveSelection:
        """Best step of every feasible trial versus its training length (playbook: "plot the
        training step that retrospective checkpoint selection finds in order to refine the choice
        of ``max_train_steps``")."""
        rows = []
        for t in sorted(self.feasible(), key=lambda t: t.index):
            if t.best_step is None:
                continue
            length = self._recorded_max_train_steps(t)
            recorded = length is not None
            if length is None:
                steps = [step for step, _ in self.study.metrics(t.index)]
                length = max(steps) if steps else 0
            rows.append((t.index, t.best_step, length, recorded, float(t.score)))
        cols = list(zip(*rows)) if rows else [(), (), (), (), ()]
        return RetrospectiveSelection(
            indices=np.asarray(cols[0], dtype=int),
            best_steps=np.asarray(cols[1], dtype=float),
            lengths=np.asarray(cols[2], dtype=float),
            recorded=np.asarray(cols[3], dtype=bool),
            scores=np.asarray(cols[4], dtype=float),
        )

    def training_length_warnings(self, *, late: float = 0.9, early: float = 0.1) -> list[str]:
        """Warnings from the best steps of the top trials (playbook "Deciding how long to train").

        Late: at least half of the top-k feasible trials (k as in the boundary check) reach their
        best value in the last ``1 - late`` of training. Early: all of them within the first
        ``early``.
        """
        retro = self.retrospective()
        if not len(retro.indices):
            return []
        frac = dict(zip(retro.indices.tolist(), retro.fractions.tolist()))
        lengths = dict(zip(retro.indices.tolist(), retro.lengths.tolist()))
        top = [t for t in self.best_trials(self.top_k or default_top_k(len(self.feasible()))) if t.index in frac]
        if not top:
            return []
        what = (f"max_train_steps={retro.max_train_steps}" if retro.max_train_steps is not None
                else "each trial's max_train_steps" if retro.recorded.all() else "each trial's last reported step")
        n_late = sum(frac[t.index] >= late for t in top)
        msgs = []
        if n_late * 2 >= len(top):
            best = top[0]
            msgs.append(
                f"{n_late} of the top {len(top)} trials reached their best {self.metric} in the last "
                f"{1 - late:.0%} of training (best trial #{best.index} at step {best.best_step} of "
                f"{int(lengths[best.index])}; lengths: {what}): train longer. Playbook (Deciding how long "
                "to train): \"if the best step is consistently in the last 25% of training we might benefit "
                "from training longer and re-tuning the decay schedule.\""
            )
        elif all(frac[t.index] < early for t in top):
            msgs.append(
                f"All top {len(top)} trials reached their best {self.metric} in the first {early:.0%} of "
                f"training (lengths: {what}). Playbook (Deciding how long to train): \"if the best step is "
                "always during the first 10% of training, then the maximum number of steps is way too high.\""
            )
        return msgs

    def resumed_trials(self) -> list:
        """Trials that were run more than once (``attempts > 1``): interrupted, re-queued, resumed."""
        return [t for t in self._trials if getattr(t, "attempts", 1) > 1]

    # -- summary, plots and report ---------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """JSON-friendly summary: counts, fractions, best trials and warnings."""
        best = self.best_trials(1)
        return {
            "study": self.study.name,
            "metric": self.metric,
            "mode": self.mode,
            "status_counts": self.status_counts(),
            "infeasible_fraction": self.infeasible_fraction,
            "failed_fraction": self.failed_fraction,
            "best_score": float(best[0].score) if best else None,
            "best_index": best[0].index if best else None,
            "best_params": dict(best[0].params) if best else None,
            "warnings": self.warnings(),
        }

    def plots(self, out_dir: "str | Path", **kwargs: Any) -> list[Path]:
        """Write every automatic plot as PNG into ``out_dir`` (playbook 4.6); returns the paths.

        See :func:`playbook.tune.plots.write_all` for the keyword arguments.
        """
        from playbook.tune import plots

        return plots.write_all(self, out_dir, **kwargs)

    def report(self, out_dir: "str | Path", **kwargs: Any) -> Path:
        """Write all PNGs and one self-contained HTML page into ``out_dir``; return its path.

        See :func:`playbook.tune.report.write_report`.
        """
        from playbook.tune import report

        return report.write_report(self, out_dir, **kwargs)
