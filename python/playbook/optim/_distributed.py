"""Fused optimizers under torch.distributed: DTensor params and ``process_group=``.

NOTE: [Distributed global norm]
The clip (playbook 7.8) and the skip flag must come from the norm of the *whole* gradient, or
every rank would clip by a different factor and silently change the optimizer. The kernels only
ever see local memory, so:

- DTensor params (FSDP2 ``fully_shard``, tensor parallel): the kernels run on the local shards
  (``DTensor._local_tensor``); optimizer state is created by ``zeros_like(param)``, i.e. as a
  DTensor with the param's mesh and placements, so ``state_dict()`` and
  torch.distributed.checkpoint see what they see with ``torch.optim``.
- The per-device sums of squares (float64, step 1 of NOTE: [Fused step]) are split by
  "domain": plain tensors (not reduced, or reduced over ``process_group``) and one domain per
  DeviceMesh. A domain's sum is all-reduced (SUM, float64, in place, ``async_op=False``: with
  NCCL the current stream waits for the collective, the host does not) over each dimension of
  its mesh, or over ``process_group``, before ``finalize_grad_norm`` computes the clip factor
  and the skip flag. Every rank then finalizes the same float64 total: same clip, same skip.
  One domain on a 1-D mesh (FSDP2 alone) costs one all-reduce of one float64 per step.
- A local shard replicated along a mesh dimension (``Replicate()``) counts once: only the rank
  at coordinate 0 of every replicated dimension adds its sum of squares (a 0/1 weight per
  tensor, applied on the device). A NaN/inf anywhere still reaches every rank (``0 * nan`` is
  nan), so a non-finite gradient on one rank skips the step on all of them.
- Plain tensors with no ``process_group`` are taken as identical on every rank (DDP, where the
  grads are already all-reduced) and are not reduced.

The domain list is built from every param of the optimizer (with or without a grad), so all
ranks issue the same collectives in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import Any

import torch

_DTENSOR: Any = None  # the DTensor class once imported, False if torch.distributed is unavailable


def _dtensor_cls() -> Any:
    global _DTENSOR
    if _DTENSOR is None:
        _DTENSOR = False
        if torch.distributed.is_available():
            try:
                from torch.distributed.tensor import DTensor
            except ImportError:  # pragma: no cover - torch builds without DTensor
                pass
            else:
                _DTENSOR = DTensor
    return _DTENSOR


def is_dtensor(t: Any) -> bool:
    cls = _dtensor_cls()
    return bool(cls) and isinstance(t, cls)


def check_process_group(process_group: Any) -> Any:
    """``process_group`` if it is None or a ``torch.distributed.ProcessGroup``; TypeError otherwise."""
    if process_group is None:
        return None
    if torch.distributed.is_available() and isinstance(process_group, torch.distributed.ProcessGroup):
        return process_group
    raise TypeError(
        f"Invalid process_group: {process_group!r}, expected a torch.distributed.ProcessGroup "
        "(e.g. torch.distributed.group.WORLD) or None"
    )


# ---------------------------------------------------------------------------------- local views
_DUMMY: dict[torch.device, torch.Tensor] = {}


def _non_null(t: torch.Tensor) -> torch.Tensor:
    """``t``, or a 1-element stand-in when ``t`` is empty (its data pointer may be null).

    An empty local shard (uneven FSDP2 sharding gives the last ranks 0 rows) has numel 0; the
    core reads nothing from it but wants a non-null state pointer, and a null grad pointer would
    mean "no grad this step" (its ``step`` would then lag the other ranks').
    """
    if t.numel() != 0:
        return t
    dummy = _DUMMY.get(t.device)
    if dummy is None:
        dummy = _DUMMY[t.device] = torch.zeros(1, dtype=torch.float32, device=t.device)
    return dummy


def _placements_error(p: Any, what: str, where: str, value: Any) -> ValueError:
    return ValueError(
        f"{what} of {where} is {value}, but its param is a DTensor with placements {p.placements} on "
        f"{p.device_mesh}; playbook's optimizers need the grad and optimizer state laid out like the param"
    )


def local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor; any other tensor itself."""
    return t._local_tensor if is_dtensor(t) else t


def local_tensors(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [local(p) for p in params]


def local_param_and_grad(p: torch.Tensor, where: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(local param, local grad or None) for validation; ValueError on mismatched layouts."""
    g = p.grad
    if not is_dtensor(p):
        if g is not None and is_dtensor(g):
            raise ValueError(f"grad of {where} is a DTensor, but its param is a plain tensor")
        return p, g
    for placement in p.placements:
        if placement.is_partial():
            raise ValueError(
                f"{where} is a DTensor with a Partial placement ({p.placements}); "
                "redistribute it to Shard/Replicate before creating the optimizer"
            )
    return p._local_tensor, None if g is None else _local_grad(p, g, where)


def _local_grad(p: Any, g: Any, where: str) -> torch.Tensor:
    if not is_dtensor(g):
        raise _placements_error(p, "grad", where, f"a plain {type(g).__name__}")
    if g.placements != p.placements or g.device_mesh != p.device_mesh:
        raise _placements_error(p, "grad", where, f"a DTensor with placements {g.placements} on {g.device_mesh}")
    return g._local_tensor


def local_grads(params: list[torch.Tensor]) -> list[torch.Tensor | None]:
    """Local grads of DTensor params for the step (None where a param has no grad)."""
    out: list[torch.Tensor | None] = []
    for p in params:
        g = p.grad
        if g is None:
            out.append(None)
        elif is_dtensor(p):
            out.append(_non_null(_local_grad(p, g, f"a DTensor param of shape {tuple(p.shape)}")))
        else:
            out.append(g)
    return out


def local_state(p: torch.Tensor, state: dict[str, Any], buffer_keys: tuple[str, ...]) -> dict[str, Any]:
    """``state`` with its buffers replaced by what the plan takes (local, non-null)."""
    out = dict(state)
    for key in buffer_keys:
        buf = state[key]
        if is_dtensor(p):
            if not is_dtensor(buf) or buf.placements != p.placements or buf.device_mesh != p.device_mesh:
                value = (
                    f"a DTensor with placements {buf.placements} on {buf.device_mesh}" if is_dtensor(buf)
                    else f"a plain tensor of shape {tuple(buf.shape)}"
                )
                raise _placements_error(p, f"optimizer state {key!r}", f"a param of shape {tuple(p.shape)}", value)
            buf = buf._local_tensor
        out[key] = _non_null(buf)
    return out


# ---------------------------------------------------------------------------------- global norm
@dataclass
class _ReducePlan:
    version: int
    domains: list[list[Any]]  # per domain: the process groups its sum is all-reduced over, in turn
    # per norm plan (device), in step order: float64 [n, D] 0/1 weights on the device, or None
    # when every tensor of every device is in the single domain with weight 1 (use the total)
    weights: list[torch.Tensor | None] | None


def _domain(p: torch.Tensor, process_group: Any) -> tuple[Any, list[Any]]:
    if is_dtensor(p):
        mesh = p.device_mesh
        return ("mesh", mesh), [mesh.get_group(i) for i in range(mesh.ndim) if mesh.size(i) > 1]
    if process_group is None:
        return ("local", None), []
    return ("pg", process_group), [process_group]


def _weight(p: torch.Tensor) -> float:
    """1 if this rank's shard of ``p`` is counted in the global sum of squares, else 0."""
    if not is_dtensor(p):
        return 1.0
    mesh = p.device_mesh
    for i, placement in enumerate(p.placements):
        if placement.is_replicate() and mesh.get_local_rank(i) != 0:
            return 0.0
    return 1.0


def _reduce_plan(opt: Any, norm_plans: list) -> _ReducePlan | None:
    version = opt._layout_version
    cached = opt.__dict__.get("_playbook_reduce_plan")
    if cached is not None and cached.version == version:
        return cached
    process_group = getattr(opt, "_process_group", None)
    all_params = [p for g in opt.param_groups for p in g["params"]]
    plan: _ReducePlan | None = None
    if process_group is not None or any(is_dtensor(p) for p in all_params):
        index: dict[Any, int] = {}
        domains: list[list[Any]] = []
        for p in all_params:  # every param: the same domains, in the same order, on every rank
            key, groups = _domain(p, process_group)
            if key not in index:
                index[key] = len(domains)
                domains.append(groups)
        weights: list[torch.Tensor | None] = []
        trivial = len(domains) == 1
        for np_, dps, _ in norm_plans:
            params = list(chain.from_iterable(dp.params for dp in dps))
            w = torch.zeros(len(params), len(domains), dtype=torch.float64)
            for j, p in enumerate(params):
                w[j, index[_domain(p, process_group)[0]]] = _weight(p)
            trivial = trivial and bool((w == 1).all())
            weights.append(w.to(np_.per_tensor.device))
        plan = _ReducePlan(version, domains, None if trivial else weights)
        if all(not groups for groups in domains):
            plan = None  # nothing to reduce (plain tensors only, no process_group)
    if plan is None:
        plan = _ReducePlan(version, [], None)
    opt.__dict__["_playbook_reduce_plan"] = plan
    return plan


def reduce_total(opt: Any, total: torch.Tensor, norm_plans: list, primary: torch.device) -> torch.Tensor:
    """The global sum of squares (float64 [1] on ``primary``) over every rank that shares a param.

    ``total`` is this process's sum over all its devices; ``norm_plans`` are the step's
    ``(norm plan, device plans, grad pointers)`` per device. See NOTE: [Distributed global norm].
    """
    plan = _reduce_plan(opt, norm_plans)
    if not plan.domains:
        return total
    dist = torch.distributed
    if plan.weights is None:  # one domain, every local tensor counted once
        for group in plan.domains[0]:
            dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
        return total
    sums = None
    for (np_, _, _), w in zip(norm_plans, plan.weights):
        part = (np_.per_tensor.unsqueeze(1) * w).sum(0)  # [D]; elementwise, so 0 * nan stays nan
        part = part.to(primary, non_blocking=True)
        sums = part if sums is None else sums + part
    out = None
    for d, groups in enumerate(plan.domains):
        s = sums[d : d + 1].clone()
        for group in groups:
            dist.all_reduce(s, op=dist.ReduceOp.SUM, group=group)
        out = s if out is None else out + s
    return out
