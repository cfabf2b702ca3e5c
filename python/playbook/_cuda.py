"""Can this build's CUDA kernels run here? The run-time half of NOTE: [CUDA toolkit choice].

NOTE: [CUDA kernel support]
Whether the kernels of a build run on a device is a pure function of four facts, decided by
:func:`kernel_support`:

- the toolkit the build was compiled with (``build_info()["cuda_toolkit"]``, e.g. ``"13.0.88"``);
  cudart is linked statically, so nothing else on the machine changes it;
- the CUDA version the driver supports (``cudaDriverGetVersion``: ``1000 * major + 10 * minor``,
  0 when no driver is installed);
- the build's CMake arch list (``"75-real"``: SASS for sm_75; ``"90-virtual"``: PTX for
  compute_90; ``"90"``: both);
- the device's compute capability.

NVIDIA's rules (CUDA Compatibility guide, "Minor Version Compatibility"; CUDA C Programming Guide,
"Binary Compatibility" / "PTX Compatibility"):

1. A driver runs code built by toolkits of its own CUDA major or older. An older driver of the
   same major runs newer-minor code by minor-version compatibility (CUDA 12.x: driver >= 525,
   CUDA 13.x: driver >= 580), but a driver of an older major never does.
2. SASS for sm_XY runs on devices of compute capability X.Z with Z >= Y (same major); arch-specific
   SASS (``"90a"``) only on X.Y itself.
3. PTX for compute_XY is JIT-compiled by the driver for any device of capability >= X.Y, but only
   when the driver is at least as new as the toolkit that emitted it: minor-version compatibility
   does not cover PTX JIT (the driver rejects newer PTX with cudaErrorUnsupportedPtxVersion).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Sequence

# Minimum Linux driver per CUDA major (NVIDIA CUDA Compatibility guide, Table 1).
MIN_DRIVER = {11: "450.80.02", 12: "525", 13: "580"}


@dataclass(frozen=True)
class KernelSupport:
    """Verdict of :func:`kernel_support` for one device.

    ``ok`` is True (the kernels run), False (they cannot: ``reason`` says why and how to fix it)
    or None (the arch list has entries such as ``"native"`` that cannot be checked here).
    ``how`` names the code the device would run (``"sm_80 SASS"``, ``"compute_90 PTX (JIT)"``).
    """

    ok: bool | None
    how: str
    reason: str


def parse_version(text: str) -> tuple[int, int]:
    """``"13.0.88"`` -> ``(13, 0)``; ValueError for anything else."""
    m = re.match(r"^(\d+)\.(\d+)", text.strip())
    if m is None:
        raise ValueError(f"Invalid CUDA version: {text!r}, expected 'major.minor[.patch]'")
    return int(m.group(1)), int(m.group(2))


def driver_cuda_version(code: int) -> tuple[int, int]:
    """``cudaDriverGetVersion``'s int (``12040``) -> ``(12, 4)``."""
    return code // 1000, (code % 1000) // 10


@dataclass(frozen=True)
class _Arch:
    major: int
    minor: int
    sass: bool
    ptx: bool
    specific: bool  # "a" suffix: SASS for exactly this capability


def parse_arch(entry: str) -> _Arch | None:
    """A CMake CUDA_ARCHITECTURES entry (``"80-real"``, ``"90-virtual"``, ``"90"``, ``"90a-real"``).

    Returns None for entries that name no single arch (``"native"``, ``"all"``, ``"all-major"``).
    """
    m = re.match(r"^(\d+)(\d)([af]?)(?:-(real|virtual))?$", entry.strip())
    if m is None:
        return None
    kind = m.group(4)
    return _Arch(
        major=int(m.group(1)), minor=int(m.group(2)),
        sass=kind != "virtual", ptx=kind != "real", specific=m.group(3) == "a",
    )


def _fix_rebuild(major: int) -> str:
    return (
        f"rebuild playbook with a CUDA {major}.x toolkit: "
        f"PLAYBOOK_CUDA_HOME=/path/to/cuda-{major}.x python -m pip install --force-reinstall --no-deps "
        "<playbook source> (README: Building and layout)"
    )


def kernel_support(
    archs: Sequence[str], toolkit: str, driver_version: int, capability: tuple[int, int]
) -> KernelSupport:
    """Decide whether kernels built with ``toolkit`` for ``archs`` run on one device.

    Pure function of its arguments (NOTE: [CUDA kernel support]).

    Args:
        archs: The build's CMake arch list, e.g. ``["75-real", "80-real", "90-real", "90-virtual"]``.
        toolkit: The toolkit version the kernels were built with, ``""`` if CUDA was not compiled.
        driver_version: ``cudaDriverGetVersion``'s value, e.g. ``12040``; 0 when there is no driver.
        capability: The device's compute capability, e.g. ``(8, 6)``.

    Returns:
        A :class:`KernelSupport`.

    Example:
        >>> kernel_support(["80-real", "90-virtual"], "13.0.88", 12040, (8, 0)).ok
        False
        >>> kernel_support(["80-real", "90-virtual"], "12.9.86", 12040, (8, 6)).how
        'sm_80 SASS'
    """
    cap_text = f"{capability[0]}.{capability[1]}"
    if not toolkit:
        return KernelSupport(False, "", "playbook was built without CUDA kernels (no nvcc at build time); "
                             "reinstall it with a CUDA toolkit on PATH or in PLAYBOOK_CUDA_HOME")
    tk = parse_version(toolkit)
    if driver_version <= 0:
        return KernelSupport(False, "", "no NVIDIA driver was found (cudaDriverGetVersion returned 0); "
                             f"the kernels, built with CUDA {tk[0]}.{tk[1]}, need a driver >= "
                             f"{MIN_DRIVER.get(tk[0], '?')}")
    drv = driver_cuda_version(driver_version)
    drv_text = f"{drv[0]}.{drv[1]}"
    if drv[0] < tk[0]:
        return KernelSupport(False, "", (
            f"the NVIDIA driver supports CUDA {drv_text}, but playbook's kernels were built with CUDA "
            f"{tk[0]}.{tk[1]}, which needs a driver >= {MIN_DRIVER.get(tk[0], '?')} (a CUDA {tk[0]}.x "
            f"driver). Fix: upgrade the driver, or {_fix_rebuild(drv[0])}"
        ))
    parsed = [parse_arch(a) for a in archs]
    known = [a for a in parsed if a is not None]
    for a in known:
        if a.sass and a.major == capability[0] and (a.minor == capability[1] or (not a.specific and a.minor <= capability[1])):
            return KernelSupport(True, f"sm_{a.major}{a.minor}{'a' if a.specific else ''} SASS", "")
    ptx = [a for a in known if a.ptx and (a.major, a.minor) <= tuple(capability)]
    if ptx:
        best = max(ptx, key=lambda a: (a.major, a.minor))
        name = f"compute_{best.major}{best.minor}"
        if drv < tk:
            return KernelSupport(False, "", (
                f"compute capability {cap_text} has no SASS in this build (archs {list(archs)}); its {name} "
                f"PTX needs JIT compilation by a driver supporting CUDA >= {tk[0]}.{tk[1]} (the toolkit "
                f"that emitted it), but the driver supports CUDA {drv_text}: minor-version compatibility "
                "does not cover PTX. Fix: upgrade the driver, or rebuild with "
                f"CMAKE_CUDA_ARCHITECTURES including '{capability[0]}{capability[1]}-real'"
            ))
        return KernelSupport(True, f"{name} PTX (JIT)", "")
    if len(known) < len(parsed):
        return KernelSupport(None, "", f"the arch list {list(archs)} has entries that cannot be checked here")
    return KernelSupport(False, "", (
        f"compute capability {cap_text} is not in this build (archs {list(archs)}) and no PTX in it "
        f"targets {cap_text} or lower. Fix: rebuild with CMAKE_CUDA_ARCHITECTURES including "
        f"'{capability[0]}{capability[1]}-real' (if CUDA {tk[0]}.{tk[1]} still supports it)"
    ))


def _driver_release() -> str | None:
    """The driver's release number (``"550.54.15"``) from NVML, or None without a driver.

    libnvidia-ml ships with the driver; it is loaded with ctypes (no dependency) and only read.
    """
    import ctypes

    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return None
    try:
        if nvml.nvmlInit_v2() != 0:
            return None
        try:
            buf = ctypes.create_string_buffer(96)
            if nvml.nvmlSystemGetDriverVersion(buf, ctypes.c_uint(len(buf))) != 0:
                return None
            return buf.value.decode() or None
        finally:
            nvml.nvmlShutdown()
    except AttributeError:
        return None


def _torch_devices() -> list[tuple[int, int]] | None:
    """Compute capabilities as torch sees them, or None when torch has no usable CUDA."""
    import torch

    try:
        if not torch.cuda.is_available():
            return None
        return [tuple(torch.cuda.get_device_capability(i)) for i in range(torch.cuda.device_count())]
    except (RuntimeError, AssertionError):
        return None


def cuda_status() -> dict[str, Any]:
    """See :func:`playbook.cuda_status`."""
    import torch  # noqa: F401 - torch's libgomp first: _C shares it (NOTE: [CPU threads on OpenMP])

    from playbook import _C

    toolkit = _C.cuda_toolkit_version() if _C.cuda_compiled() else ""
    archs = [a for a in _C.cuda_archs().split(";") if a]
    rs = _C.cuda_runtime_status()
    driver = int(rs["driver_version"])
    caps = [tuple(c) for c in rs["capabilities"]]
    source = "playbook's runtime"
    if not caps:
        # Our runtime may refuse the driver (that is the point of this report) while torch's
        # runtime, of an older CUDA major, still sees the devices.
        torch_caps = _torch_devices()
        if torch_caps:
            caps, source = torch_caps, "torch"
    devices = []
    for i, cap in enumerate(caps):
        verdict = kernel_support(archs, toolkit, driver, cap)
        devices.append({
            "index": i, "capability": f"{cap[0]}.{cap[1]}",
            "kernels_run": verdict.ok, "how": verdict.how, "reason": verdict.reason,
        })
    if not toolkit:
        summary = "built without CUDA kernels: CUDA tensors cannot be stepped"
    elif driver == 0:
        summary = "no NVIDIA driver on this machine: the CUDA kernels cannot run here"
    elif not devices:
        summary = f"no CUDA device visible ({rs['error'] or 'device count 0'})"
    else:
        good = sum(1 for d in devices if d["kernels_run"])
        summary = f"the CUDA kernels run on {good} of {len(devices)} visible device(s)"
    import torch

    torch_cuda = torch.version.cuda
    note = ""
    if toolkit and torch_cuda and parse_version(torch_cuda)[0] != parse_version(toolkit)[0]:
        t_major, k_major = parse_version(torch_cuda)[0], parse_version(toolkit)[0]
        note = (
            f"torch is a CUDA {torch_cuda} build (drivers >= {MIN_DRIVER.get(t_major, '?')}) but these kernels "
            f"were built with CUDA {toolkit} (drivers >= {MIN_DRIVER.get(k_major, '?')}); to run wherever "
            f"torch runs, {_fix_rebuild(t_major)}"
        )
    drv = driver_cuda_version(driver)
    rt = driver_cuda_version(int(rs["runtime_version"]))
    return {
        "compiled": bool(toolkit),
        "toolkit": toolkit or None,
        "archs": archs,
        "runtime": f"{rt[0]}.{rt[1]}" if rs["runtime_version"] else None,
        "driver": f"{drv[0]}.{drv[1]}" if driver else None,
        "driver_release": _driver_release(),
        "min_driver": MIN_DRIVER.get(parse_version(toolkit)[0]) if toolkit else None,
        "device_query_error": rs["error"] or None,
        "devices_from": source if devices else None,
        "devices": devices,
        "torch_cuda": torch_cuda,
        "note": note,
        "summary": summary,
    }


@functools.lru_cache(maxsize=None)
def _device_verdict(index: int) -> tuple[bool | None, str, str]:
    status = cuda_status()
    for d in status["devices"]:
        if d["index"] == index:
            return d["kernels_run"], d["capability"], d["reason"]
    reason = status["device_query_error"] or status["summary"]
    return False, "?", f"cuda:{index} is not visible to playbook's CUDA runtime ({reason}); {status['summary']}"


def require_kernels(index: int) -> None:
    """Raise RuntimeError unless this build's kernels can run on CUDA device ``index``.

    Called before a step touches anything on that device; the verdict is computed once per
    device and process (driver, devices and build do not change while a process runs).
    """
    ok, cap, reason = _device_verdict(index)
    if ok is False:
        raise RuntimeError(
            f"playbook's CUDA kernels cannot run on cuda:{index} (compute capability {cap}): {reason}. "
            "playbook.cuda_status() has the details."
        )
