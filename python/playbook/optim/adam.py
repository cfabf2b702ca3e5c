"""Fused Adam and AdamW with the global-norm gradient clip computed on the device."""

from __future__ import annotations

from typing import Any, Iterable

import torch

from playbook import _C
from playbook.optim._base import VARIANTS, FusedOptimizer, _check_adam_group, _DevicePlan


class Adam(FusedOptimizer):
    r"""Adam (Kingma & Ba 2015) with in-kernel global-norm clipping; drop-in for ``torch.optim.Adam``.

    Per element, in fp32 whatever the param dtype, with ``g`` the gradient after the global clip
    (playbook 7.8: ``g *= max_grad_norm / n`` when ``n = sqrt(sum g^2) > max_grad_norm``)::

        m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
        variant="torch":    p -= lr / (1-b1^t) * m / (sqrt(v) / sqrt(1-b2^t) + eps)
        variant="playbook": p -= lr * sqrt(1-b2^t) / (1-b1^t) * m / (sqrt(v) + eps)   (playbook 7.11)

    ``weight_decay`` is L2 (added to the clipped gradient) unless ``decoupled_weight_decay``
    (AdamW: ``p *= 1 - lr * weight_decay`` first). A step whose global norm is NaN/inf is skipped
    for every param (params, moments and step counts untouched) and counted in
    ``skipped_steps``; nothing is read back to the host.

    Args:
        params: Iterable of parameters or dicts defining parameter groups.
        lr: Learning rate (float, or a 1-element tensor, read on the device).
        betas: Coefficients for the running averages of the gradient and its square.
        eps: Term added to the denominator for numerical stability.
        weight_decay: Weight decay coefficient.
        amsgrad: Use the AMSGrad variant (max of past squared-gradient averages).
        foreach: Accepted for compatibility with ``torch.optim``; ignored (always fused).
        maximize: Maximize the objective instead of minimizing.
        capturable: Accepted; playbook's step never syncs the host, so it is always capturable
            in a CUDA graph when lr is a float or a tensor on the params' device.
        differentiable: Must be False (the fused step is not differentiable).
        fused: Accepted for compatibility; ignored (always fused).
        decoupled_weight_decay: Apply weight decay as in AdamW.
        max_grad_norm: Clip the global gradient norm (all params of the optimizer) to this
            value; None disables clipping (the norm is still recorded).
        variant: ``"torch"`` (default, torch.optim.Adam's formula) or ``"playbook"`` (7.11).
        skip_nonfinite: Skip the step when the global norm is NaN/inf.
        history: Number of recent global norms kept for ``grad_norms()``.
        process_group: For plain-tensor params whose grads are sharded by hand (ZeRO-style: each
            rank steps its own slice), the ``torch.distributed.ProcessGroup`` over which the sum of
            squares is all-reduced, so the clip and the skip use the norm of the whole gradient.
            DTensor params (FSDP2, tensor parallel) need nothing: they reduce over their mesh.

    Example:
        >>> opt = playbook.optim.Adam(model.parameters(), lr=1e-3, max_grad_norm=1.0)
        >>> loss.backward(); opt.step(); opt.zero_grad()
        >>> playbook.stats.suggest_max_grad_norm(opt.grad_norms())

    References:
        Deep Learning Tuning Playbook, sections 7.8 (clipping) and 7.11 (Adam's update rule).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        max_grad_norm: float | None = None,
        variant: str = "torch",
        skip_nonfinite: bool = True,
        history: int = 1024,
        process_group: Any = None,
    ) -> None:
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
            foreach=foreach, capturable=capturable, differentiable=differentiable, fused=fused,
            decoupled_weight_decay=decoupled_weight_decay, variant=variant,
        )
        self._validate_group(defaults, None)
        super().__init__(params, defaults, max_grad_norm=max_grad_norm, skip_nonfinite=skip_nonfinite, history=history,
                         process_group=process_group)

    def _validate_group(self, group: dict[str, Any], gi: int | None) -> None:
        _check_adam_group(group)

    def _group_defaults(self) -> dict[str, Any]:
        return {**super()._group_defaults(), "amsgrad": False, "decoupled_weight_decay": False}

    def _buffer_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        if group["amsgrad"]:
            return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
        return ("exp_avg", "exp_avg_sq")

    def _make_plan(self, device: int, numels: list[int], dtypes: list[int], states: list[dict], group: dict) -> Any:
        return _C.AdamPlan(
            device, numels, dtypes,
            [s["exp_avg"].data_ptr() for s in states],
            [s["exp_avg_sq"].data_ptr() for s in states],
            [s["max_exp_avg_sq"].data_ptr() for s in states] if group["amsgrad"] else [],
            [s["step"].data_ptr() for s in states],
        )

    def _run_plan(
        self, dp: _DevicePlan, group: dict, param_ptrs: list[int], grad_ptrs: list[int],
        lr: float, lr_ptr: int, values_ptr: int, threads: int, stream: int,
    ) -> None:
        beta1, beta2 = group["betas"]
        dp.plan.step(
            param_ptrs, grad_ptrs, lr, lr_ptr, float(beta1), float(beta2), group["eps"], group["weight_decay"],
            bool(group["decoupled_weight_decay"]), bool(group["amsgrad"]), bool(group["maximize"]),
            VARIANTS[group["variant"]], values_ptr, threads, stream,
        )


class AdamW(Adam):
    r"""AdamW (Loshchilov & Hutter 2019): :class:`Adam` with decoupled weight decay.

    ``p *= 1 - lr * weight_decay`` before the Adam update; drop-in for ``torch.optim.AdamW``
    (default ``weight_decay=1e-2``). All other arguments as :class:`Adam`.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        max_grad_norm: float | None = None,
        variant: str = "torch",
        skip_nonfinite: bool = True,
        history: int = 1024,
        process_group: Any = None,
    ) -> None:
        super().__init__(
            params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
            capturable=capturable, differentiable=differentiable, fused=fused, decoupled_weight_decay=True,
            max_grad_norm=max_grad_norm, variant=variant, skip_nonfinite=skip_nonfinite, history=history,
            process_group=process_group,
        )

    def _group_defaults(self) -> dict[str, Any]:
        return {**super()._group_defaults(), "decoupled_weight_decay": True}
