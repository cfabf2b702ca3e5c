"""Mixed precision with playbook's fused optimizers.

``torch.amp.GradScaler`` works with every playbook optimizer as is: ``scaler.step(opt)`` hands
the optimizer the scale (``opt.grad_scale``) and the inf flag (``opt.found_inf``), and the
fused kernels unscale inside the norm and update passes instead of a separate unscale pass.
torch's scaler still reads every gradient once more to look for infs before the step
(``GradScaler._check_inf_per_device``). :class:`GradScaler` below removes that pass too: the
inf check comes free with playbook's global-norm pass (a non-finite norm is an inf). With
``skip_nonfinite=False`` the optimizer applies such a step, and the scaler does not back off.
"""

from __future__ import annotations

from typing import Any

import torch

from playbook.optim._base import FusedOptimizer


class GradScaler(torch.amp.GradScaler):
    """``torch.amp.GradScaler`` that lets playbook optimizers do the inf check in their norm pass.

    For any other optimizer it behaves exactly like ``torch.amp.GradScaler``.

    Example:
        >>> scaler = playbook.amp.GradScaler("cuda")
        >>> scaler.scale(loss).backward()
        >>> scaler.step(opt)      # no extra pass over the gradients
        >>> scaler.update()
    """

    def _check_inf_per_device(self, optimizer: torch.optim.Optimizer) -> dict[torch.device, torch.Tensor]:
        if not isinstance(optimizer, FusedOptimizer):
            return super()._check_inf_per_device(optimizer)
        scale, _ = self._check_scale_growth_tracker("_check_inf_per_device")
        found_inf = torch.zeros((), dtype=torch.float32, device=scale.device)
        # The optimizer's finalize kernel sets it to 1 when it skips the step (a non-finite
        # global norm with skip_nonfinite=True), in this very tensor (NOTE: [Primary device] in
        # optim/_base.py); update() then reads it from found_inf_per_device like any other inf
        # flag, so the scale backs off exactly for the steps that were skipped.
        optimizer.__dict__["_playbook_found_inf"] = found_inf
        per_device: dict[torch.device, Any] = {scale.device: found_inf}
        self._per_optimizer_states[id(optimizer)]["found_inf_per_device"] = per_device
        return per_device
