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
        (list of CMake arch entries such as ``"90-real"``), ``simd`` (the CPU kernel level chosen
        at run time: ``"avx512"``, ``"avx2"`` or ``"portable"``) and ``simd_levels`` (the levels
        compiled into this build).

    Example:
        >>> import playbook
        >>> playbook.build_info()["simd"] in ("avx512", "avx2", "portable")
        True
    """
    from playbook import _C

    archs = _C.cuda_archs()
    return {
        "version": _C.version(),
        "cuda": bool(_C.cuda_compiled()),
        "cuda_archs": [a for a in archs.split(";") if a],
        "simd": _C.simd_level(),
        "simd_levels": list(_C.simd_levels()),
    }


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        module = importlib.import_module(f"playbook.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'playbook' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_SUBMODULES))
