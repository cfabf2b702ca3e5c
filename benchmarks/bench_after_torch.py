"""Does a playbook CPU kernel slow down when it runs right after torch work, as in a training loop?

In a training loop a ghost batch norm runs right after a convolution and the optimizer step right
after the backward: torch's OpenMP workers are then still spinning (GOMP_SPINCOUNT) after torch's
last parallel region. A kernel on a thread pool of its own competes with them for the cores;
playbook's kernels run on torch's OpenMP pool (NOTE: [CPU threads on OpenMP] in
csrc/cpu/parallel.cpp), so they should not. This measures it, against torch's own ops as the
reference (they share that pool by construction).

What is timed: one call of each row, (a) right after a burst of torch work (20 elementwise ops
on 16 MB with all threads) and (b) after a 50 ms pause, alternating, medians over ``--rounds``.
"after torch / after pause" is (a) / (b): 1.00 means no penalty.

Rows:
    playbook Adam + clip      playbook.optim.Adam(max_grad_norm=1.0) step, 8M params in 8 tensors
    torch fused Adam          torch.optim.Adam(fused=True) step, same params (reference)
    playbook ghost BN fwd     GhostBatchNorm2d(64, virtual_batch_size=32), N=128 16x16 channels_last
    torch nn.BatchNorm2d fwd  same input (reference)

Usage:
    python benchmarks/bench_after_torch.py              # JSON to bench_results/after_torch.json
    python benchmarks/bench_after_torch.py --rounds 10  # quicker
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import env_info, fmt_float, format_table, write_json  # noqa: E402


def _rows() -> dict[str, Callable[[], None]]:
    import playbook

    gen = torch.Generator().manual_seed(0)
    rows: dict[str, Callable[[], None]] = {}
    for name, make in (
        ("playbook Adam + clip", lambda ps: playbook.optim.Adam(ps, lr=1e-3, max_grad_norm=1.0)),
        ("torch fused Adam", lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True)),
    ):
        params = [torch.randn(1 << 20, generator=gen).requires_grad_() for _ in range(8)]
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        rows[name] = make(params).step
    x = torch.randn(128, 64, 16, 16, generator=gen).contiguous(memory_format=torch.channels_last)
    ghost = playbook.nn.GhostBatchNorm2d(64, virtual_batch_size=32)
    bn = torch.nn.BatchNorm2d(64)

    def forward(m: torch.nn.Module) -> Callable[[], None]:
        def fn() -> None:
            with torch.no_grad():
                m(x)

        return fn

    rows["playbook ghost BN fwd"] = forward(ghost)
    rows["torch nn.BatchNorm2d fwd"] = forward(bn)
    return rows


def measure(rounds: int, pause_s: float) -> list[dict]:
    a = torch.randn(4 << 20)
    b = torch.empty_like(a)

    def torch_work() -> None:
        for _ in range(20):
            torch.mul(a, 1.0001, out=b)

    out = []
    for name, fn in _rows().items():
        for _ in range(5):
            fn()
        after, paused = [], []
        for _ in range(rounds):
            torch_work()
            t = time.perf_counter()
            fn()
            after.append(time.perf_counter() - t)
            time.sleep(pause_s)
            t = time.perf_counter()
            fn()
            paused.append(time.perf_counter() - t)
        ma, mp = statistics.median(after), statistics.median(paused)
        out.append(
            {
                "row": name,
                "after_torch_ms": ma * 1e3,
                "after_pause_ms": mp * 1e3,
                "ratio": ma / mp,
                "samples_after_ms": [v * 1e3 for v in after],
                "samples_pause_ms": [v * 1e3 for v in paused],
            }
        )
        print(f"  {name}: {ma * 1e3:.3f} ms after torch, {mp * 1e3:.3f} ms after a pause", flush=True)
    return out


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=30, help="alternating measurements per row (default 30)")
    ap.add_argument("--pause-s", type=float, default=0.05, help="pause before the (b) call, seconds")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (default: all cores)")
    ap.add_argument("--out", default="bench_results/after_torch.json", help="JSON output path ('' to skip)")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error(f"--rounds must be >= 1, got {args.rounds}")
    torch.set_num_threads(args.threads)
    rows = measure(args.rounds, args.pause_s)
    cols = [
        ("row", "row"),
        ("after_torch_ms", "ms after torch", lambda v: fmt_float(v, ".3f")),
        ("after_pause_ms", "ms after pause", lambda v: fmt_float(v, ".3f")),
        ("ratio", "after torch / after pause", lambda v: fmt_float(v, ".2f")),
    ]
    print()
    print(format_table(rows, cols))
    if args.out:
        env = env_info({"rounds": args.rounds, "pause_s": args.pause_s, "GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT")})
        print(f"\nJSON: {write_json(args.out, {'env': env, 'rows': rows})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
