"""Fused NAdam with the global-norm gradient clip computed on the device."""

from __future__ import annotations

from typing import Any, Iterable

import torch

from playbook import _C
from playbook.optim._base import VARIANTS, FusedOptimizer, _check_adam_group, _DevicePlan


class NAdam(FusedOptimizer):
    r"""NAdam (Dozat 2016) with in-kernel global-norm clipping; drop-in for ``torch.optim.NAdam``.

    ``variant="torch"`` (default) is torch.optim.NAdam's rule with its momentum schedule
    ``mu_t = b1 (1 - 0.5 * 0.96^(t * momentum_decay))`` and ``mu_product`` state::

        p -= lr (1-mu_t) / (1-prod mu) * g / d + lr mu_{t+1} / (1 - mu_{t+1} prod mu) * m / d,
        d = sqrt(v / (1-b2^t)) + eps

    ``variant="playbook"`` is the playbook's 7.11 rule (no momentum schedule)::

        p -= lr * sqrt(1-b2^t) / (1-b1^t) * (b1 m + (1-b1) g) / (sqrt(v) + eps)

    Clipping, skipping and the arguments shared with :class:`playbook.optim.Adam` behave the
    same; ``momentum_decay`` and ``decoupled_weight_decay`` are torch's.

    References:
        Deep Learning Tuning Playbook, sections 7.8 and 7.11.
    """

    _scalar_defaults = {"step": 0.0, "mu_product": 1.0}

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | torch.Tensor = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum_decay: float = 4e-3,
        decoupled_weight_decay: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        max_grad_norm: float | None = None,
        variant: str = "torch",
        skip_nonfinite: bool = True,
        history: int = 1024,
        process_group: Any = None,
    ) -> None:
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, momentum_decay=momentum_decay,
            decoupled_weight_decay=decoupled_weight_decay, maximize=maximize, foreach=foreach,
            capturable=capturable, differentiable=differentiable, variant=variant,
        )
        self._validate_group(defaults, None)
        super().__init__(params, defaults, max_grad_norm=max_grad_norm, skip_nonfinite=skip_nonfinite, history=history,
                         process_group=process_group)

    def _validate_group(self, group: dict[str, Any], gi: int | None) -> None:
        _check_adam_group(group, extra_nonneg=("momentum_decay",))

    def _group_defaults(self) -> dict[str, Any]:
        return {**super()._group_defaults(), "decoupled_weight_decay": False, "momentum_decay": 4e-3}

    def _buffer_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    def _make_plan(self, device: int, numels: list[int], dtypes: list[int], states: list[dict], group: dict) -> Any:
        return _C.NAdamPlan(
            device, numels, dtypes,
            [s["exp_avg"].data_ptr() for s in states],
            [s["exp_avg_sq"].data_ptr() for s in states],
            [s["mu_product"].data_ptr() for s in states],
            [s["step"].data_ptr() for s in states],
        )

    def _run_plan(
        self, dp: _DevicePlan, group: dict, param_ptrs: list[int], grad_ptrs: list[int],
        lr: float, lr_ptr: int, values_ptr: int, threads: int, stream: int,
    ) -> None:
        beta1, beta2 = group["betas"]
        dp.plan.step(
            param_ptrs, grad_ptrs, lr, lr_ptr, float(beta1), float(beta2), group["eps"], group["weight_decay"],
            group["momentum_decay"], bool(group["decoupled_weight_decay"]), bool(group["maximize"]),
            VARIANTS[group["variant"]], values_ptr, threads, stream,
        )
