#!/usr/bin/env python3
"""Resource check of the CUDA kernels: registers, stack, spills and local memory per kernel.

Compiles every ``csrc/cuda/*.cu`` with ``nvcc --resource-usage`` for each real architecture of
the default list in ``cmake/PlaybookCUDA.cmake`` (the build's flags: ``--fmad=false``,
``--expt-relaxed-constexpr``), prints one row per kernel and exits 1 if any kernel spills or uses
a stack frame (local memory). No GPU needed. Usage: ``python .ci/cuda_resources.py [--markdown]``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def default_archs() -> list[str]:
    text = (ROOT / "cmake" / "PlaybookCUDA.cmake").read_text()
    m = re.search(r'set\(CMAKE_CUDA_ARCHITECTURES\s+"([^"]+)"\)', text)
    if m is None:
        sys.exit("cuda_resources: no default CMAKE_CUDA_ARCHITECTURES in cmake/PlaybookCUDA.cmake")
    archs = []
    for item in m.group(1).split(";"):
        num = item.split("-")[0]
        if not item.endswith("-virtual") and num not in archs:
            archs.append(num)
    return archs


def short_name(mangled: str) -> str:
    demangled = subprocess.run(["c++filt", mangled], capture_output=True, text=True).stdout.strip()
    name = demangled or mangled
    name = re.sub(r"\(anonymous namespace\)::|playbook::cuda::detail::|playbook::cuda::", "", name)
    name = re.sub(r"\(.*\)$", "", name)  # parameter list
    return name


def compile_one(nvcc: str, cu: Path, arch: str, tmp: str) -> tuple[Path, str, str, int]:
    out = Path(tmp) / f"{cu.stem}_{arch}.o"
    cmd = [nvcc, "-std=c++17", "-c", str(cu), "-o", str(out), f"-I{ROOT / 'csrc' / 'include'}",
           f"-I{ROOT / 'csrc'}", f"-gencode=arch=compute_{arch},code=sm_{arch}",
           "--expt-relaxed-constexpr", "--fmad=false", "--resource-usage"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    return cu, arch, res.stdout + res.stderr, res.returncode


def parse(text: str) -> list[dict]:
    rows, cur = [], None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '([^']+)' for 'sm_(\d+)'", line)
        if m:
            cur = {"kernel": m.group(1), "arch": m.group(2)}
            rows.append(cur)
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            cur["stack"], cur["spill_st"], cur["spill_ld"] = map(int, m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m:
            cur["regs"] = int(m.group(1))
        m = re.search(r"(\d+) bytes lmem", line)
        if m:
            cur["lmem"] = int(m.group(1))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table (README)")
    args = ap.parse_args()
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    if not Path(nvcc).exists():
        print("cuda_resources: nvcc not found", file=sys.stderr)
        return 1
    archs = default_archs()
    sources = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
    jobs = [(cu, a) for cu in sources for a in archs]
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as ex:
        results = list(ex.map(lambda j: compile_one(nvcc, j[0], j[1], tmp), jobs))
    rows, failed = [], False
    for cu, arch, text, rc in results:
        if rc != 0:
            print(f"cuda_resources: nvcc failed on {cu.name} for sm_{arch}:\n{text}", file=sys.stderr)
            failed = True
            continue
        for r in parse(text):
            r["file"] = cu.name
            rows.append(r)
    if not rows and not failed:
        print("cuda_resources: no kernel found", file=sys.stderr)
        return 1
    # Header templates (advance_steps_kernel) are compiled in every file: list each kernel once.
    seen, unique = set(), []
    for r in rows:
        if (r["kernel"], r["arch"]) not in seen:
            seen.add((r["kernel"], r["arch"]))
            unique.append(r)
    rows = sorted(unique, key=lambda r: (r["file"], short_name(r["kernel"]), r["arch"]))
    bad = [r for r in rows if r.get("stack", 0) or r.get("spill_st", 0) or r.get("spill_ld", 0)
           or r.get("lmem", 0)]
    if args.markdown:
        print("| file | kernel | sm | registers | stack | spills (st/ld) |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['file']} | `{short_name(r['kernel'])}` | {r['arch']} | {r.get('regs', '?')} | "
                  f"{r.get('stack', '?')} | {r.get('spill_st', '?')}/{r.get('spill_ld', '?')} |")
    else:
        print(f"{'file':10} {'sm':>3} {'regs':>4} {'stack':>5} {'spill st/ld':>11}  kernel")
        for r in rows:
            print(f"{r['file']:10} {r['arch']:>3} {r.get('regs', '?'):>4} {r.get('stack', '?'):>5} "
                  f"{str(r.get('spill_st', '?')) + '/' + str(r.get('spill_ld', '?')):>11}  "
                  f"{short_name(r['kernel'])}")
    for r in bad:
        print(f"cuda_resources: {r['file']} sm_{r['arch']} {short_name(r['kernel'])}: stack "
              f"{r.get('stack')} B, spill stores {r.get('spill_st')} B, spill loads "
              f"{r.get('spill_ld')} B, lmem {r.get('lmem', 0)} B: local memory or spills",
              file=sys.stderr)
    if failed or bad:
        return 1
    print(f"cuda_resources: {len(rows)} kernels x archs, no spills, no local memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
