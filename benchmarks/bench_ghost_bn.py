"""Time forward + backward of ghost batch norm: playbook vs nn.BatchNorm, the split loop, a reshape.

What is timed: ``y = m(x); y.backward(dy)`` in training mode (running stats updated), with fixed
random ``x`` (requires_grad) and ``dy``; the rows of one (shape, dtype) cell are interleaved
round-robin (``_common.time_interleaved``) so load drift on a shared machine hits all alike.

Rows (per shape and dtype; "cl" = channels_last memory, 4D shapes only):
    nn.BatchNorm            nn.BatchNorm2d / 1d over the whole batch (not ghost BN: the speed
                            to match), NCHW and cl
    split loop              the usual recipe: nn.BatchNorm over ``x.split(vbs)``, ``torch.cat``,
                            NCHW and cl
    reshape (Keras-style)   view (N/vbs, vbs, C, ...), mean/var over (1, spatial) with torch ops
                            (needs vbs | N)
    playbook                playbook.nn.GhostBatchNorm2d / 1d, NCHW and cl
Ratios: "vs best BN" = time / min(nn.BatchNorm NCHW, nn.BatchNorm cl); "vs loop" = split-loop
time in the same layout / time (speed-up).

Bandwidth floor, bytes per element (forward reads x twice at most and writes y; backward reads x
and dy and writes dx): 6 x element size (fp32 24 B, bf16 12 B). "x floor" = time / (floor bytes /
STREAM GB/s); STREAM GB/s is the best of copy and axpy on two 64 MB float32 buffers measured in
the same run with the same threads, before and after the timed cells (the higher is used).

Allocator: by default (``--malloc retain``) glibc's malloc is told to keep freed memory for reuse
(``_common.retain_freed_memory``: ``mallopt``), as jemalloc/TCMalloc would; otherwise every step's
new output and gradient tensors above 32 MB (and, depending on the heap's history, smaller ones)
are fresh ``mmap`` pages that page-fault on first touch, for torch and playbook alike.
``--malloc default`` measures glibc as configured.

Targets (issue 8, CPU): playbook <= 1.2x the best nn.BatchNorm layout, >= 2x faster than the split
loop in the same layout, within 1.5x of the bandwidth floor.

Usage:
    python benchmarks/bench_ghost_bn.py                  # JSON to bench_results/ghost_bn.json
    python benchmarks/bench_ghost_bn.py --quick --dtypes fp32
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    env_info,
    fmt_float,
    format_table,
    retain_freed_memory,
    stream_bandwidth,
    time_interleaved,
    write_json,
)

# (label, shape, vbs); the last two run on the GPU only by default.
SHAPES = [
    ("N=256 C=64 16x16 vbs=32", (256, 64, 16, 16), 32),
    ("N=512 C=32 32x32 vbs=64", (512, 32, 32, 32), 64),
    ("N=128 C=256 8x8 vbs=16", (128, 256, 8, 8), 16),
    ("1d (4096, 1024) vbs=64", (4096, 1024), 64),
]
GPU_SHAPES = [("N=256 C=256 56x56 vbs=32", (256, 256, 56, 56), 32)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
FLOOR_PER_ELEM = 6  # element reads/writes: x twice + y (forward), x + dy + dx (backward)


def _split_loop(bn: nn.Module, vbs: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: torch.cat([bn(chunk) for chunk in x.split(vbs)])


def _reshape(bn: nn.Module, vbs: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Keras-style ghost BN: reshape to (G, vbs, C, ...), statistics over (1, spatial)."""

    def fn(x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        g = x.reshape(n // vbs, vbs, *x.shape[1:])
        dims = (1, *range(3, g.dim()))
        mean = g.mean(dims, keepdim=True)
        var = g.var(dims, unbiased=False, keepdim=True)
        shape = (1, 1, c) + (1,) * (x.dim() - 2)
        y = (g - mean) * torch.rsqrt(var + bn.eps) * bn.weight.view(shape) + bn.bias.view(shape)
        return y.reshape(x.shape)

    return fn


def _rows(shape: tuple, vbs: int, dtype: torch.dtype, device: str) -> dict[str, tuple[Callable, str]]:
    """name -> (module-like callable, layout)."""
    import playbook

    c = shape[1]
    plain = nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm1d
    ghost = playbook.nn.GhostBatchNorm2d if len(shape) == 4 else playbook.nn.GhostBatchNorm1d
    layouts = ["nchw", "cl"] if len(shape) == 4 else ["nc"]
    rows: dict[str, tuple[Callable, str]] = {}
    for lay in layouts:
        rows[f"nn.BatchNorm {lay}"] = (plain(c, device=device), lay)
        rows[f"split loop {lay}"] = (_split_loop(plain(c, device=device), vbs), lay)
    if shape[0] % vbs == 0:
        rows["reshape (Keras) " + layouts[0]] = (_reshape(plain(c, device=device), vbs), layouts[0])
    for lay in layouts:
        rows[f"playbook {lay}"] = (ghost(c, device=device, virtual_batch_size=vbs), lay)
    return rows


def _step(fn: Callable, x: torch.Tensor, dy: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        x.grad = None
        fn(x).backward(dy)

    return step


def bench_cell(label: str, shape: tuple, vbs: int, dtype_name: str, device: str, timing_kw: dict) -> list[dict]:
    dtype = DTYPES[dtype_name]
    gen = torch.Generator().manual_seed(0)
    base = (torch.randn(shape, generator=gen) * 2 + 1).to(device=device, dtype=dtype)
    dy_base = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    steps, layouts = {}, {}
    for name, (fn, lay) in _rows(shape, vbs, dtype, device).items():
        fmt = torch.channels_last if lay == "cl" else torch.contiguous_format
        # A fresh leaf per row: base.contiguous() would return base itself for the first NCHW row
        # and make it require grad, and every channels_last row's x would then be a non-leaf view
        # whose backward adds a layout-converting copy into base.grad (an artifact that made all
        # channels_last rows, torch's and playbook's, 2-5x slower before this was fixed).
        x = base.clone(memory_format=fmt).requires_grad_()
        assert x.is_leaf and x.is_contiguous(memory_format=fmt)
        dy = dy_base.clone(memory_format=fmt)
        try:
            _step(fn, x, dy)()  # probe: a row torch cannot run is "n/a"
            steps[name] = _step(fn, x, dy)
        except Exception as e:  # noqa: BLE001 - the message is the reason
            print(f"  {name}: n/a ({type(e).__name__}: {str(e).splitlines()[0][:80]})")
        layouts[name] = lay
    timings = time_interleaved(steps, device, **timing_kw)
    numel = base.numel()
    floor_bytes = FLOOR_PER_ELEM * numel * base.element_size()
    bn_times = [timings[k].median_s for k in timings if k.startswith("nn.BatchNorm")]
    best_bn = min(bn_times) if bn_times else None
    out = []
    for name, lay in layouts.items():
        t = timings.get(name)
        loop = timings.get(f"split loop {lay}")
        row = {
            "shape": label,
            "dtype": dtype_name,
            "device": device,
            "impl": name,
            "layout": lay,
            "ms": None if t is None else t.median_ms,
            "vs_best_bn": None if t is None or best_bn is None else t.median_s / best_bn,
            "loop_speedup": None if t is None or loop is None else loop.median_s / t.median_s,
            "gbps": None if t is None else floor_bytes / t.median_s / 1e9,
            "floor_bytes": floor_bytes,
            "timing": t,
        }
        out.append(row)
    return out


def parse_args(argv: Optional[list] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few repeats and short cells (smoke run)")
    ap.add_argument("--dtypes", default="fp32,bf16", help="comma list of fp32,bf16")
    ap.add_argument("--shapes", default=None, help="comma list of shape indices (0-based; default all for the device)")
    ap.add_argument("--devices", default=None, help="comma list of cpu,cuda (default: cpu, plus cuda if usable)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (default: all cores)")
    ap.add_argument("--repeats", type=int, default=None, help="timed batches per cell; default 7, quick 3")
    ap.add_argument("--target-s", type=float, default=None, help="time per row and cell, seconds; default 0.5, quick 0.1")
    ap.add_argument(
        "--malloc",
        choices=["retain", "default"],
        default="retain",
        help="retain: glibc malloc keeps freed memory (no page faults on every step's new tensors, as with "
        "jemalloc/TCMalloc); default: glibc as configured (_common.retain_freed_memory)",
    )
    ap.add_argument("--out", default="bench_results/ghost_bn.json", help="JSON output path ('' to skip)")
    return ap.parse_args(argv)


def main(argv: Optional[list] = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    malloc = retain_freed_memory() if args.malloc == "retain" else "default"
    print(f"malloc: {malloc}")
    timing_kw = {
        "repeats": args.repeats or (3 if args.quick else 7),
        "target_s": args.target_s or (0.1 if args.quick else 0.5),
        "warmup": 1 if args.quick else 3,
    }
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    stream_kw = {"repeats": 3, "target_s": 0.2}
    results, streams, failures = [], {}, []
    for device in devices:
        if device.startswith("cuda"):
            import playbook

            if not playbook.build_info()["cuda"]:
                print("cuda: skipped (playbook built without CUDA kernels)")
                continue
        nbytes = (1 << 30) if device.startswith("cuda") else (64 << 20)
        before = stream_bandwidth(device, nbytes, **stream_kw)
        shapes = SHAPES + (GPU_SHAPES if device.startswith("cuda") else [])
        if args.shapes:
            shapes = [shapes[int(i)] for i in args.shapes.split(",")]
        for label, shape, vbs in shapes:
            for dtype_name in args.dtypes.split(","):
                print(f"[{device}] {label} {dtype_name} ...", flush=True)
                try:
                    results += bench_cell(label, shape, vbs, dtype_name, device, timing_kw)
                except Exception as e:  # noqa: BLE001 - keep the other cells; report at the end
                    traceback.print_exc()
                    failures.append(f"{device} {label} {dtype_name}: {type(e).__name__}: {e}")
        after = stream_bandwidth(device, nbytes, **stream_kw)
        streams[device] = {"before": before, "after": after, "gbps": max(before["best_gbps"], after["best_gbps"])}
    for r in results:
        stream = streams[r["device"]]["gbps"]
        r["x_floor"] = None if r["ms"] is None else (r["ms"] / 1e3) / (r["floor_bytes"] / (stream * 1e9))
    cols = [
        ("shape", "shape"), ("dtype", "dtype"), ("impl", "impl"), ("ms", "ms"),
        ("vs_best_bn", "vs best BN", lambda v: fmt_float(v, ".2f")),
        ("loop_speedup", "vs loop", lambda v: fmt_float(v, ".2f")),
        ("gbps", "GB/s", lambda v: fmt_float(v, ".1f")),
        ("x_floor", "x floor", lambda v: fmt_float(v, ".2f")),
    ]  # fmt: skip
    for device, s in streams.items():
        print(f"\n[{device}] STREAM {s['gbps']:.1f} GB/s (before {s['before']['best_gbps']:.1f}, after {s['after']['best_gbps']:.1f})")
        print(format_table([r for r in results if r["device"] == device], cols))
    if args.out:
        path = write_json(args.out, {"env": env_info({"timing": timing_kw, "malloc": malloc}), "stream": streams, "rows": results, "failures": failures})
        print(f"\nJSON: {path}")
    if failures:
        print("FAILED cells:\n  " + "\n  ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
