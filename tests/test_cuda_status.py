"""Which devices and drivers a build's CUDA kernels serve (NOTE: [CUDA kernel support]).

The decision is a pure function, tested here with real inputs: the arch list this project builds,
the toolkits it can be built with, drivers of the CUDA 12 and 13 branches (cudaDriverGetVersion
values) and the compute capabilities of common GPUs (T4 7.5, A100 8.0, A10/RTX 3090 8.6, L4 8.9,
H100 9.0, B200 10.0, RTX 5090 12.0, V100 7.0). The expected verdicts follow NVIDIA's rules as
stated in the CUDA Compatibility guide, not the code.
"""

from __future__ import annotations

import pytest
import torch

import playbook
from playbook import _C
from playbook._cuda import KernelSupport, driver_cuda_version, kernel_support, parse_arch, parse_version

ARCHS = ["75-real", "80-real", "90-real", "90-virtual"]  # the default build (PlaybookCUDA.cmake)

CASES = [
    # (toolkit, driver, capability, ok, how or a phrase of the reason)
    # CUDA 13 build: needs a CUDA 13 driver (>= 580), whatever the GPU.
    ("13.0.88", 13000, (7, 5), True, "sm_75 SASS"),
    ("13.0.88", 13000, (8, 6), True, "sm_80 SASS"),       # 8.0 SASS runs on 8.6
    ("13.0.88", 13000, (8, 9), True, "sm_80 SASS"),
    ("13.0.88", 13000, (9, 0), True, "sm_90 SASS"),
    ("13.0.88", 13000, (10, 0), True, "compute_90 PTX (JIT)"),  # Blackwell: JIT from PTX
    ("13.0.88", 13020, (12, 0), True, "compute_90 PTX (JIT)"),
    ("13.0.88", 12080, (8, 0), False, "needs a driver >= 580"),  # the failure
    ("13.0.88", 12020, (7, 5), False, "rebuild playbook with a CUDA 12.x toolkit"),
    ("13.0.88", 13000, (7, 0), False, "compute capability 7.0 is not in this build"),
    # CUDA 12.9 build: every driver >= 525 for SASS (minor-version compatibility) ...
    ("12.9.86", 12000, (8, 0), True, "sm_80 SASS"),
    ("12.9.86", 12040, (7, 5), True, "sm_75 SASS"),
    ("12.9.86", 13000, (9, 0), True, "sm_90 SASS"),       # newer major driver: backward compatible
    # ... but PTX JIT only with a driver at least as new as the toolkit.
    ("12.9.86", 12040, (10, 0), False, "minor-version compatibility does not cover PTX"),
    ("12.9.86", 12090, (10, 0), True, "compute_90 PTX (JIT)"),
    ("12.4.131", 12080, (12, 0), True, "compute_90 PTX (JIT)"),
    # No driver, no toolkit.
    ("13.0.88", 0, (8, 0), False, "no NVIDIA driver"),
    ("", 13000, (8, 0), False, "built without CUDA kernels"),
]


@pytest.mark.parametrize("toolkit,driver,cap,ok,text", CASES, ids=[f"{c[0] or 'none'}-drv{c[1]}-sm{c[2][0]}{c[2][1]}" for c in CASES])
def test_kernel_support(toolkit, driver, cap, ok, text):
    v = kernel_support(ARCHS, toolkit, driver, cap)
    assert isinstance(v, KernelSupport)
    assert v.ok is ok
    if ok:
        assert v.how == text and v.reason == ""
    else:
        assert text in v.reason and v.how == ""


def test_arch_specific_sass_runs_only_on_its_own_capability():
    archs = ["90a-real"]
    assert kernel_support(archs, "12.9.86", 12090, (9, 0)).how == "sm_90a SASS"
    assert kernel_support(archs, "12.9.86", 12090, (10, 0)).ok is False
    assert kernel_support(["86-real"], "12.9.86", 12090, (8, 0)).ok is False  # SASS never runs on a lower minor


def test_plain_entry_is_sass_and_ptx():
    assert parse_arch("90") == parse_arch("90").__class__(9, 0, True, True, False)
    assert kernel_support(["90"], "13.0.88", 13000, (9, 0)).how == "sm_90 SASS"
    assert kernel_support(["90"], "13.0.88", 13000, (12, 0)).how == "compute_90 PTX (JIT)"
    assert parse_arch("100-real").major == 10 and parse_arch("120-virtual").minor == 0


def test_unresolvable_arch_list_is_undecided():
    v = kernel_support(["native"], "13.0.88", 13000, (8, 0))
    assert v.ok is None and "cannot be checked" in v.reason
    assert parse_arch("all-major") is None


def test_version_parsing():
    assert parse_version("13.0.88") == (13, 0)
    assert parse_version("12.9") == (12, 9)
    assert driver_cuda_version(12040) == (12, 4)
    assert driver_cuda_version(13000) == (13, 0)
    with pytest.raises(ValueError, match="Invalid CUDA version: 'abc'"):
        parse_version("abc")


def test_build_info_reports_toolkit():
    info = playbook.build_info()
    if info["cuda"]:
        major, minor = parse_version(info["cuda_toolkit"])
        assert major >= 11
        assert "75-real" in info["cuda_archs"] or info["cuda_archs"] != ARCHS  # sm_75 in the default list
    else:
        assert info["cuda_toolkit"] is None


def test_cuda_status_on_this_machine():
    """Works here (no GPU, no driver in this project's machines) and tells the truth about it."""
    s = playbook.cuda_status()
    assert set(s) >= {"compiled", "toolkit", "archs", "runtime", "driver", "driver_release", "devices", "summary"}
    assert s["compiled"] == playbook.build_info()["cuda"]
    raw = _C.cuda_runtime_status()
    if raw["driver_version"] == 0:
        assert s["driver"] is None and s["devices"] == [] or not s["compiled"]
        assert s["driver_release"] is None  # no libnvidia-ml without a driver
        if s["compiled"]:
            assert s["summary"] == "no NVIDIA driver on this machine: the CUDA kernels cannot run here"
            assert s["runtime"] == "{}.{}".format(*parse_version(s["toolkit"]))  # static cudart = toolkit
    for d in s["devices"]:
        assert d["kernels_run"] in (True, False, None)
        assert (d["reason"] == "") == (d["kernels_run"] is True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a usable device")
def test_cuda_step_refused_clearly_when_kernels_cannot_run():
    from playbook._cuda import _device_verdict, require_kernels

    _device_verdict.cache_clear()
    with pytest.raises(RuntimeError, match=r"playbook's CUDA kernels cannot run on cuda:0 .*cuda_status\(\)"):
        require_kernels(0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where the kernels cannot run")
def test_optimizer_on_unservable_device_raises_before_touching_state():
    """The step refuses a device the build cannot serve before it creates or changes anything.

    torch cannot make CUDA tensors here, so a CUDA "param" is a meta tensor wearing a CUDA device:
    the refusal happens in the group build, before any pointer is read.
    """
    from playbook._cuda import _device_verdict

    class FakeCudaParam(torch.Tensor):
        @property
        def device(self):
            return torch.device("cuda", 0)

    _device_verdict.cache_clear()
    p = torch.zeros(3, device="meta").as_subclass(FakeCudaParam)
    p.grad = None
    opt = playbook.optim.Adam([p], lr=0.1)
    with pytest.raises(RuntimeError, match="playbook's CUDA kernels cannot run on cuda:0"):
        opt._build_group(0, opt.param_groups[0])
    assert len(opt.state) == 0 and opt._gn is None


# (previous device, driver could be asked, thread had a context, target) -> (set, restore)
GUARD_CASES = [
    ((0, True, False, 1), (True, 2)),   # no context: set cuda:1, then unbind -- never cudaSetDevice(0)
    ((0, True, False, 0), (False, 2)),  # no context, target 0: unbind what the launch bound
    ((1, True, True, 1), (False, 0)),   # already current: nothing to do
    ((0, True, True, 1), (True, 1)),    # a context on 0 exists: switch and switch back
    ((0, False, False, 1), (True, 1)),  # driver not queryable: the plain guard
    ((2, False, True, 2), (False, 0)),
]


@pytest.mark.parametrize("args,expected", GUARD_CASES, ids=[str(a) for a, _ in GUARD_CASES])
def test_device_guard_never_creates_a_context_on_gpu0(args, expected):
    set_device, restore = _C._device_guard_plan(*args)
    assert (set_device, restore) == expected
    previous, known, had_context, target = args
    if known and not had_context:
        # The only device ever set is the target: device 0 is never made current on our behalf.
        assert restore != 1 and (not set_device or target != previous)
