"""The two gradient-norm plots playbook 7.8 asks for, written as one PNG.

Playbook 7.8: "Log the unclipped gradient norm during training. By default, generate: A plot of
gradient norm vs step; A histogram of gradient norms aggregated over all steps".

Uses matplotlib's object-oriented API (``matplotlib.figure.Figure`` + ``FigureCanvasAgg``): pyplot
is never imported, so the user's global backend and pyplot's figure registry are untouched and
nothing needs a display.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Union

import numpy as np

from playbook.stats.grad_norms import as_float64, clip_fraction

__all__ = ["plot_grad_norms"]

PathLike = Union[str, "os.PathLike[str]"]


def _log_bins(pos: np.ndarray, bins: int) -> np.ndarray:
    lo, hi = float(pos.min()), float(pos.max())
    if hi <= lo * (1 + 1e-9):  # all (nearly) equal: widen so the bins have width
        lo, hi = lo / 1.5, hi * 1.5
    return np.geomspace(lo, hi, bins + 1)


def plot_grad_norms(
    norms: Any,
    path: PathLike,
    *,
    max_norm: Optional[float] = None,
    title: Optional[str] = None,
    steps: Any = None,
    q: float = 0.9,
    bins: int = 50,
    dpi: int = 100,
) -> list[str]:
    """Plot a gradient-norm history: norm vs step and a histogram, two panels in ONE png.

    Left panel: unclipped norm vs step on a log y axis, with a horizontal line at ``max_norm``
    (if given, with the share of clipped steps in the legend), a line at the ``q``-quantile (the
    playbook's suggested threshold, 90th percentile by default), and skipped steps (non-finite
    norms) marked with red crosses along the top edge. Right panel: histogram of the finite norms
    with log-spaced bins (log x axis) and the same two vertical lines. If some finite norms are
    <= 0 the step plot uses a symlog axis, and the histogram shows only the positive norms (the
    others are counted in its title).

    Args:
        norms: 1-D torch tensor, numpy array or list of per-step unclipped norms.
        path: the PNG file to write (parent directories are created). Exactly this one file is
            written, whatever its suffix; matplotlib picks the format from the suffix, so use
            ``.png``.
        max_norm: the clipping threshold in use, drawn as a line; None to omit.
        title: figure title (default: "Gradient norms").
        steps: optional x values (one per norm, e.g. global step numbers); default 0..n-1.
        q: quantile (fraction in [0, 1]) of the suggested-threshold line.
        bins: number of histogram bins.
        dpi: resolution of the PNG.

    Returns:
        The list of paths written: ``[str(path)]``.

    Raises:
        ValueError: ``norms`` is empty or not 1-D, or ``steps`` has a different length.

    Example:
        >>> import numpy as np, tempfile, os
        >>> d = tempfile.mkdtemp()
        >>> plot_grad_norms(np.random.default_rng(0).lognormal(size=200), os.path.join(d, "g.png"),
        ...                 max_norm=2.0)  # doctest: +ELLIPSIS
        ['.../g.png']
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.transforms import blended_transform_factory

    arr = as_float64(norms)
    if arr.size == 0:
        raise ValueError("plot_grad_norms needs at least one gradient norm, got an empty sequence")
    x = np.arange(arr.size, dtype=np.float64) if steps is None else as_float64(steps, name="steps")
    if x.shape != arr.shape:
        raise ValueError(f"steps must have one entry per norm: got {x.size} steps for {arr.size} norms")
    finite = np.isfinite(arr)
    fin = arr[finite]
    pos = fin[fin > 0]
    qline = float(np.quantile(fin, q)) if fin.size else None

    fig = Figure(figsize=(12, 4.5), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    ax, axh = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})

    # --- norm vs step -------------------------------------------------------------------------
    ax.plot(x[finite], fin, lw=0.8, color="C0", label="unclipped norm")
    if fin.size and fin.size == pos.size:
        ax.set_yscale("log")
    elif fin.size:
        ax.set_yscale("symlog", linthresh=float(pos.min()) if pos.size else 1.0)
    if max_norm is not None:
        frac = clip_fraction(fin, max_norm) if fin.size else float("nan")
        ax.axhline(max_norm, color="C3", ls="--", lw=1.2, label=f"max_norm = {max_norm:.4g} ({frac:.1%} clipped)")
    if qline is not None:
        ax.axhline(qline, color="C2", ls=":", lw=1.5, label=f"p{100 * q:g} = {qline:.4g} (suggested)")
    if not finite.all():
        top = blended_transform_factory(ax.transData, ax.transAxes)
        ax.plot(
            x[~finite], np.full(int((~finite).sum()), 0.97), ls="none", marker="x", color="red",
            transform=top, clip_on=False, label=f"skipped (non-finite): {int((~finite).sum())}",
        )
    ax.set_xlabel("step")
    ax.set_ylabel("global gradient norm (unclipped)")
    ax.set_title("gradient norm vs step")
    ax.grid(True, which="both", alpha=0.3)
    # "best" placement scans the data: fine for typical histories, too slow for very long ones.
    ax.legend(loc="best" if arr.size <= 20_000 else "upper left", fontsize="small", framealpha=0.9)

    # --- histogram ----------------------------------------------------------------------------
    if pos.size:
        axh.hist(pos, bins=_log_bins(pos, bins), color="C0", alpha=0.8)
        axh.set_xscale("log")
    if max_norm is not None:
        axh.axvline(max_norm, color="C3", ls="--", lw=1.2, label=f"max_norm = {max_norm:.4g}")
    if qline is not None and qline > 0:
        axh.axvline(qline, color="C2", ls=":", lw=1.5, label=f"p{100 * q:g} = {qline:.4g}")
    note = []
    if fin.size != pos.size:
        note.append(f"{fin.size - pos.size} norms <= 0 not shown")
    if not finite.all():
        note.append(f"{int((~finite).sum())} non-finite not shown")
    axh.set_title("histogram of gradient norms" + (f" ({'; '.join(note)})" if note else ""), fontsize="medium")
    axh.set_xlabel("global gradient norm (log-spaced bins)")
    axh.set_ylabel("steps")
    if max_norm is not None or qline is not None:
        axh.legend(loc="upper right", fontsize="small")

    fig.suptitle(title if title is not None else f"Gradient norms ({arr.size} steps)")
    out = os.fspath(path)
    parent = os.path.dirname(out)
    if parent:
        os.makedirs(parent, exist_ok=True)
    fig.savefig(out)
    fig.clear()  # not registered with pyplot, so nothing else holds it: this frees it
    return [out]
