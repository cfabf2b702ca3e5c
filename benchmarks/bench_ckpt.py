"""Benchmark: CheckpointManager save / restore of a 25M-parameter fp32 model + Adam state (300 MB)
against plain torch.save / torch.load of the same dict, in the same run.

Rows, timed interleaved round-robin (one repeat of every row, then the next repeat) so that load
drift on a shared machine hits them alike; ``os.sync()`` (not timed) before every call, so no row
pays for another's write-back; each save goes to a new path, the old one deleted:

- ``torch.save``            plain ``torch.save({"model": sd, "optimizer": sd}, path)`` (no fsync)
- ``torch.save + fsync``    the same, then ``os.fsync`` (what durability costs by itself)
- ``manager sync``          ``CheckpointManager.save`` (temporary dir, SHA-256, fsyncs, rename,
                            retention keep_latest=1)
- ``manager async blocked`` the time ``save`` blocks with ``async_save=True`` (host copy only);
                            the background write is waited for before the next row and reported
                            as ``async total``
- ``torch.load``            ``torch.load(path, weights_only=True)``
- ``manager restore``       ``CheckpointManager.restore("latest")`` (SHA-256 verify + weights-only load)

Targets (issue 9): manager sync <= 1.3x torch.save; async blocked <= 0.25x manager sync.

    python benchmarks/bench_ckpt.py                 # 25M params, 5 repeats, ~1-2 min
    python benchmarks/bench_ckpt.py --quick         # 2M params, 3 repeats
    python benchmarks/bench_ckpt.py --dir /mnt/disk --out bench_results/ckpt.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import env_info, format_table, write_json  # noqa: E402

from playbook.ckpt import CheckpointManager  # noqa: E402


def make_state(n_params: int, width: int = 2048) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A stack of Linear(width, width) layers with ``n_params`` parameters and Adam state."""
    torch.manual_seed(0)
    layers, total = [], 0
    while total < n_params:
        out = min(width, max(1, (n_params - total) // (width + 1)))
        layers.append(torch.nn.Linear(width, out))
        total += width * out + out
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    return model, opt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=float, default=25e6)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="2M params, 3 repeats")
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    ap.add_argument("--out", default="bench_results/ckpt.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.params, args.repeats = 2e6, 3
    n_params = int(args.params)
    model, opt = make_state(n_params)
    n = sum(p.numel() for p in model.parameters())
    state = {"model": model.state_dict(), "optimizer": opt.state_dict()}
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    nbytes += sum(v.numel() * v.element_size() for s in opt.state_dict()["state"].values()
                  for v in s.values() if isinstance(v, torch.Tensor))
    root = Path(tempfile.mkdtemp(prefix="bench_ckpt_", dir=args.dir))
    print(f"{n / 1e6:.1f}M params, state {nbytes / 1e6:.0f} MB, writing under {root}", flush=True)

    sync_mgr = CheckpointManager(root / "sync", keep_latest=1)
    async_mgr = CheckpointManager(root / "async", keep_latest=1, async_save=True)
    counter = {"i": 0}

    def plain_save(fsync: bool) -> Callable[[], None]:
        def run() -> None:
            counter["i"] += 1
            path = root / f"plain_{counter['i']}.pt"
            if fsync:
                with open(path, "wb") as f:
                    torch.save(state, f)
                    f.flush()
                    os.fsync(f.fileno())
            else:
                torch.save(state, path)
            for old in root.glob("plain_*.pt"):
                if old != path:
                    old.unlink()
        return run

    def mgr_save() -> None:
        counter["i"] += 1
        sync_mgr.save(counter["i"], {"model": model, "optimizer": opt})

    async_total: list[float] = []

    def mgr_async() -> float:
        counter["i"] += 1
        t0 = time.perf_counter()
        async_mgr.save(counter["i"], {"model": model, "optimizer": opt})
        blocked = time.perf_counter() - t0
        async_mgr.wait()
        async_total.append(time.perf_counter() - t0)
        return blocked

    def plain_load() -> None:
        (path,) = root.glob("plain_*.pt")
        torch.load(path, weights_only=True)

    def mgr_load() -> None:
        sync_mgr.restore("latest")

    rows: dict[str, Callable[[], Any]] = {
        "torch.save": plain_save(False),
        "torch.save + fsync": plain_save(True),
        "manager sync": mgr_save,
        "manager async blocked": mgr_async,
        "torch.load": plain_load,
        "manager restore": mgr_load,
    }
    samples: dict[str, list[float]] = {k: [] for k in rows}
    for name, fn in rows.items():  # warm-up: one call each (page cache, allocator, thread pools)
        fn()
    async_total.clear()
    for rep in range(args.repeats):
        for name, fn in rows.items():
            os.sync()  # every row starts with no dirty pages to write back (not timed)
            t0 = time.perf_counter()
            r = fn()
            samples[name].append(r if isinstance(r, float) else time.perf_counter() - t0)
        print(f"  repeat {rep + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in samples.items()),
              flush=True)
    async_mgr.close()
    shutil.rmtree(root, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in samples.items()}
    med["async total"] = statistics.median(async_total)
    base = {"torch.save": "torch.save", "torch.save + fsync": "torch.save", "manager sync": "torch.save",
            "manager async blocked": "manager sync", "async total": "manager sync",
            "torch.load": "torch.load", "manager restore": "torch.load"}
    table = [{"row": k, "median_s": v, "GB/s": nbytes / v / 1e9, "vs": base[k], "ratio": v / med[base[k]]}
             for k, v in med.items()]
    print()
    print(format_table(table, [("row", "row"), ("median_s", "median s", lambda x: f"{x:.3f}"),
                               ("GB/s", "GB/s", lambda x: f"{x:.2f}"), ("vs", "vs"),
                               ("ratio", "ratio", lambda x: f"{x:.2f}x")],
                       title=f"Checkpoint of {n / 1e6:.1f}M params + Adam ({nbytes / 1e6:.0f} MB), "
                             f"median of {args.repeats}, interleaved"))
    targets = {
        "sync_vs_torch_save": {"value": med["manager sync"] / med["torch.save"], "target": 1.3},
        "async_blocked_vs_sync": {"value": med["manager async blocked"] / med["manager sync"], "target": 0.25},
    }
    print()
    for name, t in targets.items():
        t["pass"] = t["value"] <= t["target"]
        print(f"{name}: {t['value']:.2f}x (target <= {t['target']}x) {'PASS' if t['pass'] else 'FAIL'}")
    path = write_json(args.out, {
        "env": env_info(), "params": n, "bytes": nbytes, "repeats": args.repeats,
        "samples_s": samples, "async_total_s": async_total, "median_s": med, "table": table, "targets": targets,
    })
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
