"""Gradient-norm statistics, clip-threshold advice and plots (playbook 7.8, "Gradient clipping").

Pure numpy (torch is optional: a torch tensor such as ``opt.grad_norms()`` is accepted but torch
is never imported here); matplotlib is imported only by :func:`plot_grad_norms`.

- :func:`percentile` / :func:`suggest_max_grad_norm`: "Choose a gradient clipping threshold based
  on the 90th percentile of gradient norms." ``q`` is a fraction in [0, 1] (0.9, not 90).
- :func:`clip_fraction` / :func:`check_clipping`: "We would usually consider having >50% of the
  updates getting clipped somehow as "extremely aggressive"." (warns with
  :class:`AggressiveClippingWarning`).
- :func:`summarize`: count, finite count, min, max, mean, median, p90, p99.
- :func:`plot_grad_norms`: norm vs step and a histogram, in one PNG.

Non-finite norms are steps the optimizer skipped: every statistic ignores them.

Example:
    >>> from playbook import stats
    >>> norms = [0.8, 1.1, 0.9, 5.0, 1.0, float("nan"), 1.2, 0.95, 1.05, 1.15]
    >>> round(stats.suggest_max_grad_norm(norms), 3)
    1.96
    >>> check = stats.check_clipping(norms, max_norm=1.2)  # 1 of the 9 finite steps is clipped
    >>> round(check.fraction, 3), check.aggressive
    (0.111, False)
"""

from __future__ import annotations

from playbook.stats.grad_norms import (
    AggressiveClippingWarning,
    ClipCheck,
    GradNormSummary,
    check_clipping,
    clip_fraction,
    percentile,
    suggest_max_grad_norm,
    summarize,
)
from playbook.stats.plots import plot_grad_norms  # matplotlib is imported on first call

__all__ = [
    "AggressiveClippingWarning",
    "ClipCheck",
    "GradNormSummary",
    "check_clipping",
    "clip_fraction",
    "percentile",
    "plot_grad_norms",
    "suggest_max_grad_norm",
    "summarize",
]

