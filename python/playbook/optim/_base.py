"""Machinery shared by playbook's fused optimizers.

NOTE: [Fused step]
One ``step()`` is three calls into the compiled core and no host synchronization
(csrc/include/playbook/optim.h, NOTE: [Step pipeline]):

1. per device, the sum of squares of every gradient (per tensor and in total, float64);
2. on the primary device (NOTE: [Primary device]), the global norm, the clip factor, the skip
   flag, the norm history and the counters (``_GradNormState``);
3. per (param group, device), the fused update, which reads the clip factor and the skip flag
   from device memory.

What does not change between steps (numels, dtypes, optimizer-state pointers) lives in "plans"
(``_DevicePlan``, ``_C.*Plan``), rebuilt only when the params, their storage or their state change.
A step only collects the param and grad pointers.
"""

from __future__ import annotations

import functools
import inspect
import math
import operator
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Callable, Iterable

import torch
from torch.optim import Optimizer
from torch.optim import optimizer as _torch_optimizer

from playbook import _C
from playbook._cuda import require_kernels
from playbook.optim import _distributed
from playbook._tensors import CPU_DEVICE, device_index, dtype_code, ptr, stream_handle

_is_contiguous = torch.Tensor.is_contiguous
_data_ptr = torch.Tensor.data_ptr  # map(_data_ptr, ts) == [t.data_ptr() for t in ts], without the per-item lookup
_grad_of = operator.attrgetter("grad")
# A step's param and grad pointers in one C pass (NOTE: [Step pointers] in csrc/step_pointers.cpp):
# built from the descriptors torch.Tensor resolves these names to.
_STEP_POINTERS = _C.StepPointers(*(inspect.getattr_static(torch.Tensor, n) for n in ("grad", "data_ptr", "is_contiguous")))


def _use_raw_data_ptr(sp: Any) -> bool:
    """Read data pointers through torch's C function for compiled code (NOTE: [Raw data pointer]
    in csrc/step_pointers.cpp), if this torch has it and it agrees with ``data_ptr()``."""
    fn = getattr(getattr(getattr(torch._C, "_dynamo", None), "guards", None), "_torchinductor_pyobject_tensor_data_ptr", None)
    if not isinstance(fn, int) or fn == 0:
        return False
    sp.set_raw_data_ptr(fn)
    try:  # a probe: a view at an offset, its grad, a bf16 param
        probe = [torch.nn.Parameter(torch.zeros(8)[3:]), torch.nn.Parameter(torch.zeros(5, dtype=torch.bfloat16))]
        for p in probe:
            p.grad = torch.ones(12, dtype=p.dtype)[2 : 2 + p.numel()]
        got = sp.collect(probe, _C.PtrList([p.data_ptr() for p in probe]))
        if isinstance(got, _C.PtrList) and list(got) == [p.grad.data_ptr() for p in probe]:
            return True
    except Exception:  # noqa: BLE001 - anything unexpected: the portable path
        pass
    sp.set_raw_data_ptr(0)
    return False


_use_raw_data_ptr(_STEP_POINTERS)


def _concat_ptrs(parts: list) -> Any:
    """The grad pointers of several device plans as one list, in order (one plan: as it is)."""
    return parts[0] if len(parts) == 1 else list(chain.from_iterable(map(list, parts)))


def _profile_hook_step(func: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.optim.Optimizer.profile_hook_step`` with the profiler range only while a profiler runs.

    The same hooks in the same order (global and per-optimizer pre-hooks, which may replace the
    arguments, then the step, ``_optimizer_step_code`` and the post-hooks) and, under
    ``torch.profiler``, the same ``Optimizer.step#<class>.step`` range. Outside a profiler the
    range is skipped: entering ``record_function`` costs ~4 us per step, a visible share of a step
    over many small tensors.
    """
    profiler_enabled = torch._C._autograd._profiler_enabled

    def run(self: Any, args: tuple, kwargs: dict) -> Any:
        global_pre = _torch_optimizer._global_optimizer_pre_hooks
        for pre_hook in chain(global_pre.values(), self._optimizer_step_pre_hooks.values()):
            result = pre_hook(self, args, kwargs)
            if result is not None:
                if isinstance(result, tuple) and len(result) == 2:
                    args, kwargs = result
                else:
                    raise RuntimeError(
                        f"{func} must return None or a tuple of (new_args, new_kwargs), but got {result}."
                    )
        out = func(*args, **kwargs)
        self._optimizer_step_code()
        global_post = _torch_optimizer._global_optimizer_post_hooks
        for post_hook in chain(self._optimizer_step_post_hooks.values(), global_post.values()):
            post_hook(self, args, kwargs)
        return out

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        self = args[0]
        if profiler_enabled():
            with torch.autograd.profiler.record_function(f"Optimizer.step#{type(self).__name__}.step"):
                return run(self, args, kwargs)
        return run(self, args, kwargs)

    return wrapper


def _check_lr(lr: Any) -> None:
    if isinstance(lr, torch.Tensor):
        if lr.numel() != 1:
            raise ValueError(f"Tensor lr must have one element, got shape {tuple(lr.shape)}")
        return
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")


def _check_beta(betas: Any) -> tuple[float, float]:
    if type(betas) is tuple and len(betas) == 2:  # already what the checks below return (every step)
        b1, b2 = betas
        if type(b1) is float and type(b2) is float and 0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0:
            return betas
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"Invalid betas: {betas!r}, expected a pair (beta1, beta2)")
    out = []
    for i, b in enumerate(betas):
        b = float(b)
        if not 0.0 <= b < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {b}")
        out.append(b)
    return out[0], out[1]


def _check_nonneg(name: str, value: float) -> None:
    if not 0.0 <= value:
        raise ValueError(f"Invalid {name} value: {value}")


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"Unknown variant: {variant!r}. It needs to be one of {list(VARIANTS)}")


VARIANTS = {"torch": 0, "playbook": 1}


def _check_adam_group(group: dict[str, Any], extra_nonneg: tuple[str, ...] = ()) -> None:
    """torch-style checks of an Adam-family param group; normalizes ``betas`` to floats."""
    _check_lr(group["lr"])
    group["betas"] = _check_beta(group["betas"])
    _check_nonneg("epsilon", group["eps"])
    _check_nonneg("weight_decay", group["weight_decay"])
    for name in extra_nonneg:
        _check_nonneg(name, group[name])
    _check_variant(group["variant"])
    _check_not_differentiable(group)


def _check_not_differentiable(group: dict[str, Any]) -> None:
    if group.get("differentiable"):
        raise ValueError("differentiable=True is not supported by playbook's fused optimizers")


def _dense(t: torch.Tensor) -> bool:
    """Contiguous in some memory format: the kernels walk such a tensor as a flat array."""
    if t.is_contiguous():
        return True
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return True
    return t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d)


@dataclass
class _DevicePlan:
    """Params of one param group on one device that have optimizer state."""

    device: torch.device
    params: list[torch.Tensor]
    stateless: list[torch.Tensor]  # params of this group/device with no grad yet (no state)
    param_ptrs: Any  # _C.PtrList of the local tensors' data_ptr()s
    numels: list[int]
    dtypes: list[int]
    plan: Any  # _C.AdamPlan / NAdamPlan / SGDPlan
    buffer_keys: tuple[str, ...]  # the state buffers the plan was built with
    all_contiguous: bool  # False: grads need the per-step stride check (channels_last params)
    dtensor: bool = False  # params are DTensors: the kernels take their local shards (_distributed)


@dataclass
class _GroupCache:
    params: list  # the group's params list object (identity checked)
    length: int
    devices: list[_DevicePlan]


@dataclass
class _NormPlan:
    """Sum-of-squares plan over every grad on one device (all groups, in step order)."""

    version: int
    plan: Any
    per_tensor: torch.Tensor  # float64 [n]
    total: torch.Tensor  # float64 [1]
    scratch: torch.Tensor | None


@dataclass
class _GradNormState:
    """Step state on the primary device: NOTE: [Step state] in playbook/optim.h."""

    values: torch.Tensor  # float32 [3]: norm, grad factor, skip flag
    counters: torch.Tensor  # int64 [3]: steps seen, skipped, clipped
    history: torch.Tensor  # float32 [history]


@dataclass
class _LastStep:
    # per device: its norm plan, the device plans in norm order, the grad pointers of the step
    norm_plans: list[tuple[_NormPlan, list[_DevicePlan], list[int]]] = field(default_factory=list)
    grad_scale: torch.Tensor | None = None


class FusedOptimizer(Optimizer):
    """Base class: a ``torch.optim.Optimizer`` whose step runs playbook's fused kernels.

    Subclasses define ``_buffer_keys(group)`` (fp32 state tensors shaped like the param),
    ``_scalar_defaults`` (fp32 scalar state and its initial value), ``_make_plan`` and
    ``_run_plan``.
    """

    _step_supports_amp_scaling = True
    _scalar_defaults: dict[str, float] = {"step": 0.0}

    def __init__(
        self,
        params: Iterable[Any],
        defaults: dict[str, Any],
        *,
        max_grad_norm: float | None,
        skip_nonfinite: bool,
        history: int,
        process_group: Any = None,
    ) -> None:
        self._process_group = _distributed.check_process_group(process_group)
        self._gn: _GradNormState | None = None
        self._groups: dict[int, _GroupCache] = {}
        self._norm_plans: dict[torch.device, _NormPlan] = {}
        self._layout_version = 0
        self._last = _LastStep()
        self.max_grad_norm = max_grad_norm
        self.skip_nonfinite = bool(skip_nonfinite)
        if isinstance(history, bool) or not isinstance(history, int) or history < 1:
            raise ValueError(f"Invalid history: {history!r}, expected an int >= 1 (steps of grad norms to keep)")
        self._history = history
        super().__init__(params, defaults)

    # ------------------------------------------------------------------ settings
    @property
    def max_grad_norm(self) -> float | None:
        """Clip threshold for the global gradient norm (playbook 7.8); None disables clipping."""
        return self._max_grad_norm

    @max_grad_norm.setter
    def max_grad_norm(self, value: float | None) -> None:
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"Invalid max_grad_norm: {value!r}, expected a positive float or None")
            if not (value > 0.0) or math.isnan(value):
                raise ValueError(f"Invalid max_grad_norm: {value}, expected > 0 (or None to disable clipping)")
            value = float(value)
        self._max_grad_norm = value

    @property
    def history(self) -> int:
        """Capacity of the ring buffer of per-step gradient norms."""
        return self._history

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_playbook_settings"] = {
            "max_grad_norm": self._max_grad_norm,
            "skip_nonfinite": self.skip_nonfinite,
            "history": self._history,
            "process_group": getattr(self, "_process_group", None),  # not picklable: fails loudly
        }
        # The norm history and counters (grad_norms(), skipped_steps, clip_fraction()), as
        # state_dict() keeps them; the plans are rebuilt on the next step.
        state["_playbook_grad_norms"] = self._gn
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        settings = state.pop("_playbook_settings", None)
        gn = state.pop("_playbook_grad_norms", None)
        super().__setstate__(state)
        if gn is not None:
            self._gn = gn
        if settings is not None:
            self._max_grad_norm = settings["max_grad_norm"]
            self.skip_nonfinite = settings["skip_nonfinite"]
            self._history = settings["history"]
            self._process_group = settings.get("process_group")
        for name, default in (("_gn", None), ("_layout_version", 0)):
            if not hasattr(self, name):
                setattr(self, name, default)
        self._groups = {}
        self._norm_plans = {}
        self._last = _LastStep()
        for group in self.param_groups:
            for key, value in self._group_defaults().items():
                group.setdefault(key, value)

    def _group_defaults(self) -> dict[str, Any]:
        """Keys a group loaded from a torch.optim state dict may lack."""
        return {"variant": "torch", "capturable": False, "maximize": False}

    def __repr__(self) -> str:
        """torch's listing of the param groups (``variant`` among their keys), then the settings
        that belong to the whole optimizer."""
        text = super().__repr__()
        settings = (
            f"Optimizer settings\n    max_grad_norm: {self._max_grad_norm}\n"
            f"    skip_nonfinite: {self.skip_nonfinite}\n    history: {self._history}\n"
        )
        return text[:-1] + settings + text[-1:]

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group (torch's checks), refusing params the kernels cannot take first.

        The params are checked as ``step()`` checks them (dtype, device, sparse, contiguous),
        with the same messages, before the group is added.
        """
        if isinstance(param_group, dict):
            params = param_group.get("params")
            if params is not None and not isinstance(params, (torch.Tensor, set)):
                params = param_group["params"] = list(params)  # may be a generator: read it once
            if isinstance(params, torch.Tensor):
                params = [params]
            if isinstance(params, list):
                gi = len(getattr(self, "param_groups", ()))
                for pi, p in enumerate(params):
                    if isinstance(p, tuple) and len(p) == 2:  # (name, param)
                        p = p[1]
                    if isinstance(p, torch.Tensor):
                        self._check_param_tensor(p, f"param {pi} of param group {gi}")
        super().add_param_group(param_group)
        if hasattr(self, "_groups"):
            self._invalidate()

    # ------------------------------------------------------------------ family hooks
    def _buffer_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        raise NotImplementedError

    def _make_plan(self, device: int, numels: list[int], dtypes: list[int], states: list[dict], group: dict) -> Any:
        raise NotImplementedError

    def _run_plan(
        self, dp: _DevicePlan, group: dict, param_ptrs: list[int], grad_ptrs: list[int],
        lr: float, lr_ptr: int, values_ptr: int, threads: int, stream: int,
    ) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ state
    def _init_state(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        """Fill in whatever state ``p`` lacks (fresh params, or groups loaded from torch)."""
        state = self.state[p]
        for key, value in self._scalar_defaults.items():  # before the buffers: may look at them
            if state.get(key) is None:
                state[key] = torch.full((), self._initial_scalar(key, value, state), dtype=torch.float32, device=p.device)
        for key in self._buffer_keys(group):
            if state.get(key) is None:
                state[key] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)

    def _initial_scalar(self, key: str, default: float, state: dict[str, Any]) -> float:
        return default

    def _invalidate(self) -> None:
        self._groups = {}
        self._norm_plans = {}
        self._layout_version += 1

    def _validate_group(self, group: dict[str, Any], gi: int) -> None:
        """Check a group's hyperparameters (groups passed as dicts bypass ``__init__``'s checks)."""

    def _validate_param(self, p: torch.Tensor, gi: int, pi: int) -> None:
        where = f"param {pi} of param group {gi}"
        p, g = _distributed.local_param_and_grad(p, where)
        self._check_param_tensor(p, where)
        if g is not None:
            self._validate_grad(p, g, where)

    @staticmethod
    def _check_param_tensor(p: torch.Tensor, where: str) -> None:
        """What the kernels need of a param itself: at construction, add_param_group and step."""
        p = _distributed.local(p)
        dtype_code(p.dtype, where)
        device_index(p.device)
        if p.is_sparse:
            raise TypeError(f"{where} is sparse; playbook's optimizers take dense params")
        if not _dense(p):
            raise ValueError(
                f"{where} is not contiguous (shape {tuple(p.shape)}, stride {p.stride()}); "
                "make it contiguous before creating the optimizer"
            )

    @staticmethod
    def _validate_grad(p: torch.Tensor, g: torch.Tensor, where: str) -> None:
        if g.is_sparse or g.layout != torch.strided:
            raise TypeError(
                f"grad of {where} is sparse (layout {g.layout}); playbook's optimizers take dense grads "
                "(use torch.optim.SparseAdam for sparse embeddings)"
            )
        if g.is_complex():
            raise TypeError(f"grad of {where} is complex ({g.dtype}); playbook's kernels take real dtypes")
        if g.shape != p.shape or g.dtype != p.dtype or g.device != p.device:
            raise ValueError(
                f"grad of {where} has shape {tuple(g.shape)}, dtype {g.dtype}, device {g.device}, but its param "
                f"has shape {tuple(p.shape)}, dtype {p.dtype}, device {p.device}"
            )
        if g.stride() != p.stride() and not (g.is_contiguous() and p.is_contiguous()):
            raise ValueError(
                f"grad of {where} has stride {g.stride()} but its param has stride {p.stride()}; "
                "playbook's kernels need grads laid out like their params (call .contiguous() on both)"
            )

    def _build_group(self, gi: int, group: dict[str, Any]) -> _GroupCache:
        params = group["params"]
        self._validate_group(group, gi)
        for pi, p in enumerate(params):  # validate everything before touching any state
            self._validate_param(p, gi, pi)
        by_device: dict[torch.device, list[torch.Tensor]] = {}
        for p in params:
            by_device.setdefault(p.device, []).append(p)
        for device in by_device:  # can this build's kernels run there? (playbook/_cuda.py)
            if device.type == "cuda":
                require_kernels(device_index(device))
        devices = []
        for device, ps in by_device.items():
            with_state, stateless = [], []
            for p in ps:
                if self.state.get(p) or p.grad is not None:
                    self._init_state(p, group)
                    with_state.append(p)
                else:
                    stateless.append(p)
            dtensor = any(_distributed.is_dtensor(p) for p in with_state)
            states = [
                _distributed.local_state(p, self.state[p], self._buffer_keys(group)) for p in with_state
            ]
            locals_ = _distributed.local_tensors(with_state)
            numels = [p.numel() for p in locals_]
            dtypes = [dtype_code(p.dtype, "param") for p in locals_]
            for p, st in zip(locals_, states):
                for key in self._buffer_keys(group):
                    if st[key].numel() == 1 and p.numel() == 0:
                        continue  # an empty shard's stand-in (see _distributed._non_null)
                    self._check_buffer(p, key, st[key])
            plan = self._make_plan(device_index(device), numels, dtypes, states, group)
            devices.append(_DevicePlan(
                device, with_state, stateless, _C.PtrList([p.data_ptr() for p in locals_]), numels, dtypes, plan,
                self._buffer_keys(group), all(p.is_contiguous() for p in locals_), dtensor,
            ))
        cache = _GroupCache(params, len(params), devices)
        self._groups[gi] = cache
        self._norm_plans = {}
        self._layout_version += 1
        return cache

    @staticmethod
    def _check_buffer(p: torch.Tensor, key: str, buf: Any) -> None:
        if (
            not isinstance(buf, torch.Tensor) or buf.shape != p.shape or buf.dtype != torch.float32
            or buf.device != p.device or buf.stride() != p.stride()
        ):
            found = (
                f"shape {tuple(buf.shape)}, dtype {buf.dtype}, device {buf.device}"
                if isinstance(buf, torch.Tensor) else f"type {type(buf).__name__}"
            )
            raise ValueError(
                f"optimizer state {key!r} of a param of shape {tuple(p.shape)} on {p.device} has "
                f"{found}; expected float32 laid out like the param"
            )

    def _needs_build(self, gi: int, group: dict[str, Any]) -> bool:
        """Whether group ``gi``'s plans must be rebuilt (new params, state or grads).

        A param whose storage moved is found by ``_prepare_group`` (the pointer check rides on
        the grad pointer pass), except for DTensor params, checked here.
        """
        cache = self._groups.get(gi)
        if cache is None or cache.params is not group["params"] or cache.length != len(group["params"]):
            return True
        keys = self._buffer_keys(group)
        for dp in cache.devices:
            if keys != dp.buffer_keys or (dp.stateless and any(p.grad is not None for p in dp.stateless)):
                return True
            if dp.dtensor and [p.data_ptr() for p in dp.params] != dp.param_ptrs.tolist():
                return True
        return False

    def _check_build(self, gi: int, group: dict[str, Any]) -> None:
        """Every check ``_build_group`` makes, writing nothing (NOTE: [All-or-nothing step])."""
        params = group["params"]
        for pi, p in enumerate(params):
            self._validate_param(p, gi, pi)
        keys = self._buffer_keys(group)
        for p in params:
            st = self.state.get(p)
            if st:
                for key in keys:
                    if st.get(key) is not None:
                        self._check_buffer(p, key, st[key])

    def _grad_ptrs(self, dp: _DevicePlan, grads: list[torch.Tensor | None]) -> list[int]:
        if dp.all_contiguous:
            try:
                ptrs = list(map(_data_ptr, grads))  # TypeError for a missing (None) grad
                if all(map(_is_contiguous, grads)):
                    return ptrs
            except (TypeError, AttributeError, RuntimeError):
                pass
        # Slow path: missing grads (0: not updated this step), or something to reject clearly.
        for p, g in zip(_distributed.local_tensors(dp.params) if dp.dtensor else dp.params, grads):
            if g is not None:
                self._validate_grad(p, g, f"a param of shape {tuple(p.shape)}")
        return [ptr(g) for g in grads]

    def _prepare_group(self, gi: int, group: dict[str, Any]) -> list[tuple[_DevicePlan, Any, Any]] | None:
        """(device plan, param pointers, grad pointers) per device of a group whose plans are
        current, or None if a param's storage moved since the plans were built (rebuild first).

        Writes nothing; raises the clear error for a grad the kernels cannot take.
        """
        out = []
        for dp in self._groups[gi].devices:
            if not dp.params:  # no param of this group/device has had a grad: nothing to update
                continue
            gptrs = None
            if not dp.dtensor:
                try:  # one C pass (NOTE: [Step pointers]): False (a param moved), None (a grad is
                    # missing or not contiguous: the checked path below) or the grad pointers
                    gptrs = _STEP_POINTERS.collect(dp.params, dp.param_ptrs)
                except (TypeError, AttributeError, RuntimeError):  # the checked path raises the clear error
                    gptrs = None if list(map(_data_ptr, dp.params)) == dp.param_ptrs.tolist() else False
                if gptrs is False:
                    return None
            if gptrs is None:
                grads = _distributed.local_grads(dp.params) if dp.dtensor else list(map(_grad_of, dp.params))
                gptrs = self._grad_ptrs(dp, grads)
            out.append((dp, dp.param_ptrs, gptrs))
        return out

    # ------------------------------------------------------------------ step
    @staticmethod
    def profile_hook_step(func: Callable[..., Any]) -> Callable[..., Any]:
        """torch's step wrapper (profiler range, step hooks), run eagerly under ``torch.compile``.

        NOTE: [Step under torch.compile]
        The fused step hands data pointers to compiled kernels, which dynamo cannot trace; left to
        itself it graph-breaks inside the step and recompiles ``_init_state`` per param until the
        recompile limit. So the whole step (hooks included) is excluded from compilation: a
        compiled training loop runs its compiled graphs around one eager, fused step.
        """
        return torch.compiler.disable(_profile_hook_step(func))

    def _grad_norm_state(self, device: torch.device) -> _GradNormState:
        gn = self._gn
        if gn is None:
            gn = _GradNormState(
                values=torch.zeros(_C.kStepValues, dtype=torch.float32, device=device),
                counters=torch.zeros(_C.kCounters, dtype=torch.int64, device=device),
                history=torch.full((self._history,), float("nan"), dtype=torch.float32, device=device),
            )
            self._gn = gn
        elif gn.values.device != device:
            gn = _GradNormState(gn.values.to(device), gn.counters.to(device), gn.history.to(device))
            self._gn = gn
        return gn

    def _norm_plan(self, device: torch.device, dps: list[_DevicePlan]) -> _NormPlan:
        np_ = self._norm_plans.get(device)
        if np_ is not None and np_.version == self._layout_version:
            return np_
        numels = list(chain.from_iterable(dp.numels for dp in dps))
        dtypes = list(chain.from_iterable(dp.dtypes for dp in dps))
        plan = _C.GradNormPlan(device_index(device), numels, dtypes)
        nbytes = plan.scratch_bytes()
        scratch = torch.empty(nbytes, dtype=torch.uint8, device=device) if nbytes else None
        np_ = _NormPlan(
            version=self._layout_version,
            plan=plan,
            per_tensor=torch.zeros(len(numels), dtype=torch.float64, device=device),
            total=torch.zeros(1, dtype=torch.float64, device=device),
            scratch=scratch,
        )
        self._norm_plans[device] = np_
        return np_

    @staticmethod
    def _primary_device(devices: list[torch.device], found_inf: torch.Tensor | None) -> torch.device:
        """Where the global norm is finalized: NOTE: [Primary device].

        NOTE: [Primary device]
        The CUDA device of the GradScaler's ``found_inf`` when it holds params (the flag is then
        written in place), else the first CUDA device, else the CPU. With CPU and CUDA params, the
        CUDA partial totals must never be read by the host before their kernels finish: so the CPU
        total goes to the CUDA device (a host-to-device copy, safe without a sync), never the
        other way round, and the step values reach the CPU params by a synchronous copy. A flag
        on another device is copied to the primary and written back after the finalize (stream
        ordered between CUDA devices; synchronous for a CPU flag with CUDA params).
        """
        if found_inf is None and len(devices) == 1:
            return devices[0]
        if found_inf is not None and found_inf.device.type == "cuda" and found_inf.device in devices:
            return found_inf.device
        return next((d for d in devices if d.type == "cuda"), devices[0])

    @staticmethod
    def _lr_arg(lr: Any, device: torch.device) -> tuple[float, int, torch.Tensor | None]:
        """(lr as float, pointer to a float32 lr on ``device`` or 0, tensor to keep alive)."""
        if not isinstance(lr, torch.Tensor):
            return float(lr), 0, None
        if lr.device == device:
            t = lr if lr.dtype == torch.float32 else lr.to(torch.float32)
            return 0.0, t.data_ptr(), t
        if lr.device.type == "cpu":
            return float(lr), 0, None  # host memory: no device sync
        if device.type == "cpu":
            # A CUDA lr for CPU params: the CPU kernel reads it at once, so the copy must have
            # landed (a synchronous copy; non_blocking would hand the kernel unwritten memory).
            t = lr.to(device=device, dtype=torch.float32)
            return 0.0, t.data_ptr(), t
        t = lr.to(device=device, dtype=torch.float32, non_blocking=True)
        return 0.0, t.data_ptr(), t

    def _prepare_all(self) -> list[tuple[dict[str, Any], tuple[_DevicePlan, Any, Any]]]:
        """(group, (device plan, param pointers, grad pointers)) of every group, plans built first.

        NOTE: [All-or-nothing step]
        Every check that can fail runs before the first write (state created by a plan build, the
        norm counters, any param): hyperparameters of every group (``step``), then each group either
        needs no rebuild (its grad pointers are collected, and checked, without writing) or is
        checked in full first and built only once every group has passed. Groups (or devices of a
        group) none of whose params has had a grad are skipped, as torch does.
        """
        prepared: dict[int, list] = {}
        to_build = []
        for gi, group in enumerate(self.param_groups):
            # Plans current: collecting (and checking) the grad pointers writes nothing.
            items = None if self._needs_build(gi, group) else self._prepare_group(gi, group)
            if items is None:
                self._check_build(gi, group)
                to_build.append(gi)
            else:
                prepared[gi] = items
        for gi in to_build:
            self._build_group(gi, self.param_groups[gi])
            items = self._prepare_group(gi, self.param_groups[gi])
            if items is None:  # the pointers were taken by the build just now
                raise RuntimeError("playbook: param storage changed while the optimizer step was being prepared")
            prepared[gi] = items
        return [(group, item) for gi, group in enumerate(self.param_groups) for item in prepared[gi]]

    def _sumsq(self, work: list, threads: int) -> tuple[_LastStep, list[torch.device]]:
        """Launch the sum of squares of every collected grad, per device (in ``work`` order)."""
        per_device: dict[torch.device, tuple[list[_DevicePlan], list]] = {}
        for _, (dp, _, gptrs) in work:
            dps, parts = per_device.setdefault(dp.device, ([], []))
            dps.append(dp)
            parts.append(gptrs)
        last = _LastStep()
        for device, (dps, parts) in per_device.items():
            ptrs = _concat_ptrs(parts)
            np_ = self._norm_plan(device, dps)
            scratch = np_.scratch
            np_.plan.sumsq(
                ptrs, np_.per_tensor.data_ptr(), np_.total.data_ptr(), threads,
                ptr(scratch), 0 if scratch is None else scratch.numel(), stream_handle(device),
            )
            last.norm_plans.append((np_, dps, ptrs))
        return last, list(per_device)

    def _streamed_sumsq(self, threads: int) -> tuple[list, _LastStep, list[torch.device]] | None:
        """``_prepare_all`` + ``_sumsq`` in one pass when every param with state is a CPU tensor and
        every plan is current: the grads are reduced while their pointers are being collected
        (NOTE: [Streamed sum of squares]). None when that does not apply, a param moved, or a grad
        is missing, not contiguous or rejected: nothing was written, and the checked path runs."""
        work, dps = [], []
        for gi, group in enumerate(self.param_groups):
            for dp in self._groups[gi].devices:
                if not dp.params:
                    continue
                if dp.dtensor or dp.device.type != "cpu":
                    return None
                work.append(group)
                dps.append(dp)
        if not dps:
            return None
        device = dps[0].device
        np_ = self._norm_plan(device, dps)
        try:
            gptrs = np_.plan.sumsq_collect(
                _STEP_POINTERS, [(dp.params, dp.param_ptrs) for dp in dps],
                np_.per_tensor.data_ptr(), np_.total.data_ptr(), threads,
            )
        except (TypeError, AttributeError, RuntimeError):  # the checked path raises the clear error
            return None
        if not isinstance(gptrs, list):
            return None
        last = _LastStep()
        last.norm_plans.append((np_, dps, _concat_ptrs(gptrs)))
        return [(g, (dp, dp.param_ptrs, gp)) for g, dp, gp in zip(work, dps, gptrs)], last, [device]

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one fused optimization step (global-norm clip, skip on non-finite, update).

        Args:
            closure: A closure that reevaluates the model and returns the loss (optional).

        Returns:
            The closure's loss, if a closure was given.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # torch.no_grad() for the step itself, without the decorator's per-call context object
        # (~1.5 us of a ~90 us step over 400 small tensors).
        grad_enabled = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)
        try:
            self._fused_step()
        finally:
            torch._C._set_grad_enabled(grad_enabled)
        return loss

    def _fused_step(self) -> None:
        """The body of ``step`` (under no_grad): norm, finalize, updates."""
        # Every check that can fail runs before the first write (NOTE: [All-or-nothing step]).
        for gi, group in enumerate(self.param_groups):
            self._validate_group(group, gi)
        threads = torch.get_num_threads()
        # 1. Sum of squares per device, over every grad of the optimizer: on the CPU while the grad
        #    pointers are being collected when every plan is current (NOTE: [Streamed sum of
        #    squares] in csrc/cpu/norm.cpp), else after collecting them (and building plans).
        streamed = None
        for gi, group in enumerate(self.param_groups):
            if self._needs_build(gi, group):
                break
        else:
            streamed = self._streamed_sumsq(threads)
        if streamed is None:
            work = self._prepare_all()
            if not work:
                self.__dict__.pop("_playbook_found_inf", None)  # nothing ran: no inf flag of this step may linger
                return
            last, per_device = self._sumsq(work, threads)
        else:
            work, last, per_device = streamed
        totals = [np_.total for np_, _, _ in last.norm_plans]

        # 2. Global norm, clip factor and skip flag on the primary device (_primary_device).
        caller_found_inf = self.__dict__.pop("_playbook_found_inf", None)
        if caller_found_inf is None:
            caller_found_inf = getattr(self, "found_inf", None)
        primary = self._primary_device(list(per_device), caller_found_inf)
        total = None
        for device, t in zip(per_device, totals):  # host -> device or device -> device: no host read
            t = t if device == primary else t.to(primary, non_blocking=True)
            total = t if total is None else total + t
        total = _distributed.reduce_total(self, total, last.norm_plans, primary)  # over ranks, if sharded
        gn = self._grad_norm_state(primary)
        grad_scale = getattr(self, "grad_scale", None)
        if grad_scale is not None:
            grad_scale = grad_scale.to(device=primary, dtype=torch.float32)
        found_inf = caller_found_inf
        if found_inf is not None and (found_inf.device != primary or found_inf.dtype != torch.float32):
            found_inf = found_inf.to(device=primary, dtype=torch.float32)
        last.grad_scale = grad_scale
        max_norm = self._max_grad_norm if self._max_grad_norm is not None else 0.0
        _C.finalize_grad_norm(
            device_index(primary), total.data_ptr(), max_norm, self.skip_nonfinite,
            ptr(grad_scale), ptr(found_inf), gn.values.data_ptr(), gn.counters.data_ptr(),
            gn.history.data_ptr(), gn.history.numel(), stream_handle(primary),
        )
        if found_inf is not caller_found_inf:
            # The scaler reads its own tensor: write the flag back to it, on its device, in
            # stream order (a host destination is written synchronously).
            caller_found_inf.copy_(found_inf, non_blocking=caller_found_inf.device.type != "cpu")

        # 3. Fused updates per (group, device), reading the step values on their device.
        values_on = {primary: gn.values}
        for group, (dp, pptrs, gptrs) in work:
            values = values_on.get(dp.device)
            if values is None:
                values = gn.values.to(dp.device, non_blocking=dp.device.type != "cpu")
                values_on[dp.device] = values
            lr, lr_ptr, _keep = self._lr_arg(group["lr"], dp.device)
            self._run_plan(dp, group, pptrs, gptrs, lr, lr_ptr, values.data_ptr(), threads, stream_handle(dp.device))
        self._last = last

    # ------------------------------------------------------------------ statistics (host reads)
    def grad_norms(self, per_tensor: bool = False) -> torch.Tensor:
        """Unclipped global gradient norms, read from the device only when called.

        Args:
            per_tensor: If True, return the norm of every param's gradient at the last step
                instead, in the order of ``[p for g in param_groups for p in g["params"]]``
                (NaN for params that had no gradient at that step).

        Returns:
            A 1-D float32 CPU tensor: the global norm of each of the most recent ``history``
            steps, oldest first (skipped steps included: their norm is NaN or inf).
        """
        if per_tensor:
            return self._per_tensor_norms()
        if self._gn is None:
            return torch.zeros(0, dtype=torch.float32)
        counters = self._gn.counters.to("cpu")
        hist = self._gn.history.to("cpu")
        seen = int(counters[_C.kStepsSeenIdx])
        size = hist.numel()
        if seen <= size:
            return hist[:seen].clone()
        start = seen % size
        return torch.cat([hist[start:], hist[:start]])

    def _per_tensor_norms(self) -> torch.Tensor:
        all_params = [p for g in self.param_groups for p in g["params"]]
        out = torch.full((len(all_params),), float("nan"), dtype=torch.float64)
        index = {id(p): i for i, p in enumerate(all_params)}
        scale = 1.0 if self._last.grad_scale is None else float(self._last.grad_scale.to("cpu"))
        for np_, dps, ptrs in self._last.norm_plans:
            params = chain.from_iterable(dp.params for dp in dps)
            sumsq = np_.per_tensor.to("cpu")
            for j, (p, gp) in enumerate(zip(params, ptrs)):
                if gp != 0:
                    out[index[id(p)]] = math.sqrt(float(sumsq[j])) / scale
        return out.to(torch.float32)

    def _counter(self, idx: int) -> int:
        if self._gn is None:
            return 0
        return int(self._gn.counters.to("cpu")[idx])

    @property
    def skipped_steps(self) -> int:
        """Steps skipped because the gradient norm was NaN/inf (or GradScaler found an inf)."""
        return self._counter(_C.kSkippedIdx)

    @property
    def steps_seen(self) -> int:
        """Steps whose gradient norm was recorded (skipped ones included)."""
        return self._counter(_C.kStepsSeenIdx)

    def clip_fraction(self) -> float:
        """Share of steps (skipped ones excluded) whose global norm exceeded ``max_grad_norm``.

        Playbook 7.8: if this is above 0.5 the threshold is extremely aggressive
        (see ``playbook.stats.check_clipping``).
        """
        if self._gn is None:
            return 0.0
        c = self._gn.counters.to("cpu")
        applied = int(c[_C.kStepsSeenIdx]) - int(c[_C.kSkippedIdx])
        return int(c[_C.kClippedIdx]) / applied if applied > 0 else 0.0

    # ------------------------------------------------------------------ state dicts
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        if self._gn is not None:
            sd["grad_norm_stats"] = {
                "counters": self._gn.counters.to("cpu", copy=True),
                "history": self._gn.history.to("cpu", copy=True),
            }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict of this class or of the matching ``torch.optim`` class.

        Moment buffers stay float32 whatever the param dtype (torch would cast them to the
        param dtype); ``step`` and ``mu_product`` become float32 scalars on the param's device.
        Load pre-hooks (``register_load_state_dict_pre_hook``) see the dict first, as in torch,
        and what they return is what gets loaded; post-hooks run once the float32 buffers are
        in place.
        """
        # torch applies the pre-hooks inside Optimizer.load_state_dict and keeps their result to
        # itself; the float32 buffers below must come from that result (edited state, remapped
        # ids), so the hooks run here and torch's loader runs with none.
        state_dict = state_dict.copy()
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        state_dict = dict(state_dict)
        stats = state_dict.pop("grad_norm_stats", None)
        saved = state_dict["state"]
        params = list(chain.from_iterable(g["params"] for g in self.param_groups))
        saved_ids = list(chain.from_iterable(g["params"] for g in state_dict["param_groups"]))
        keys_of = {}
        for g in state_dict["param_groups"]:
            keys = self._buffer_keys({**self._group_defaults(), **g})
            keys_of.update((i, keys) for i in g["params"])
        for saved_id, p in zip(saved_ids, params):  # before anything is written
            src = saved.get(saved_id, {})
            for key in keys_of[saved_id]:
                value = src.get(key)
                if isinstance(value, torch.Tensor) and value.shape != p.shape:
                    raise ValueError(
                        f"state {key!r} has shape {tuple(value.shape)}, but its param has shape {tuple(p.shape)}"
                    )
        hooks = self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks
        self._optimizer_load_state_dict_pre_hooks = type(hooks[0])()
        self._optimizer_load_state_dict_post_hooks = type(hooks[1])()
        try:
            super().load_state_dict(state_dict)
        finally:
            self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks = hooks
        for saved_id, p in zip(saved_ids, params):
            st = self.state.get(p)
            if not st:
                continue
            src = saved.get(saved_id, {})
            group = next(g for g in self.param_groups if any(q is p for q in g["params"]))
            for key in self._buffer_keys(group):
                value = src.get(key)
                if isinstance(value, torch.Tensor):
                    buf = torch.empty_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
                    st[key] = buf.copy_(value)
                elif key in st and st[key] is None:
                    del st[key]
            for key in self._scalar_defaults:
                value = src.get(key)
                if value is None:
                    st.pop(key, None)
                    continue
                st[key] = torch.as_tensor(value, dtype=torch.float32).reshape(()).to(p.device).clone()
            self._init_state(p, group)
        first = next(chain.from_iterable(g["params"] for g in self.param_groups), None)
        if stats is not None and first is not None:
            gn = self._gn if self._gn is not None else self._grad_norm_state(first.device)
            self._restore_stats(gn, stats)
        self._invalidate()
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    @staticmethod
    def _restore_stats(gn: _GradNormState, stats: dict[str, Any]) -> None:
        history = stats["history"]
        gn.counters.copy_(stats["counters"])
        if history.numel() == gn.history.numel():
            gn.history.copy_(history)
        else:  # another capacity: keep the most recent norms, in ring order for the new size
            seen = int(stats["counters"][_C.kStepsSeenIdx])
            size = history.numel()
            ordered = history[:seen] if seen <= size else torch.cat([history[seen % size:], history[:seen % size]])
            gn.history.fill_(float("nan"))
            for k in range(max(seen - ordered.numel(), seen - gn.history.numel()), seen):
                gn.history[k % gn.history.numel()] = ordered[k - (seen - ordered.numel())]
