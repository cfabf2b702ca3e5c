"""The global random number generators as one checkpointable object (``ckpt.rng_state()``)."""

from __future__ import annotations

import random
from typing import Any, Mapping

import numpy as np
import torch

__all__ = ["RNGState", "rng_state"]


class RNGState:
    """torch (CPU and every CUDA device), numpy's global and Python's ``random`` generators.

    ``state_dict()`` reads the current states, ``load_state_dict()`` sets them; everything is
    stored as tensors and plain lists, so ``torch.load(weights_only=True)`` reads it back.

    Example:
        >>> mgr.save(step, {"model": model, "rng": ckpt.rng_state()})          # doctest: +SKIP
        >>> mgr.restore_into(model=model, rng=ckpt.rng_state())                # doctest: +SKIP

    Under ``torch.distributed`` only rank 0 saves, so every rank restores rank 0's generators:
    re-seed the per-rank ones (data shuffling) after restoring (playbook "Considerations for
    multi-host pipelines").
    """

    def state_dict(self) -> dict[str, Any]:
        np_state = np.random.get_state(legacy=False)
        py_version, py_state, py_gauss = random.getstate()
        out: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": {
                "bit_generator": np_state["bit_generator"],
                "key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
                "pos": int(np_state["state"]["pos"]),
                "has_gauss": int(np_state["has_gauss"]),
                "gauss": float(np_state["gauss"]),
            },
            "python": {"version": int(py_version), "state": list(py_state), "gauss_next": py_gauss},
        }
        if torch.cuda.is_available():
            out["cuda"] = [torch.cuda.get_rng_state(i) for i in range(torch.cuda.device_count())]
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        for key in ("torch", "numpy", "python"):
            if key not in state_dict:
                raise KeyError(f"RNG state has no {key!r} entry; keys: {sorted(state_dict)}.")
        n = state_dict["numpy"]
        if n["bit_generator"] != "MT19937":
            raise ValueError(f"Unknown numpy bit generator: {n['bit_generator']!r}. It needs to be 'MT19937'.")
        key = np.asarray(n["key"].numpy(), dtype=np.uint32)
        py = state_dict["python"]
        torch.set_rng_state(state_dict["torch"])
        np.random.set_state(("MT19937", key, int(n["pos"]), int(n["has_gauss"]), float(n["gauss"])))
        random.setstate((int(py["version"]), tuple(py["state"]), py["gauss_next"]))
        cuda = state_dict.get("cuda")
        if cuda and torch.cuda.is_available():
            for i, s in enumerate(cuda[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s, i)

    def __repr__(self) -> str:
        return "RNGState()"


def rng_state() -> RNGState:
    """A :class:`RNGState`: put it in a checkpoint's state, or pass it to ``restore_into``."""
    return RNGState()
