"""Time one optimizer step of Adam + global-norm clipping (playbook 7.8), playbook vs torch.

What is timed: ``step()`` only, the rows of one (device, size, dtype) group interleaved
round-robin (each row holds its own parameters and state; ``--sequential`` times one at a time). Gradients are fixed random tensors set once per cell (no
backward). The torch rows with clipping call ``torch.nn.utils.clip_grad_norm_(params, 1.0,
foreach=...)`` before ``opt.step()`` (that is what a torch user writes); playbook clips inside
its fused kernels (``max_grad_norm=1.0``). Gradient norms are far above 1.0, so clipping is
active on every step.

Rows (per device, problem size and dtype):
    torch for-loop [+ clip]   torch.optim.Adam(foreach=False),  clip_grad_norm_(foreach=False)
    torch foreach  [+ clip]   torch.optim.Adam(foreach=True),   clip_grad_norm_(foreach=True)
    torch fused    [+ clip]   torch.optim.Adam(fused=True),     clip_grad_norm_(foreach=True)
    playbook       [+ clip]   playbook.optim.Adam(max_grad_norm=None / 1.0)
"torch fused + clip" is the baseline of the ratio column.

Problem sizes: (a) 8M params in 8 tensors, (b) 8M in 400 tensors, (c) 200K in 400 tensors and,
on the GPU only by default, (d) 100M in 200 tensors.

Bandwidth floor of Adam + clip, bytes per parameter (each byte read or written once, except the
gradient, read twice: once by the norm pass, once by the update):
    fp32: param 4 read + 4 write, grad 4 + 4 read, exp_avg 4 + 4, exp_avg_sq 4 + 4   = 32 B
    bf16: param 2 read + 2 write, grad 2 + 2 read, fp32 exp_avg 8, fp32 exp_avg_sq 8 = 24 B
(playbook keeps fp32 moments for bf16 params; torch keeps bf16 moments, so its bf16 rows move
fewer bytes: GB/s below always uses the playbook floor, as a common yardstick.)
"GB/s" = floor bytes / time; "x floor" = time / (floor bytes / cell STREAM GB/s), where the cell
STREAM is an in-place axpy (``a += s*b``, read a and b, write a) on two 64 MB (CPU) / 1 GB (GPU)
float32 buffers timed as one more interleaved row of the cell, with the same threads: the
bandwidth of the same minutes as the cell's rows (this VM's reading drifts by up to 2x between
minutes). "x floor (run STREAM)" uses instead the best of a copy and an axpy measured before and
after all cells (the previous definition; the higher reading, the stricter floor).

Usage:
    python benchmarks/bench_optim.py                 # full run, JSON to bench_results/optim.json
    python benchmarks/bench_optim.py --quick --sizes b --dtypes fp32
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import traceback
from dataclasses import dataclass
from typing import Callable, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    env_info,
    fmt_float,
    format_table,
    stream_bandwidth,
    time_fn,
    time_interleaved,
    write_json,
)

MAX_NORM = 1.0
LR = 1e-3

# name -> (numel, tensors, description)
SIZES = {
    "a": (8_000_000, 8, "8M params / 8 tensors"),
    "b": (8_000_000, 400, "8M params / 400 tensors"),
    "c": (200_000, 400, "200K params / 400 tensors"),
    "d": (100_000_000, 200, "100M params / 200 tensors"),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
FLOOR_BYTES = {"fp32": 32, "bf16": 24}  # Adam + clip, per parameter (see the module docstring)
FLOOR_TEXT = {
    "fp32": "param 4r+4w, grad 4r x2 (norm + update), exp_avg 4r+4w, exp_avg_sq 4r+4w = 32 B/param",
    "bf16": "param 2r+2w, grad 2r x2 (norm + update), fp32 exp_avg 4r+4w, fp32 exp_avg_sq 4r+4w = 24 B/param",
}
BASELINE = "torch fused + clip"
# NOTE: [Settle before each batch]
# Interleaved rows run in a fixed order, so a row always follows the same neighbour. After a torch
# row, torch's OpenMP (libgomp) workers keep spinning for a few milliseconds (GOMP_SPINCOUNT) and
# compete for the cores with the next row's threads: on 2 cores that cost the row after
# "torch fused + clip" (always "playbook", no clipping) ~2-3 ms over its first steps, and made
# playbook without clipping look slower than with it (gone with GOMP_SPINCOUNT=0, or with a pause
# before the batch; the same optimizer object toggling max_grad_norm times the same either way).
# Each timed batch is therefore preceded by untimed calls of the same row for SETTLE_S seconds.
# (Measured with playbook's former private thread pool; its kernels now run on torch's OpenMP
# pool (NOTE: [CPU threads on OpenMP] in csrc/cpu/parallel.cpp), which removes the competition;
# the settling is kept because it costs nothing and guards against any other after-effect.)
SETTLE_S = 0.02
PLAYBOOK = "playbook + clip"


# --- implementations ------------------------------------------------------------------------------


@dataclass
class Impl:
    """One row: ``make(params)`` returns ``(step callable, optimizer)``; ``unavailable(device,
    dtype)`` returns None when the row can run, else the reason it is "n/a"."""

    name: str
    make: Callable[[list], tuple]
    unavailable: Callable[[str, torch.dtype], Optional[str]]
    clip: bool


def _torch_impl(mode: str, clip: bool) -> Impl:
    opt_kw = {"loop": {"foreach": False, "fused": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}[mode]
    clip_foreach = mode != "loop"

    def make(params: list) -> tuple:
        opt = torch.optim.Adam(params, lr=LR, betas=(0.9, 0.999), eps=1e-8, **opt_kw)
        if not clip:
            return opt.step, opt

        def step() -> None:
            torch.nn.utils.clip_grad_norm_(params, MAX_NORM, foreach=clip_foreach)
            opt.step()

        return step, opt

    def unavailable(device: str, dtype: torch.dtype) -> Optional[str]:
        # Probe once on a tiny tensor: torch raises for device/dtype combos it cannot do.
        p = torch.nn.Parameter(torch.zeros(4, device=device, dtype=dtype))
        p.grad = torch.ones_like(p)
        try:
            make([p])[0]()
        except Exception as e:  # noqa: BLE001 - the message is the reason
            return f"torch: {type(e).__name__}: {str(e).splitlines()[0][:80]}"
        return None

    label = {"loop": "torch for-loop", "foreach": "torch foreach", "fused": "torch fused"}[mode]
    return Impl(label + (" + clip" if clip else ""), make, unavailable, clip)


_PLAYBOOK_ERR: Optional[str] = None


def _playbook_optim():
    """Return ``playbook.optim`` or None (the reason kept in _PLAYBOOK_ERR)."""
    global _PLAYBOOK_ERR
    try:
        import playbook.optim as pbo

        pbo.Adam  # noqa: B018 - must exist
        return pbo
    except Exception as e:  # noqa: BLE001
        _PLAYBOOK_ERR = f"playbook.optim not importable: {type(e).__name__}: {e}"
        return None


def _playbook_impl(clip: bool) -> Impl:
    def make(params: list) -> tuple:
        pbo = _playbook_optim()
        opt = pbo.Adam(params, lr=LR, betas=(0.9, 0.999), eps=1e-8, max_grad_norm=MAX_NORM if clip else None)
        return opt.step, opt

    def unavailable(device: str, dtype: torch.dtype) -> Optional[str]:
        if _playbook_optim() is None:
            return _PLAYBOOK_ERR
        if device.startswith("cuda"):
            import playbook

            try:
                if not playbook.build_info()["cuda"]:
                    return "playbook built without CUDA"
            except Exception as e:  # noqa: BLE001
                return f"playbook.build_info() failed: {e}"
        return None

    return Impl("playbook" + (" + clip" if clip else ""), make, unavailable, clip)


def all_impls() -> list[Impl]:
    out = []
    for mode in ("loop", "foreach", "fused"):
        out += [_torch_impl(mode, False), _torch_impl(mode, True)]
    return out + [_playbook_impl(False), _playbook_impl(True)]


# --- problem setup --------------------------------------------------------------------------------


def make_params(numel: int, ntensors: int, dtype: torch.dtype, device: str, seed: int = 0) -> list:
    """``ntensors`` parameters totalling ``numel`` elements (sizes equal up to the remainder),
    each with a fixed random gradient (global norm ~ sqrt(numel) >> MAX_NORM)."""
    g = torch.Generator(device=device).manual_seed(seed)
    base, rem = divmod(numel, ntensors)
    params = []
    for i in range(ntensors):
        n = base + (1 if i < rem else 0)
        p = torch.nn.Parameter(0.02 * torch.randn(n, generator=g, device=device, dtype=torch.float32).to(dtype))
        p.grad = torch.randn(n, generator=g, device=device, dtype=torch.float32).to(dtype)
        params.append(p)
    return params


# --- the run --------------------------------------------------------------------------------------


def _row(impl: Impl, device: str, size: str, dtype_name: str) -> dict:
    numel, ntensors, _ = SIZES[size]
    return {"device": device, "size": size, "dtype": dtype_name, "impl": impl.name, "clip": impl.clip,
            "numel": numel, "tensors": ntensors, "ms": None, "status": "ok"}


def _error(e: Exception) -> str:
    traceback.print_exc()
    return f"error: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}"


def _free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def run_cell(impl: Impl, device: str, size: str, dtype_name: str, timing_kw: dict) -> dict:
    """Time one row alone (``--sequential``: least memory)."""
    return run_group([impl], device, size, dtype_name, timing_kw)[0]


def run_group(impls: list, device: str, size: str, dtype_name: str, timing_kw: dict) -> list:
    """Time every row of one (device, size, dtype) group, interleaved round-robin (see
    ``_common.time_interleaved``) so that load drift on a shared machine does not bias the
    ratios. Each row has its own parameters, gradients and optimizer state."""
    numel, ntensors, _ = SIZES[size]
    dtype = DTYPES[dtype_name]
    rows, steps, opts = [], {}, {}
    for i, impl in enumerate(impls):
        row = _row(impl, device, size, dtype_name)
        rows.append(row)
        why = impl.unavailable(device, dtype)
        if why is not None:
            row["status"] = f"n/a: {why}"
            continue
        try:
            params = make_params(numel, ntensors, dtype, device)
            step, opts[i] = impl.make(params)
            step()  # lazy state init; raises here for unsupported inputs
            steps[i] = step
        except Exception as e:  # noqa: BLE001 - keep going, report the failure in the table
            row["status"] = _error(e)
    try:
        settle = {"settle_s": SETTLE_S} if len(steps) > 1 else {}
        fns = dict(steps)
        if steps:  # the cell's own bandwidth reading, in the same rounds (see add_derived)
            fns[STREAM_ROW], stream_bytes = _stream_axpy(device)
        timings = time_interleaved(fns, device, **timing_kw, **settle) if steps else {}
        stream_t = timings.pop(STREAM_ROW, None)
        for i, t in timings.items():
            rows[i]["ms"] = t.median_ms
            rows[i]["timing"] = t.to_dict()
            if stream_t is not None:
                rows[i]["cell_stream_gbps"] = stream_bytes / stream_t.median_s / 1e9
    except Exception as e:  # noqa: BLE001 - a failure mid-run: retry the rows one by one
        print(f"interleaved timing failed ({type(e).__name__}: {e}); timing rows one at a time")
        for i, step in steps.items():
            try:
                t = time_fn(step, device, **timing_kw)
                rows[i]["ms"], rows[i]["timing"] = t.median_ms, t.to_dict()
            except Exception as e2:  # noqa: BLE001
                rows[i]["status"] = _error(e2)
    finally:
        _sanity(rows, opts)
        steps.clear()
        opts.clear()
        _free(device)
    return rows


STREAM_ROW = "stream axpy"


def _stream_axpy(device: str) -> tuple[Callable[[], object], int]:
    """The STREAM axpy of ``_common.stream_bandwidth`` (``a += s*b`` on two float32 buffers of
    64 MB on the CPU, 1 GB on a GPU) as one more interleaved row of a cell: returns the callable
    and the bytes it moves per call (read a, b; write a)."""
    n = ((1 << 30) if device.startswith("cuda") else (64 << 20)) // 4
    a = torch.rand(n, device=device)
    b = torch.rand(n, device=device)
    return (lambda: a.add_(b, alpha=1e-3)), 3 * n * 4


def _sanity(rows: list, opts: dict) -> None:
    """For playbook rows, record the optimizer's own counters: every step must have been taken
    (no skips: a skipped step does less work) and, with clipping on, clipped."""
    for i, opt in opts.items():
        if not rows[i]["impl"].startswith("playbook"):
            continue
        try:
            rows[i]["skipped_steps"] = int(opt.skipped_steps)
            if hasattr(opt, "clip_fraction"):
                rows[i]["clip_fraction"] = float(opt.clip_fraction())
        except Exception as e:  # noqa: BLE001 - informational only
            rows[i]["sanity_error"] = f"{type(e).__name__}: {e}"
            continue
        if rows[i]["skipped_steps"]:
            rows[i]["status"] = f"ok (WARNING: {rows[i]['skipped_steps']} steps skipped: timing not comparable)"


def add_derived(rows: list, stream: dict) -> None:
    """Fill ratio vs the baseline, effective GB/s and x floor into each row (in place)."""
    base = {(r["device"], r["size"], r["dtype"]): r["ms"] for r in rows if r["impl"] == BASELINE}
    for r in rows:
        ms = r["ms"]
        floor_bytes = FLOOR_BYTES[r["dtype"]] * r["numel"]
        b = base.get((r["device"], r["size"], r["dtype"]))
        run_ref = stream[r["device"]]["best_gbps"]
        # The cell's own STREAM (interleaved with its rows: the bandwidth of the same minutes) when
        # measured; this VM's bandwidth drifts by up to 2x between minutes.
        ref = r.get("cell_stream_gbps") or run_ref
        floor_ms = floor_bytes / (ref * 1e9) * 1e3
        r["floor_gbps"] = ref
        r["floor_ms"] = floor_ms
        r["ratio_vs_baseline"] = (ms / b) if (ms is not None and b) else None
        r["gbps"] = (floor_bytes / (ms * 1e-3) / 1e9) if ms else None
        r["x_floor"] = (ms / floor_ms) if ms else None
        r["x_floor_run_stream"] = (ms / (floor_bytes / (run_ref * 1e9) * 1e3)) if ms else None
        r["pct_of_copy"] = (r["gbps"] / stream[r["device"]]["copy_gbps"]) if ms else None


def evaluate_targets(rows: list, dtypes: list, devices: list) -> list:
    """The issue's performance targets, each PASS / FAIL / n/a, per dtype measured."""
    def find(device: str, size: str, dtype: str, impl: str) -> Optional[dict]:
        for r in rows:
            if (r["device"].split(":")[0], r["size"], r["dtype"], r["impl"]) == (device, size, dtype, impl):
                return r
        return None

    specs = [
        ("cpu", "b", "CPU (b) playbook+clip <= 0.5x torch fused+clip", "ratio_vs_baseline", "<=", 0.5),
        ("cpu", "c", "CPU (c) playbook+clip <= 0.1x torch fused+clip", "ratio_vs_baseline", "<=", 0.1),
        ("cpu", "a", "CPU (a) playbook+clip within 1.25x of the bandwidth floor", "x_floor", "<=", 1.25),
        ("cpu", "c", "CPU (c) playbook+clip within 1.5x of the bandwidth floor", "x_floor", "<=", 1.5),
        # Same kernels and the same work (the norm is computed either way, for the history): no
        # clipping must not be slower than clipping; 5% allows for timing noise.
        ("cpu", "a", "CPU (a) playbook no clip <= 1.05x playbook+clip", "noclip_vs_clip", "<=", 1.05),
        ("cpu", "b", "CPU (b) playbook no clip <= 1.05x playbook+clip", "noclip_vs_clip", "<=", 1.05),
        ("cpu", "c", "CPU (c) playbook no clip <= 1.05x playbook+clip", "noclip_vs_clip", "<=", 1.05),
        ("cuda", "d", "GPU (d, 100M) playbook+clip >= 85% of copy bandwidth", "pct_of_copy", ">=", 0.85),
        ("cuda", "d", "GPU (d, 100M) playbook+clip <= 0.75x torch fused+clip", "ratio_vs_baseline", "<=", 0.75),
    ]
    out = []
    kinds = {d.split(":")[0] for d in devices}
    for dev, size, text, key, op, limit in specs:
        if dev not in kinds:
            continue
        for dt in dtypes:
            r = find(dev, size, dt, PLAYBOOK)
            if key == "noclip_vs_clip":
                nc = find(dev, size, dt, "playbook")
                if r is None or nc is None:
                    r = None
                else:
                    r = dict(r, noclip_vs_clip=nc["ms"] / r["ms"] if nc.get("ms") and r.get("ms") else None)
            val = r.get(key) if r else None
            if r is None:
                status, note = "n/a", f"size {size} not run"
            elif val is None:
                status, note = "n/a", r["status"] if r["status"] != "ok" else "baseline n/a"
            else:
                ok = val <= limit if op == "<=" else val >= limit
                status, note = ("PASS" if ok else "FAIL"), ""
            out.append({"target": f"{text} [{dt}]", "value": val, "limit": f"{op} {limit}", "status": status, "note": note})
    return out


def print_tables(rows: list, stream: dict, targets: list) -> None:
    for device in dict.fromkeys(r["device"] for r in rows):
        s = stream[device]
        print(f"\n== {device}: STREAM copy {s['copy_gbps']:.1f} GB/s, axpy {s['axpy_gbps']:.1f} GB/s "
              f"({s['nbytes'] >> 20} MB float32 buffers, read+write bytes, best of before/after the cells: "
              f"{s['before']['best_gbps']:.1f} / {s['after']['best_gbps']:.1f}); \"x floor\" uses each cell's own "
              f"interleaved STREAM (\"cell STREAM\"), \"x floor (run STREAM)\" uses {s['best_gbps']:.1f} GB/s")
        dev_rows = [dict(r, note="" if r["status"] == "ok" else r["status"][:70]) for r in rows if r["device"] == device]
        cols = [
            ("size", "size"),
            ("dtype", "dtype"),
            ("impl", "impl"),
            ("ms", "ms/step", lambda v: fmt_float(v, ".3f")),
            ("ratio_vs_baseline", "vs fused+clip", lambda v: fmt_float(v, ".2f") + ("x" if v is not None else "")),
            ("gbps", "GB/s", lambda v: fmt_float(v, ".1f")),
            ("floor_gbps", "cell STREAM", lambda v: fmt_float(v, ".1f")),
            ("x_floor", "x floor", lambda v: fmt_float(v, ".2f")),
            ("x_floor_run_stream", "x floor (run STREAM)", lambda v: fmt_float(v, ".2f")),
            ("note", ""),
        ]
        print(format_table(dev_rows, cols))
    print("\nBandwidth floor of Adam + clip (bytes per parameter):")
    for k, v in FLOOR_TEXT.items():
        print(f"  {k}: {v}")
    print("  GB/s = floor bytes / time for every row (torch bf16 keeps bf16 moments: it moves 16 B/param).")
    if targets:
        print()
        print(format_table(targets, [
            ("target", "target"),
            ("value", "measured", lambda v: fmt_float(v, ".3f")),
            ("limit", "limit"),
            ("status", "status"),
            ("note", "", lambda v: (v or "")[:60]),
        ], title="Targets"))


def parse_args(argv: Optional[list] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few repeats and short cells (smoke run)")
    ap.add_argument("--sizes", default=None, help="comma list of a,b,c,d (default: a,b,c on CPU, a,b,c,d on GPU)")
    ap.add_argument("--dtypes", default="fp32,bf16", help="comma list of fp32,bf16")
    ap.add_argument("--devices", default=None, help="comma list of cpu,cuda (default: cpu, plus cuda if usable)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (default: all cores)")
    ap.add_argument("--repeats", type=int, default=None, help="timed batches per cell (median taken); default 7, quick 3")
    ap.add_argument("--target-s", type=float, default=None, help="time per cell, seconds; default 0.3, quick 0.05")
    ap.add_argument("--impls", default=None, help="comma list of substrings selecting rows, e.g. 'fused,playbook'")
    ap.add_argument("--sequential", action="store_true",
                    help="time rows one after another instead of interleaved (less memory: one row's state at a time)")
    ap.add_argument("--out", default="bench_results/optim.json", help="JSON output path ('' to skip)")
    args = ap.parse_args(argv)
    for name, allowed in (("sizes", SIZES), ("dtypes", DTYPES)):
        val = getattr(args, name)
        if val is not None:
            items = [x.strip() for x in val.split(",") if x.strip()]
            bad = [x for x in items if x not in allowed]
            if bad or not items:
                ap.error(f"--{name}: unknown {bad or val!r}; choose from {sorted(allowed)}")
            setattr(args, name, items)
    return args


def cuda_usable() -> tuple[bool, str]:
    """The GPU runs by default when torch sees a GPU and playbook was built with CUDA kernels
    (``--devices cpu,cuda`` forces it, e.g. for the torch rows alone)."""
    if not torch.cuda.is_available():
        return False, "torch.cuda.is_available() is False"
    try:
        import playbook

        if not playbook.build_info()["cuda"]:
            return False, "playbook built without CUDA (pass --devices cpu,cuda for the torch rows)"
    except Exception as e:  # noqa: BLE001
        return False, f"playbook.build_info() unavailable ({type(e).__name__}); pass --devices cpu,cuda for torch rows"
    return True, ""


def main(argv: Optional[list] = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    timing_kw = {
        "repeats": args.repeats or (3 if args.quick else 7),
        "target_s": args.target_s or (0.05 if args.quick else 0.3),
        "warmup": 1 if args.quick else 3,
    }
    if args.devices:
        devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    else:
        use_cuda, why = cuda_usable()
        devices = ["cpu"] + (["cuda"] if use_cuda else [])
        if not use_cuda and torch.cuda.is_available():
            print(f"note: GPU present but not benchmarked: {why}")
    impls = all_impls()
    if args.impls:
        keys = [k.strip() for k in args.impls.split(",") if k.strip()]
        impls = [i for i in impls if any(k in i.name for k in keys) or i.name == BASELINE]

    pb = _playbook_optim()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu capability "
          f"{torch.backends.cpu.get_cpu_capability()}; "
          + ("playbook.optim importable" if pb is not None else _PLAYBOOK_ERR))

    stream, rows = {}, []
    for device in devices:
        dev = "cuda" if device.startswith("cuda") else "cpu"
        nbytes = (1 << 30) if dev == "cuda" else (64 << 20)
        before = stream_bandwidth(device, nbytes, **timing_kw)
        sizes = args.sizes or (["a", "b", "c", "d"] if dev == "cuda" else ["a", "b", "c"])
        for size in sizes:
            for dt in args.dtypes:
                if args.sequential:
                    group = [run_cell(impl, device, size, dt, timing_kw) for impl in impls]
                else:
                    group = run_group(impls, device, size, dt, timing_kw)
                rows += group
                for row in group:
                    ms = (f"{fmt_float(row['ms'], '.3f')} ms/step (median)" if row["ms"] is not None
                          else row["status"][:60])
                    print(f"  {device} size={size} {dt:4s} {row['impl']:22s} {ms}", flush=True)
        # Measured before and after the cells (shared machines drift); the floor uses the best.
        after = stream_bandwidth(device, nbytes, **timing_kw)
        stream[device] = {k: max(before[k], after[k]) for k in ("copy_gbps", "axpy_gbps", "best_gbps")}
        stream[device].update(nbytes=before["nbytes"], before=before, after=after)
    add_derived(rows, stream)
    targets = evaluate_targets(rows, args.dtypes, devices)
    print_tables(rows, stream, targets)

    payload = {
        "benchmark": "optim",
        "env": env_info({"threads": torch.get_num_threads(), "timing": timing_kw}),
        "max_grad_norm": MAX_NORM,
        "sizes": {k: {"numel": v[0], "tensors": v[1], "desc": v[2]} for k, v in SIZES.items()},
        "floor_bytes_per_param": FLOOR_BYTES,
        "floor_text": FLOOR_TEXT,
        "baseline": BASELINE,
        "stream": stream,
        "results": rows,
        "targets": targets,
    }
    if args.out:
        write_json(args.out, payload)
        print(f"\nwrote {args.out}")
    return payload


if __name__ == "__main__":
    main()
