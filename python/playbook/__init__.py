"""playbook: the Deep Learning Tuning Playbook (Godbole et al., Google Research 2023) as software.

Subpackages are imported lazily so that ``playbook.tune`` works without importing torch:

- ``playbook.optim``: fused Adam/AdamW, NAdam and SGD with in-kernel global-norm clipping.
- ``playbook.stats``: gradient-norm statistics, clip-threshold advice and plots.
- ``playbook.tune``: search spaces, scrambled Halton, studies, analysis and the CLI.
- ``playbook.ckpt``: atomic, verified checkpoints keeping the N best + latest; ``rng_state()``.
- ``playbook.schedules``: constant / linear / cosine / rsqrt decay with warmup, and a torch LR scheduler.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = ("optim", "stats", "tune", "amp", "nn", "ckpt", "schedules")


def build_info() -> dict[str, Any]:
    """Describe the compiled extension.

    Returns:
        A dict with ``version``, ``cuda`` (bool: CUDA kernels compiled in), ``cuda_archs``
        (list of CMake arch entries such as ``"90-real"``), ``cuda_toolkit`` (version of the CUDA
        toolkit the kernels were built with, e.g. ``"13.0.88"``, or None), ``simd`` (the CPU kernel level chosen
        at run time: ``"avx512"``, ``"avx2"`` or ``"portable"``) and ``simd_levels`` (the levels
        compiled into this build).

    Example:
        >>> import playbook
        >>> playbook.build_info()["simd"] in ("avx512", "avx2", "portable")
        True
    """
    import torch  # noqa: F401 - torch's libgomp first: _C shares it (NOTE: [CPU threads on OpenMP])

    from playbook import _C

    archs = _C.cuda_archs()
    return {
        "version": _C.version(),
        "cuda": bool(_C.cuda_compiled()),
        "cuda_archs": [a for a in archs.split(";") if a],
        "cuda_toolkit": _C.cuda_toolkit_version() or None,
        "simd": _C.simd_level(),
        "simd_levels": list(_C.simd_levels()),
    }


def cuda_status() -> dict[str, Any]:
    """Whether this build's CUDA kernels can run on this machine, per visible device, and why not.

    Works on any machine, with or without a GPU or an NVIDIA driver; creates no CUDA context.
    The decision is NVIDIA's compatibility rules applied to the toolkit the kernels were built
    with, the driver's CUDA version, the build's arch list and each device's compute capability
    (NOTE: [CUDA kernel support] in ``playbook/_cuda.py``). A CUDA step on a device marked
    ``kernels_run=False`` raises a RuntimeError with the same reason before it modifies anything.

    Returns:
        A dict with ``compiled``, ``toolkit`` (e.g. ``"13.0.88"``), ``archs``, ``runtime`` (the
        linked cudart's CUDA version), ``driver`` (the CUDA version the driver supports, None
        without a driver), ``driver_release`` (e.g. ``"550.54.15"``, from NVML), ``min_driver`` (the oldest driver branch the toolkit runs on),
        ``device_query_error``, ``devices_from`` (``"playbook's runtime"`` or ``"torch"``),
        ``devices`` (per device: ``index``, ``capability``, ``kernels_run`` (True/False/None),
        ``how`` and ``reason``), ``torch_cuda`` (``torch.version.cuda``), ``note`` (non-empty
        when torch and the kernels were built for different CUDA majors, i.e. need different
        drivers) and a one-line ``summary``.

    Example:
        >>> import playbook
        >>> playbook.cuda_status()["summary"]  # on a machine without an NVIDIA driver
        'no NVIDIA driver on this machine: the CUDA kernels cannot run here'
    """
    from playbook._cuda import cuda_status as _status

    return _status()


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        module = importlib.import_module(f"playbook.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'playbook' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_SUBMODULES))
