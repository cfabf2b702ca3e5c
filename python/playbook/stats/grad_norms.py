"""Statistics over a history of unclipped global gradient norms (playbook 7.8, "Gradient clipping").

Everything here is plain numpy: torch is never imported. A torch tensor (any dtype, any device)
is accepted through duck typing and copied to a float64 numpy array.

Conventions:
- ``norms`` is a 1-D sequence with one unclipped global L2 norm per step: a torch tensor (e.g.
  ``opt.grad_norms()``), a numpy array or a list of floats.
- Non-finite norms (NaN, +-inf) are steps the optimizer skipped. They are left out of every
  statistic (percentiles, clip fractions, means) and counted separately.
- ``q`` is a *fraction* in [0, 1]: ``q=0.9`` is the 90th percentile. ``q=90`` is an error.
- A step is clipped when ``norm > max_norm`` (strictly), as in the optimizers' kernels.
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

__all__ = [
    "AggressiveClippingWarning",
    "ClipCheck",
    "GradNormSummary",
    "check_clipping",
    "clip_fraction",
    "percentile",
    "suggest_max_grad_norm",
    "summarize",
]

#: Playbook 7.8, verbatim: the two sentences behind :func:`check_clipping`.
PLAYBOOK_AGGRESSIVE = (
    'We would usually consider having >50% of the updates getting clipped somehow as '
    '"extremely aggressive".'
)
PLAYBOOK_CUT_LR = (
    "If we find ourselves using extremely aggressive clipping, we probably should just cut "
    "the learning rate instead."
)
#: Playbook 7.8, verbatim: the rule behind :func:`suggest_max_grad_norm`.
PLAYBOOK_P90 = "Choose a gradient clipping threshold based on the 90th percentile of gradient norms."


class AggressiveClippingWarning(UserWarning):
    """More than half of the steps were clipped: the threshold is "extremely aggressive".

    Playbook 7.8: "We would usually consider having >50% of the updates getting clipped somehow
    as "extremely aggressive"." ... "If we find ourselves using extremely aggressive clipping, we
    probably should just cut the learning rate instead."
    """


def as_float64(norms: Any, *, name: str = "norms") -> np.ndarray:
    """Return ``norms`` as a 1-D float64 numpy array (a copy for torch tensors).

    Accepts a 1-D torch tensor (any floating dtype, any device; moved to the CPU), a numpy array
    or a list/tuple of numbers. Raises ``ValueError`` for anything that is not 1-D.
    """
    if type(norms).__module__.startswith("torch") and hasattr(norms, "detach"):
        # torch.Tensor without importing torch: bf16/fp16 have no numpy dtype, so widen first.
        arr = norms.detach().to(device="cpu").double().numpy()
    else:
        try:
            arr = np.asarray(norms, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name} must be a 1-D sequence of numbers, got {type(norms).__name__}: {e}") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one norm per step), got shape {tuple(arr.shape)}")
    return arr


def _finite(norms: Any) -> tuple[np.ndarray, np.ndarray]:
    arr = as_float64(norms)
    return arr, arr[np.isfinite(arr)]


def _check_q(q: Any) -> float:
    if isinstance(q, bool) or not isinstance(q, numbers.Real):
        raise ValueError(f"q must be a real number in [0, 1], got {q!r}")
    qf = float(q)
    if not (0.0 <= qf <= 1.0):  # also rejects NaN
        hint = f" (did you mean q={qf / 100:g}?)" if 1.0 < qf <= 100.0 else ""
        raise ValueError(
            f"q must be a fraction in [0, 1] (e.g. 0.9 for the 90th percentile), got q={q!r}{hint}"
        )
    return qf


def _check_max_norm(max_norm: Any) -> float:
    if isinstance(max_norm, bool) or not isinstance(max_norm, numbers.Real):
        raise ValueError(f"max_norm must be a positive number, got {max_norm!r}")
    m = float(max_norm)
    if math.isnan(m) or m <= 0.0:
        raise ValueError(f"max_norm must be a positive number, got max_norm={max_norm!r}")
    return m


def percentile(norms: Any, q: float) -> float:
    """The ``q``-quantile of the finite gradient norms, ``q`` a fraction in [0, 1].

    Linear interpolation between order statistics, the same as ``np.quantile(x, q)`` (numpy's
    default ``method="linear"``): with the ``n`` finite values sorted as ``x[0] <= ... <= x[n-1]``,
    ``h = q * (n - 1)`` and the result is ``x[floor(h)] + (h - floor(h)) * (x[floor(h)+1] -
    x[floor(h)])``. Non-finite values (NaN, +-inf: skipped steps) are ignored.

    Args:
        norms: 1-D torch tensor, numpy array or list of per-step norms.
        q: the quantile as a fraction: ``0.9`` is the 90th percentile, ``0.5`` the median.

    Returns:
        The quantile as a Python float.

    Raises:
        ValueError: ``q`` is outside [0, 1] (e.g. ``q=90``), or there is no finite norm.

    Example:
        >>> percentile([1.0, 2.0, 3.0, 4.0, float("nan")], 0.5)
        2.5
    """
    qf = _check_q(q)
    arr, fin = _finite(norms)
    if fin.size == 0:
        raise ValueError(f"no finite gradient norms to take a percentile of (got {arr.size} values, all non-finite)")
    return float(np.quantile(fin, qf))


def suggest_max_grad_norm(norms: Any, q: float = 0.9) -> float:
    """Suggest a clipping threshold ``max_grad_norm`` from a history of unclipped norms.

    Playbook 7.8: "Choose a gradient clipping threshold based on the 90th percentile of gradient
    norms. The threshold will be workload dependent, but 90% is a good starting point. If it
    doesn't work, this threshold can be tuned." This returns ``percentile(norms, q)``.

    Args:
        norms: unclipped per-step global gradient norms (e.g. ``opt.grad_norms()``, logged during
            a run without clipping). Non-finite values are ignored.
        q: the quantile as a fraction in [0, 1]; default 0.9.

    Returns:
        The suggested threshold as a float.

    Example:
        >>> suggest_max_grad_norm([float(i) for i in range(1, 12)])
        10.0
    """
    return percentile(norms, q)


def clip_fraction(norms: Any, max_norm: float) -> float:
    """Share of the finite steps whose norm exceeds ``max_norm`` (``norm > max_norm``).

    Skipped (non-finite) steps are neither counted as clipped nor in the denominator.

    Raises:
        ValueError: ``max_norm`` is not a positive number, or there is no finite norm.

    Example:
        >>> clip_fraction([0.5, 1.0, 1.5, 2.0], max_norm=1.0)
        0.5
    """
    m = _check_max_norm(max_norm)
    arr, fin = _finite(norms)
    if fin.size == 0:
        raise ValueError(f"no finite gradient norms to compute a clip fraction from (got {arr.size} values)")
    return float(np.count_nonzero(fin > m)) / float(fin.size)


@dataclass(frozen=True)
class ClipCheck:
    """Result of :func:`check_clipping`."""

    fraction: float  # share of (finite) steps clipped, in [0, 1]
    aggressive: bool  # fraction > threshold
    message: str  # a human-readable verdict (also the warning text when aggressive)
    threshold: float = 0.5
    suggested_max_norm: Optional[float] = None  # 90th percentile, when norms were given


def check_clipping(
    norms_or_fraction: Any,
    max_norm: Optional[float] = None,
    threshold: float = 0.5,
    *,
    warn: bool = True,
) -> ClipCheck:
    """Check whether clipping is "extremely aggressive" (playbook 7.8).

    Playbook 7.8: "We would usually consider having >50% of the updates getting clipped somehow
    as "extremely aggressive"." and "If we find ourselves using extremely aggressive clipping, we
    probably should just cut the learning rate instead." Clipping is aggressive when
    ``fraction > threshold`` (strictly more than half by default); then an
    :class:`AggressiveClippingWarning` is emitted (unless ``warn=False``).

    Args:
        norms_or_fraction: either per-step unclipped norms (1-D tensor/array/list; then
            ``max_norm`` is required and the fraction is :func:`clip_fraction`), or an already
            computed clip fraction (a real number in [0, 1]; then ``max_norm`` must be None). An
            optimizer's counters give the latter as ``clipped_steps / steps``.
        max_norm: the clipping threshold used (with norms only).
        threshold: the fraction above which clipping counts as aggressive; default 0.5.
        warn: emit :class:`AggressiveClippingWarning` when aggressive.

    Returns:
        A :class:`ClipCheck` (fraction, aggressive, message, threshold, suggested_max_norm).

    Example:
        >>> check_clipping([0.5, 0.8, 2.0, 3.0], max_norm=1.0).aggressive
        False
    """
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not (0.0 <= float(threshold) < 1.0):
        raise ValueError(f"threshold must be a fraction in [0, 1), got threshold={threshold!r}")
    threshold = float(threshold)
    suggested: Optional[float] = None
    if isinstance(norms_or_fraction, numbers.Real) and not isinstance(norms_or_fraction, bool):
        if max_norm is not None:
            raise ValueError(
                "check_clipping got a clip fraction and max_norm; pass max_norm only with a sequence "
                f"of norms (got fraction={norms_or_fraction!r}, max_norm={max_norm!r})"
            )
        fraction = float(norms_or_fraction)
        if not (0.0 <= fraction <= 1.0):
            raise ValueError(f"a clip fraction must be in [0, 1], got {norms_or_fraction!r}")
        where = ""
    else:
        if max_norm is None:
            raise ValueError("check_clipping needs max_norm when given a sequence of norms")
        fraction = clip_fraction(norms_or_fraction, max_norm)
        suggested = percentile(norms_or_fraction, 0.9)
        where = f" with max_norm={float(max_norm):g}"
    aggressive = fraction > threshold
    if aggressive:
        advice = (
            f" (the 90th percentile of these norms is {suggested:.4g}: raise max_norm towards it)"
            if suggested is not None
            else ""
        )
        message = (
            f"{fraction:.1%} of steps were clipped{where}, more than {threshold:.0%}: extremely "
            f"aggressive clipping. Playbook 7.8: \"{PLAYBOOK_AGGRESSIVE}\" \"{PLAYBOOK_CUT_LR}\" "
            f"Lower the learning rate instead, or raise the threshold{advice}."
        )
        if warn:
            warnings.warn(message, AggressiveClippingWarning, stacklevel=2)
    else:
        message = f"{fraction:.1%} of steps were clipped{where} (at most {threshold:.0%}: not aggressive)."
    return ClipCheck(fraction, aggressive, message, threshold, suggested)


@dataclass(frozen=True)
class GradNormSummary:
    """Result of :func:`summarize`. Statistics are over the finite norms; NaN when there are none."""

    count: int  # all steps
    finite_count: int  # steps with a finite norm (the others were skipped)
    min: float
    max: float
    mean: float
    median: float
    p90: float  # the 90th percentile: the playbook 7.8 suggestion for max_grad_norm
    p99: float

    @property
    def nonfinite_count(self) -> int:
        """Steps with a NaN/inf norm (skipped by the optimizer)."""
        return self.count - self.finite_count

    def __str__(self) -> str:
        return (
            f"{self.count} steps ({self.nonfinite_count} non-finite): min {self.min:.4g}, "
            f"median {self.median:.4g}, mean {self.mean:.4g}, p90 {self.p90:.4g}, "
            f"p99 {self.p99:.4g}, max {self.max:.4g}"
        )


def summarize(norms: Any) -> GradNormSummary:
    """Summarize a gradient-norm history: count, finite count, min, max, mean, median, p90, p99.

    Non-finite norms are counted in ``count`` but excluded from the statistics. Unlike
    :func:`percentile`, an all-non-finite (or empty) history does not raise: the statistics are
    NaN and ``finite_count`` is 0.

    Example:
        >>> s = summarize([1.0, 2.0, 3.0, float("inf")])
        >>> (s.count, s.finite_count, s.median)
        (4, 3, 2.0)
    """
    arr, fin = _finite(norms)
    if fin.size == 0:
        nan = float("nan")
        return GradNormSummary(int(arr.size), 0, nan, nan, nan, nan, nan, nan)
    p50, p90, p99 = np.quantile(fin, [0.5, 0.9, 0.99])
    return GradNormSummary(
        count=int(arr.size),
        finite_count=int(fin.size),
        min=float(fin.min()),
        max=float(fin.max()),
        mean=float(fin.mean()),
        median=float(p50),
        p90=float(p90),
        p99=float(p99),
    )
