"""Shared helpers for the benchmarks: timing (CPU wall clock, CUDA events), STREAM-style
bandwidth, text tables and JSON output with the environment recorded.

Self-contained: needs only the standard library, plus torch for the functions that time torch
work (imported lazily). Benchmarks import it as ``from _common import ...`` (the ``benchmarks/``
directory is on ``sys.path`` when a script there is run) or as ``benchmarks._common``.

Conventions: a timed callable takes no arguments; times are seconds per call unless a name says
``ms``; bandwidth is in GB/s = 1e9 bytes/s, counting read + write bytes.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence

__all__ = [
    "Timing",
    "cpu_model",
    "env_info",
    "fmt_float",
    "format_table",
    "stream_bandwidth",
    "time_cpu",
    "time_cuda",
    "time_fn",
    "time_interleaved",
    "write_json",
]


@dataclass
class Timing:
    """Per-call time statistics over ``repeats`` batches of ``inner`` calls each."""

    median_s: float  # median over repeats of (batch time / inner)
    min_s: float
    max_s: float
    repeats: int
    inner: int
    samples_s: list = field(default_factory=list)  # per-call time of each repeat

    @property
    def median_ms(self) -> float:
        return 1e3 * self.median_s

    def to_dict(self) -> dict:
        return asdict(self)


def _plan(first_call_s: float, target_s: float, repeats: int) -> int:
    """Calls per repeat so that ``repeats`` batches take about ``target_s`` in all."""
    per_repeat = target_s / max(1, repeats)
    return max(1, int(per_repeat / max(first_call_s, 1e-9)))


def time_cpu(
    fn: Callable[[], Any],
    *,
    target_s: float = 0.3,
    repeats: int = 7,
    warmup: int = 3,
    sync: Optional[Callable[[], Any]] = None,
) -> Timing:
    """Wall-clock timing with ``time.perf_counter``: warm up, size the batches, take the median.

    ``sync`` (e.g. ``torch.cuda.synchronize``) is called before reading the clock, for devices
    that run asynchronously; on the CPU it is not needed.
    """
    sync = sync or (lambda: None)
    for _ in range(max(1, warmup)):
        fn()
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    inner = _plan(time.perf_counter() - t0, target_s, repeats)
    samples = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        sync()
        samples.append((time.perf_counter() - t0) / inner)
    return Timing(statistics.median(samples), min(samples), max(samples), len(samples), inner, samples)


def time_cuda(
    fn: Callable[[], Any],
    *,
    target_s: float = 0.3,
    repeats: int = 7,
    warmup: int = 3,
) -> Timing:
    """Device timing with CUDA events on the current stream: median over batches of calls."""
    import torch

    for _ in range(max(1, warmup)):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    inner = _plan(start.elapsed_time(end) / 1e3, target_s, repeats)
    samples = []
    for _ in range(max(1, repeats)):
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1e3 / inner)
    return Timing(statistics.median(samples), min(samples), max(samples), len(samples), inner, samples)


def _batch_timer(device: str) -> Callable[[Callable[[], Any], int], float]:
    """``timer(fn, n)`` -> seconds per call of ``n`` back-to-back calls (CUDA events on a GPU)."""
    if str(device).startswith("cuda"):
        import torch

        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def cuda_timer(fn: Callable[[], Any], n: int) -> float:
            start.record()
            for _ in range(n):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / n

        return cuda_timer

    def cpu_timer(fn: Callable[[], Any], n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) / n

    return cpu_timer


def time_interleaved(
    fns: dict,
    device: str = "cpu",
    *,
    target_s: float = 0.3,
    repeats: int = 7,
    warmup: int = 3,
    settle_s: float = 0.0,
) -> dict:
    """Time several callables round-robin: repeat ``r`` times ``fns[k]`` for every ``k`` before
    repeat ``r + 1`` starts, so load drift on a shared machine hits all of them alike and ratios
    between them stay fair. Each gets about ``target_s`` in all; medians as in :func:`time_cpu`.

    Args:
        fns: ``{name: callable}``.
        settle_s: before each timed batch, call ``fns[k]`` untimed for at least this long, so a
            batch does not inherit the previous row's after-effects (e.g. torch's OpenMP workers
            still spinning after torch's last parallel region, competing for the cores).

    Returns:
        ``{name: Timing}``.
    """
    timer = _batch_timer(device)
    inner = {}
    for k, fn in fns.items():
        for _ in range(max(1, warmup)):
            fn()
        inner[k] = _plan(timer(fn, 1), target_s, repeats)
    samples: dict = {k: [] for k in fns}
    for _ in range(max(1, repeats)):
        for k, fn in fns.items():
            if settle_s > 0:
                t0 = time.perf_counter()
                while True:
                    timer(fn, 1)
                    if time.perf_counter() - t0 >= settle_s:
                        break
            samples[k].append(timer(fn, inner[k]))
    return {
        k: Timing(statistics.median(v), min(v), max(v), len(v), inner[k], v) for k, v in samples.items()
    }


def time_fn(fn: Callable[[], Any], device: str = "cpu", **kw: Any) -> Timing:
    """:func:`time_cuda` for a CUDA device, :func:`time_cpu` otherwise."""
    return time_cuda(fn, **kw) if str(device).startswith("cuda") else time_cpu(fn, **kw)


def stream_bandwidth(device: str = "cpu", nbytes: int = 64 << 20, **timing_kw: Any) -> dict:
    """STREAM-style bandwidth with torch on ``device``, counting read + write bytes.

    Two float32 tensors ``a``, ``b`` of ``nbytes`` each:
      - copy:  ``b.copy_(a)``        moves 2 * nbytes (read a, write b)
      - axpy:  ``a.add_(b, alpha=s)`` moves 3 * nbytes (read a, b; write a): STREAM "add"-like
    On the CPU torch runs both with ``torch.get_num_threads()`` threads. Use a buffer well beyond
    the last-level cache (64 MB default on the CPU; pass e.g. 1 GB on a GPU).

    Returns:
        ``{"copy_gbps", "axpy_gbps", "best_gbps", "nbytes", "device"}``.
    """
    import torch

    n = nbytes // 4
    a = torch.rand(n, device=device)
    b = torch.empty_like(a)
    res = {}
    for name, fn, moved in (
        ("copy", lambda: b.copy_(a), 2 * n * 4),
        ("axpy", lambda: a.add_(b, alpha=1e-3), 3 * n * 4),
    ):
        t = time_fn(fn, device, **timing_kw)
        res[f"{name}_gbps"] = moved / t.median_s / 1e9
    res["best_gbps"] = max(res["copy_gbps"], res["axpy_gbps"])
    res["nbytes"] = int(n * 4)
    res["device"] = str(device)
    del a, b
    return res


def fmt_float(x: Optional[float], spec: str = ".3g") -> str:
    """Format a number for a table; None/NaN -> "n/a"."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return format(x, spec)


def format_table(rows: Sequence[dict], columns: Sequence[tuple], *, title: Optional[str] = None) -> str:
    """A plain-text table.

    Args:
        rows: dicts holding the values.
        columns: ``(key, header)`` or ``(key, header, formatter)`` tuples; a formatter turns the
            value into a string (default: ``str``; floats via :func:`fmt_float`).
        title: optional line above the table.
    """
    heads, cells = [], []
    for col in columns:
        heads.append(col[1])
    for r in rows:
        line = []
        for col in columns:
            key, fmt = col[0], (col[2] if len(col) > 2 else None)
            v = r.get(key)
            if fmt is not None:
                s = fmt(v)
            elif isinstance(v, float) or v is None:
                s = fmt_float(v)
            else:
                s = str(v)
            line.append(s)
        cells.append(line)
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(heads)]

    def join(parts: Iterable[str]) -> str:
        out = []
        for i, p in enumerate(parts):
            out.append(p.ljust(widths[i]) if i == 0 else p.rjust(widths[i]))
        return "  ".join(out).rstrip()

    lines = [title] if title else []
    lines.append(join(heads))
    lines.append("  ".join("-" * w for w in widths))
    lines += [join(c) for c in cells]
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def retain_freed_memory() -> str:
    """Make glibc's malloc keep freed memory for reuse in this process; returns what was done.

    By default glibc serves every block above its mmap threshold (at most 32 MB) with a fresh
    ``mmap`` and returns it to the kernel on ``free``, and trims the heap top: a training step that
    allocates its activations and gradients anew then page-faults on every page of them, every step
    (measured on this project's VM: a fresh 64 MB tensor + copy 25 ms, the copy alone 3.7 ms). That
    cost falls on torch and playbook alike and hides the kernels. ``mallopt(M_MMAP_MAX, 0)`` and a
    2 GB ``M_TRIM_THRESHOLD`` make malloc reuse freed memory instead, which is what PyTorch's CPU
    performance guide gets by preloading jemalloc or TCMalloc. Applies to later allocations only.

    Returns:
        ``"retain (mallopt)"``, or why nothing was done (not glibc, mallopt refused).
    """
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return f"default (not glibc: {sys.platform} {platform.libc_ver()[0] or 'unknown libc'})"
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    if libc.mallopt(m_mmap_max, 0) != 1 or libc.mallopt(m_trim_threshold, 2**31 - 1) != 1:
        return "default (mallopt refused)"
    return "retain (mallopt)"


def env_info(extra: Optional[dict] = None) -> dict:
    """The environment of a run: host, CPU, threads, python/torch versions, playbook build info."""
    info: dict = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
            info["torch_cuda"] = torch.version.cuda
    except Exception as e:  # torch missing or broken: record why, keep going
        info["torch"] = f"unavailable: {e}"
    try:
        import playbook

        info["playbook_build"] = playbook.build_info()
    except Exception as e:
        info["playbook_build"] = f"unavailable: {type(e).__name__}: {e}"
    if extra:
        info.update(extra)
    return info


def write_json(path: str, payload: dict) -> str:
    """Write ``payload`` as indented JSON, creating the parent directory; returns the path."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with open(path, "w") as f:
        json.dump(_clean(payload), f, indent=2, default=_json_default, allow_nan=False)
        f.write("\n")
    return path


def _clean(o: Any) -> Any:
    """NaN/inf -> None (strict JSON); dataclasses with ``to_dict`` expanded; recursively."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if hasattr(o, "to_dict"):
        return _clean(o.to_dict())
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def _json_default(o: Any) -> Any:
    return str(o)
