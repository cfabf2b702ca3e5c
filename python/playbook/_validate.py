"""Small argument checks shared by the Python layer."""

from __future__ import annotations

import operator
from typing import Any

__all__ = ["step_index"]


def step_index(value: Any, what: str = "step") -> int:
    """``value`` as a Python int >= 0 (a training step); ``ValueError`` naming it otherwise.

    Accepts anything with ``__index__`` (int, numpy integers, 0-d integer tensors), not bool.
    """
    try:
        if isinstance(value, bool):
            raise TypeError
        index = operator.index(value)
    except TypeError:
        raise ValueError(f"Invalid {what}: {value!r}; it needs to be an int >= 0.") from None
    if index < 0:
        raise ValueError(f"Invalid {what}: {value!r}; it needs to be an int >= 0.")
    return index
