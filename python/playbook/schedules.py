"""Learning-rate schedules as pure multipliers of the base learning rate (playbook FAQ "Which
learning rate decay should I use as a default?" and "Learning rate warmup").

The playbook: "Our preference is either linear decay or cosine decay", and warmup is
"prepending a learning rate schedule that ramps up the learning rate from 0 to some stable
``base_learning_rate``" (10,000 ``max_train_steps`` + 1,000 ``warmup_steps`` = 11,000 steps).

Every schedule is a small picklable object ``m(step) -> float`` (``step`` an int >= 0), the
factor applied to each parameter group's base learning rate; :func:`scheduler` turns one into a
``torch.optim.lr_scheduler.LRScheduler``.

Example:
    >>> from playbook import schedules
    >>> fn = schedules.warmup(schedules.cosine_decay(10_000), warmup_steps=1_000)
    >>> fn(0), fn(500), fn(1_000), fn(11_000)
    (0.0, 0.5, 1.0, 0.0)
    >>> sched = schedules.scheduler(opt, fn)   # doctest: +SKIP
    >>> # in the loop: opt.step(); sched.step()
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from playbook._validate import step_index

__all__ = [
    "Schedule",
    "constant",
    "linear_decay",
    "cosine_decay",
    "rsqrt_decay",
    "warmup",
    "scheduler",
    "MultiplierLR",
]

Schedule = Callable[[int], float]


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"Invalid {name}: {value!r}; it needs to be an int >= {minimum}.")
    return value


def _fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"Invalid final_fraction: {value!r}; it needs to be a number in [0, 1].")
    return float(value)


@dataclass(frozen=True)
class _Constant:
    def __call__(self, step: int) -> float:
        step_index(step)
        return 1.0


@dataclass(frozen=True)
class _LinearDecay:
    total_steps: int
    final_fraction: float = 0.0

    def __call__(self, step: int) -> float:
        t = min(step_index(step), self.total_steps)
        return 1.0 - (1.0 - self.final_fraction) * t / self.total_steps


@dataclass(frozen=True)
class _CosineDecay:
    total_steps: int
    final_fraction: float = 0.0

    def __call__(self, step: int) -> float:
        t = min(step_index(step), self.total_steps)
        f = self.final_fraction
        return f + (1.0 - f) * (1.0 + math.cos(math.pi * t / self.total_steps)) / 2.0


@dataclass(frozen=True)
class _RsqrtDecay:
    timescale: float

    def __call__(self, step: int) -> float:
        return 1.0 / math.sqrt(1.0 + step_index(step) / self.timescale)


@dataclass(frozen=True)
class _Warmup:
    fn: Schedule
    warmup_steps: int

    def __call__(self, step: int) -> float:
        t = step_index(step)
        if t < self.warmup_steps:
            return t / self.warmup_steps
        return float(self.fn(t - self.warmup_steps))


def constant() -> Schedule:
    """``m(t) = 1``: the base learning rate throughout."""
    return _Constant()


def linear_decay(total_steps: int, final_fraction: float = 0.0) -> Schedule:
    """Linear decay to ``final_fraction`` of the base lr at ``total_steps``, then flat.

    ``m(t) = 1 - (1 - f) * min(t, T) / T``. Playbook FAQ: "Our preference is either linear decay
    or cosine decay".

    Args:
        total_steps: ``T`` (int >= 1).
        final_fraction: ``f`` in [0, 1].
    """
    return _LinearDecay(_positive_int("total_steps", total_steps), _fraction(final_fraction))


def cosine_decay(total_steps: int, final_fraction: float = 0.0) -> Schedule:
    """Cosine decay to ``final_fraction`` of the base lr at ``total_steps``, then flat.

    ``m(t) = f + (1 - f) * (1 + cos(pi * min(t, T) / T)) / 2`` (torch's ``CosineAnnealingLR`` with
    ``T_max=T, eta_min=f*lr`` for ``t <= T``).
    """
    return _CosineDecay(_positive_int("total_steps", total_steps), _fraction(final_fraction))


def rsqrt_decay(timescale: float) -> Schedule:
    """Reciprocal square-root decay: ``m(t) = 1 / sqrt(1 + t / timescale)`` (``m(0) = 1``; halves
    at ``t = 3 * timescale``)."""
    if isinstance(timescale, bool) or not isinstance(timescale, (int, float)) or not timescale > 0 or not math.isfinite(timescale):
        raise ValueError(f"Invalid timescale: {timescale!r}; it needs to be a number > 0.")
    return _RsqrtDecay(float(timescale))


def warmup(fn: Schedule, warmup_steps: int) -> Schedule:
    """Prepend a linear warmup from 0 to ``fn``'s schedule (playbook "How to apply learning rate warmup").

    ``m(t) = t / W`` for ``t < W``, else ``fn(t - W)``: ``fn`` starts after the warmup, so a
    10,000-step schedule with 1,000 warmup steps runs for 11,000 steps (the playbook's example).
    ``warmup_steps=0`` returns ``fn`` unchanged.
    """
    if not callable(fn):
        raise ValueError(f"Invalid schedule {fn!r}: it needs to be a callable step -> multiplier.")
    w = _positive_int("warmup_steps", warmup_steps, minimum=0)
    return fn if w == 0 else _Warmup(fn, w)


class MultiplierLR(torch.optim.lr_scheduler.LRScheduler):
    """``lr_g = base_lr_g * fn(last_epoch)`` for every parameter group ``g`` (see :func:`scheduler`).

    ``state_dict()`` holds the step count and base lrs, not ``fn``: build the scheduler with the
    same ``fn`` before ``load_state_dict``. A tensor ``lr`` (capturable / CUDA-graph optimizers)
    is updated in place with ``fill_``.
    """

    def __init__(self, optimizer: Any, fn: Schedule, last_epoch: int = -1) -> None:
        if not callable(fn):
            raise ValueError(f"Invalid schedule {fn!r}: it needs to be a callable step -> multiplier.")
        self.fn = fn
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[Any]:
        m = float(self.fn(self.last_epoch))
        return [base * m for base in self.base_lrs]

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "fn")}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update({k: v for k, v in state_dict.items() if k not in ("optimizer", "fn")})

    def __repr__(self) -> str:
        return f"MultiplierLR(fn={self.fn!r}, last_epoch={self.last_epoch})"


def scheduler(optimizer: Any, fn: Schedule, last_epoch: int = -1) -> Any:
    """A ``torch.optim.lr_scheduler.LRScheduler`` setting ``lr = base_lr * fn(step)`` per group.

    Call ``sched.step()`` after ``optimizer.step()`` as with any torch scheduler. Construction
    applies ``fn(0)`` (0 under :func:`warmup`). ``state_dict()`` round-trips (store it in a
    checkpoint). Tensor learning rates are written in place.

    Example:
        >>> sched = schedules.scheduler(opt, schedules.warmup(schedules.linear_decay(9000), 1000))  # doctest: +SKIP
    """
    return MultiplierLR(optimizer, fn, last_epoch)
