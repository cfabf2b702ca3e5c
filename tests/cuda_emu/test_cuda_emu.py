"""The CUDA kernels, unchanged, in the host launch emulator (tests/cuda_emu/README.md).

Builds ``playbook_emu_test`` with CMake (every ``csrc/cuda/*.cu`` compiled by the host compiler
with ``emu.h`` force-included, the CPU path, and the ``family_*.cpp`` tests) and runs one family
per test. Each family compares the emulated CUDA path with the CPU kernels bit for bit where the
math is the same, and with a float64/long-double reference where it is not.

``PLAYBOOK_EMU_SANITIZE=address,undefined`` (``.ci/run``) or ``=thread`` builds and runs the
same binary under the sanitizers, in its own build directory.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SANITIZE = os.environ.get("PLAYBOOK_EMU_SANITIZE", "")
FAMILIES = sorted(p.stem[len("family_"):] for p in HERE.glob("family_*.cpp"))

pytestmark = pytest.mark.slow


def _cuda_headers() -> bool:
    for base in (os.environ.get("PLAYBOOK_CUDA_HOME"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if base and (Path(base) / "include" / "cuda_runtime.h").is_file():
            return True
    return False


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)


@pytest.fixture(scope="session")
def emu_binary() -> Path:
    missing = [] if shutil.which("cmake") else ["cmake"]
    if not _cuda_headers():
        missing.append("the CUDA toolkit headers (cuda_runtime.h; set CUDA_HOME)")
    if missing:
        msg = "the CUDA emulator tests need " + " and ".join(missing)
        if os.environ.get("PLAYBOOK_EMU_REQUIRED") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    build = ROOT / "build" / "cuda_emu" / (SANITIZE.replace(",", "-") or "plain")
    configure = _run(["cmake", "-S", HERE, "-B", build, f"-DPLAYBOOK_EMU_SANITIZE={SANITIZE}",
                      "-DCMAKE_BUILD_TYPE=Release"])
    assert configure.returncode == 0, configure.stdout + configure.stderr
    compile_ = _run(["cmake", "--build", build, "-j", "2"])
    assert compile_.returncode == 0, compile_.stdout[-6000:] + compile_.stderr[-6000:]
    return build / "playbook_emu_test"


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
    env.setdefault("TSAN_OPTIONS", "halt_on_error=1:second_deadlock_stack=1")
    return env


def test_every_family_is_registered(emu_binary):
    listed = _run([emu_binary, "--list"], env=_env())
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert sorted(listed.stdout.split()) == FAMILIES


@pytest.mark.parametrize("family", FAMILIES)
def test_family(emu_binary, family):
    res = _run([emu_binary, family], env=_env(), timeout=3600)
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"emulator family {family} failed (exit {res.returncode}):\n{out[-8000:]}"
    m = re.search(rf"family {family}: (\d+) cases, (\d+) checks, (\d+) failures, (\d+) launches", res.stdout)
    assert m is not None, out
    cases, checks, failures, launches = map(int, m.groups())
    # Never a vacuous pass: cases ran, checks were made, kernels were launched.
    assert cases > 0 and checks > 0 and launches > 0 and failures == 0, out


@pytest.mark.parametrize(
    "case, message",
    [("partial-mask", r"__shfl_down_sync in kernel .* with mask 0x0000ffff"),
     ("exited-lane", r"(only 31 of 32 lanes of warp 0 are alive|returned while .* lanes of its warp wait)")],
)
def test_emulator_aborts_on_warp_misuse(emu_binary, case, message):
    res = _run([emu_binary, "--expect-abort", case], env=_env(), timeout=600)
    assert res.returncode != 0, res.stdout + res.stderr
    assert re.search(message, res.stderr), res.stderr
