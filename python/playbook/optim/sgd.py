"""Fused SGD (momentum, dampening, Nesterov) with the global-norm clip computed on the device."""

from __future__ import annotations

from typing import Any, Iterable

import torch

from playbook import _C
from playbook.optim._base import FusedOptimizer, _check_lr, _check_nonneg, _check_not_differentiable, _DevicePlan


class SGD(FusedOptimizer):
    r"""SGD with momentum and Nesterov, in-kernel global-norm clipping; drop-in for ``torch.optim.SGD``.

    With ``g`` the clipped gradient (plus ``weight_decay * p``)::

        buf = g (first step) or momentum * buf + (1 - dampening) * g
        nesterov: p -= lr * (g + momentum * buf);  otherwise p -= lr * buf

    which is torch.optim.SGD's rule and the playbook's (7.11). Besides torch's
    ``momentum_buffer``, the state holds a float32 ``step`` count (so that a skipped first step
    leaves the buffer uninitialized); torch.optim.SGD ignores it when loading.

    References:
        Deep Learning Tuning Playbook, sections 3.2 (SGD with Nesterov momentum), 7.8, 7.11.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | torch.Tensor = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        max_grad_norm: float | None = None,
        skip_nonfinite: bool = True,
        history: int = 1024,
        process_group: Any = None,
    ) -> None:
        defaults = dict(
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
            maximize=maximize, foreach=foreach, differentiable=differentiable, fused=fused,
        )
        self._validate_group(defaults, None)
        super().__init__(params, defaults, max_grad_norm=max_grad_norm, skip_nonfinite=skip_nonfinite, history=history,
                         process_group=process_group)

    def _validate_group(self, group: dict[str, Any], gi: int | None) -> None:
        _check_lr(group["lr"])
        _check_nonneg("momentum", group["momentum"])
        _check_nonneg("weight_decay", group["weight_decay"])
        try:
            float(group["dampening"])
        except (TypeError, ValueError):
            raise ValueError(f"Invalid dampening value: {group['dampening']!r}") from None
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                f"Nesterov momentum requires a momentum and zero dampening, got momentum={group['momentum']}, "
                f"dampening={group['dampening']}"
            )
        _check_not_differentiable(group)

    def _group_defaults(self) -> dict[str, Any]:
        return {"maximize": False, "dampening": 0.0, "nesterov": False}

    def _initial_scalar(self, key: str, default: float, state: dict[str, Any]) -> float:
        # A momentum buffer loaded from torch.optim.SGD is already initialized.
        return 1.0 if key == "step" and state.get("momentum_buffer") is not None else default

    def _buffer_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("momentum_buffer",) if group["momentum"] != 0 else ()

    def _make_plan(self, device: int, numels: list[int], dtypes: list[int], states: list[dict], group: dict) -> Any:
        has_momentum = group["momentum"] != 0
        return _C.SGDPlan(
            device, numels, dtypes,
            [s["momentum_buffer"].data_ptr() for s in states] if has_momentum else [],
            [s["step"].data_ptr() for s in states],
        )

    def _run_plan(
        self, dp: _DevicePlan, group: dict, param_ptrs: list[int], grad_ptrs: list[int],
        lr: float, lr_ptr: int, values_ptr: int, threads: int, stream: int,
    ) -> None:
        dp.plan.step(
            param_ptrs, grad_ptrs, lr, lr_ptr, float(group["momentum"]), float(group["dampening"]),
            float(group["weight_decay"]), bool(group["nesterov"]), bool(group["maximize"]), values_ptr,
            threads, stream,
        )
