"""Ghost batch norm: batch-norm statistics over fixed-size "ghost" batches (playbook 6.4).

The playbook ("Batch normalization implementation details") recommends computing batch-norm
statistics over about 64 examples whatever the total batch size, so that changing the batch size
does not change the model (3.3), and warns that implementations often get the case "per-device
batch > virtual batch" wrong. Here the batch is split into contiguous ghost batches
``x.split(virtual_batch_size)`` (the last one may be smaller), and every output, gradient,
``running_mean``, ``running_var`` and ``num_batches_tracked`` equals looping ``nn.BatchNorm*d``
over those ghost batches in order and concatenating:

    y[i] = (x[i] - mean_g) / sqrt(var_g + eps) * weight + bias,  i in ghost batch g,

with ``mean_g``/``var_g`` (biased) per (ghost batch, channel) over the slice and all spatial
positions, and the running-stat EMA applied once per ghost batch, in order, with the unbiased
variance (``num_batches_tracked`` counts ghost batches, so ``momentum=None`` matches the loop).

NOTE: [Ghost batch norm dispatch]
Training-mode statistics go through the compiled kernels (csrc/cpu/ghost_bn.cpp) for float32,
bfloat16 and float16 input with float32 weight, bias and running stats, in contiguous or
channels_last / channels_last_3d memory (output in the input's format). Input in any other
memory layout is copied to contiguous first (the output is then contiguous). Anything the kernels
do not take (float64 input, non-float32 parameters, a device without a kernel) runs the
reference loop itself (``F.batch_norm`` over ``x.split(virtual_batch_size)``), which is the
definition. Eval mode with running stats is ``F.batch_norm``, exactly as in ``nn.BatchNorm*d``.

References:
    Hoffer, Hubara, Soudry. Train longer, generalize better: closing the generalization gap in
    large batch training of neural networks. NeurIPS 2017.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from playbook import _C
from playbook._tensors import DTYPE_CODES, device_index, stream_handle

__all__ = [
    "GhostBatchNorm1d",
    "GhostBatchNorm2d",
    "GhostBatchNorm3d",
    "convert_to_ghost_bn",
    "sync_running_stats",
]


def _check_vbs(virtual_batch_size: Any) -> int:
    if isinstance(virtual_batch_size, bool) or not isinstance(virtual_batch_size, int):
        raise ValueError(f"Invalid virtual_batch_size: {virtual_batch_size!r} (expected an int >= 1)")
    if virtual_batch_size < 1:
        raise ValueError(f"Invalid virtual_batch_size: {virtual_batch_size} (expected an int >= 1)")
    return virtual_batch_size


def _verify_ghost_size(x: torch.Tensor, count: int, samples: int) -> None:
    """nn.BatchNorm's error for a (ghost) batch with one value per channel."""
    if count == 1:
        size = torch.Size([samples, *x.shape[1:]])
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {size}")


class _Layout:
    """The (n, c, s) view of an input and its memory order (NOTE: [Ghost batch norm layout])."""

    __slots__ = ("n", "c", "s", "channels_last", "memory_format")

    def __init__(self, x: torch.Tensor) -> None:
        self.n = x.shape[0]
        self.c = x.shape[1]
        self.s = math.prod(x.shape[2:])
        if self.s == 1 or x.is_contiguous():
            self.channels_last = self.s == 1
            self.memory_format = torch.contiguous_format
        elif x.dim() == 4:
            self.channels_last = True
            self.memory_format = torch.channels_last
        else:
            self.channels_last = True
            self.memory_format = torch.channels_last_3d

    @staticmethod
    def prepare(x: torch.Tensor) -> torch.Tensor:
        """x itself if the kernels can read its memory, else a contiguous copy."""
        if x.is_contiguous():
            return x
        if math.prod(x.shape[2:]) == 1 and x.dim() > 2:
            return x.contiguous()
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            return x
        if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
            return x
        return x.contiguous()

    def args(self, vbs: int) -> tuple[int, int, int, int, bool]:
        return self.n, self.c, self.s, vbs, self.channels_last


def _kernel_ok(x: torch.Tensor, *tensors: Optional[torch.Tensor]) -> bool:
    if x.dtype not in DTYPE_CODES:
        return False
    if x.device.type != "cpu" and not (x.device.type == "cuda" and _C.cuda_compiled()):
        return False
    for t in tensors:
        if t is not None and (t.dtype != torch.float32 or t.device != x.device or not t.is_contiguous()):
            return False
    return True


def _rank_span(process_group: Any, n: int, vbs: int) -> Optional[tuple[int, int, int, int]]:
    """(rank, world, first, end) of this rank's cross-rank ghost batch, or None when local."""
    if process_group is None:
        return None
    import torch.distributed as dist

    world = dist.get_world_size(process_group)
    if world == 1 or n >= vbs:
        return None
    if vbs % n != 0:
        raise ValueError(
            f"Invalid per-rank batch size {n} for virtual_batch_size={vbs} with a process_group: "
            "a per-rank batch smaller than the virtual batch size must divide it"
        )
    rank = dist.get_rank(process_group)
    k = vbs // n
    first = rank // k * k
    return rank, world, first, min(first + k, world)


def _gather_rows(packed: torch.Tensor, process_group: Any) -> list[torch.Tensor]:
    """Every rank's ``packed`` (same shape, same device: gloo on the CPU, NCCL on CUDA)."""
    import torch.distributed as dist

    world = dist.get_world_size(process_group)
    out = [torch.empty_like(packed) for _ in range(world)]
    dist.all_gather(out, packed, group=process_group)
    return out


def _merge_moments(rows: list[torch.Tensor], c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Chan et al.'s merge, in rank order, of rows ``[count, mean[c], m2[c]]`` (float64).

    Torch ops on the rows' device (no host read, so NCCL on CUDA needs no synchronization):
    ``delta = mean_b - mean_a``, ``mean_a += delta * (n_b / n)``,
    ``m2_a += m2_b + delta * delta * (n_a * n_b / n)`` with ``n = n_a + n_b``.
    """
    n, mean, m2 = rows[0][:1], rows[0][1 : 1 + c], rows[0][1 + c :]
    for row in rows[1:]:
        n_b, mean_b, m2_b = row[:1], row[1 : 1 + c], row[1 + c :]
        total = n + n_b
        delta = mean_b - mean
        mean = mean + delta * (n_b / total)
        m2 = m2 + (m2_b + delta * delta * (n * n_b / total))
        n = total
    return mean, m2


def _check_equal_counts(rows: list[torch.Tensor], x: torch.Tensor) -> None:
    """The ranks of a cross-rank ghost batch must have the same per-rank batch (CPU: checked here,
    on every rank alike since every rank holds every row; CUDA: documented, not checked, because
    reading the counts would synchronize the host)."""
    if x.device.type != "cpu":
        return
    counts = [int(r[0]) for r in rows]
    if len(set(counts)) != 1:
        per_rank = [k // math.prod(x.shape[2:]) for k in counts]
        raise ValueError(
            f"GhostBatchNorm with a process_group needs the same per-rank batch size on every rank, "
            f"got per-rank batch sizes {per_rank}"
        )


class _GhostBatchNormFunction(torch.autograd.Function):
    """Training-mode ghost batch norm through the compiled kernels (NOTE: [Ghost batch norm dispatch])."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        weight: Optional[torch.Tensor],
        bias: Optional[torch.Tensor],
        running_mean: Optional[torch.Tensor],
        running_var: Optional[torch.Tensor],
        eps: float,
        momentum: Optional[float],
        num_batches_tracked: int,
        vbs: int,
        process_group: Any,
    ) -> torch.Tensor:
        x = _Layout.prepare(x)
        lay = _Layout(x)
        dev = device_index(x.device)
        stream = stream_handle(x.device)
        threads = torch.get_num_threads()
        dtype = DTYPE_CODES[x.dtype]
        span = _rank_span(process_group, lay.n, vbs)
        local_vbs = lay.n if span is not None else vbs
        G = -(-lay.n // local_vbs)
        # The saved statistics in one [3, G, C] float32 tensor: mean hi, mean lo, invstd.
        saved = torch.empty(3, G, lay.c, dtype=torch.float32, device=x.device)
        save_mean = saved.data_ptr()
        save_invstd = save_mean + 8 * G * lay.c
        y = torch.empty_like(x)
        w_ptr = 0 if weight is None else weight.data_ptr()
        b_ptr = 0 if bias is None else bias.data_ptr()
        rm_ptr = 0 if running_mean is None else running_mean.data_ptr()
        rv_ptr = 0 if running_var is None else running_var.data_ptr()
        mom = -1.0 if momentum is None else float(momentum)
        if span is None and x.device.type == "cpu":  # one call: stats, running stats, normalize
            # mean/m2 pointers 0: the kernel allocates its [G, C] double scratch itself.
            _C.ghost_bn_forward_train(
                dev, *lay.args(vbs), dtype, x.data_ptr(), y.data_ptr(), w_ptr, b_ptr, float(eps), mom,
                num_batches_tracked, rm_ptr, rv_ptr, 0, 0, save_mean, save_invstd, threads, stream,
            )  # fmt: skip
            _GhostBatchNormFunction._save(ctx, x, weight, saved, lay, vbs, None, None, None)
            return y
        f64 = dict(dtype=torch.float64, device=x.device)
        mean = torch.empty(G, lay.c, **f64)
        m2 = torch.empty(G, lay.c, **f64)
        _C.ghost_bn_stats(dev, *lay.args(local_vbs), dtype, x.data_ptr(), mean.data_ptr(), m2.data_ptr(), threads, stream)
        count = local_vbs * lay.s
        count_last = (lay.n - (G - 1) * local_vbs) * lay.s
        if span is not None:
            # Cross-rank ghost batch: Chan's merge of the ranks' (count, mean, m2) in rank order,
            # in float64 (counts too: exact to 2**53), with torch ops on x's device.
            packed = torch.cat([torch.full((1,), float(lay.n * lay.s), **f64), mean.view(-1), m2.view(-1)])
            rows = _gather_rows(packed, process_group)
            _check_equal_counts(rows, x)
            merged_mean, merged_m2 = _merge_moments(rows[span[2] : span[3]], lay.c)
            mean.view(-1).copy_(merged_mean)
            m2.view(-1).copy_(merged_m2)
            count = count_last = lay.n * lay.s * (span[3] - span[2])
            _verify_ghost_size(x, count, vbs)
        _C.ghost_bn_finalize(
            dev, G, lay.c, mean.data_ptr(), m2.data_ptr(), count, count_last, float(eps), mom,
            num_batches_tracked, rm_ptr, rv_ptr, save_mean, save_invstd, stream,
        )  # fmt: skip
        _C.ghost_bn_apply(
            dev, *lay.args(local_vbs), dtype, x.data_ptr(), y.data_ptr(), save_mean, save_invstd, w_ptr, b_ptr,
            threads, stream,
        )  # fmt: skip
        _GhostBatchNormFunction._save(ctx, x, weight, saved, lay, local_vbs, span, process_group, (count, count_last))
        return y

    @staticmethod
    def _save(ctx: Any, x, weight, saved, lay, vbs, span, process_group, counts) -> None:
        ctx.save_for_backward(x, weight, saved)
        ctx.layout = lay
        ctx.local_vbs = vbs
        ctx.counts = counts  # elements per ghost batch (all but the last, the last); phased path
        ctx.span = span
        ctx.process_group = process_group

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:  # type: ignore[override]
        x, weight, saved = ctx.saved_tensors
        lay: _Layout = ctx.layout
        dy = dy.contiguous(memory_format=lay.memory_format)
        dev = device_index(x.device)
        stream = stream_handle(x.device)
        threads = torch.get_num_threads()
        dtype = DTYPE_CODES[x.dtype]
        if dy.dtype != x.dtype:
            dy = dy.to(x.dtype)
        G = saved.shape[1]
        save_mean = saved.data_ptr()
        save_invstd = save_mean + 8 * G * lay.c
        args = (dev, *lay.args(ctx.local_vbs), dtype)
        need_x, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        need_w = need_w and weight is not None
        dx = torch.empty_like(x) if need_x else None
        grad_w = torch.empty(lay.c, dtype=torch.float32, device=x.device) if need_w else None
        grad_b = torch.empty(lay.c, dtype=torch.float32, device=x.device) if need_b else None
        w_ptr = 0 if weight is None else weight.data_ptr()
        if ctx.span is None and x.device.type == "cpu":  # one call: sums, dx, parameter grads
            # sdy/sdyx pointers 0: the kernel allocates its [G, C] double scratch itself.
            _C.ghost_bn_backward_train(
                *args, dy.data_ptr(), x.data_ptr(), save_mean, save_invstd, w_ptr, 0, 0,
                0 if dx is None else dx.data_ptr(), 0 if grad_w is None else grad_w.data_ptr(),
                0 if grad_b is None else grad_b.data_ptr(), threads, stream,
            )  # fmt: skip
            return dx, grad_w, grad_b, None, None, None, None, None, None, None
        sdy = torch.empty(G, lay.c, dtype=torch.float64, device=x.device)
        sdyx = torch.empty_like(sdy)
        _C.ghost_bn_backward_reduce(*args, dy.data_ptr(), x.data_ptr(), save_mean, sdy.data_ptr(), sdyx.data_ptr(), threads, stream)
        if need_x:
            tot_dy, tot_dyx = sdy, sdyx
            if ctx.span is not None:
                rows = _gather_rows(torch.cat([sdy.view(-1), sdyx.view(-1)]), ctx.process_group)[ctx.span[2] : ctx.span[3]]
                acc = rows[0].clone()
                for row in rows[1:]:
                    acc += row
                tot_dy = acc[: lay.c].contiguous()
                tot_dyx = acc[lay.c :].contiguous()
            coefs = torch.empty(3, G, lay.c, dtype=torch.float32, device=x.device) if x.device.type == "cuda" else None
            _C.ghost_bn_backward_apply(
                *args, dy.data_ptr(), x.data_ptr(), save_mean, save_invstd, w_ptr,
                tot_dy.data_ptr(), tot_dyx.data_ptr(), ctx.counts[0], ctx.counts[1],
                0 if coefs is None else coefs.data_ptr(), dx.data_ptr(), threads, stream,
            )  # fmt: skip
        if need_w or need_b:
            _C.ghost_bn_param_grads(
                dev, G, lay.c, sdy.data_ptr(), sdyx.data_ptr(), save_invstd,
                0 if grad_w is None else grad_w.data_ptr(), 0 if grad_b is None else grad_b.data_ptr(), stream,
            )  # fmt: skip
        return dx, grad_w, grad_b, None, None, None, None, None, None, None


def _reference_loop(
    x: torch.Tensor,
    running_mean: Optional[torch.Tensor],
    running_var: Optional[torch.Tensor],
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    eps: float,
    momentum: Optional[float],
    num_batches_tracked: int,
    vbs: int,
) -> torch.Tensor:
    """The definition: F.batch_norm over x.split(vbs), EMA once per ghost batch."""
    outs = []
    for g, chunk in enumerate(x.split(vbs)):
        factor = momentum if momentum is not None else 1.0 / (num_batches_tracked + g + 1)
        outs.append(F.batch_norm(chunk, running_mean, running_var, weight, bias, True, factor, eps))
    return torch.cat(outs)


class _GhostBatchNorm(_BatchNorm):
    """Shared implementation of GhostBatchNorm1d/2d/3d (mixed into the nn.BatchNorm*d subclasses)."""

    virtual_batch_size: int

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: Optional[float] = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        virtual_batch_size: int = 64,
        process_group: Any = None,
    ) -> None:
        self.virtual_batch_size = _check_vbs(virtual_batch_size)
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.process_group = process_group

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, virtual_batch_size={self.virtual_batch_size}"

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        if input.shape[1] != self.num_features:
            raise ValueError(
                f"Expected input with {self.num_features} channels (dim 1), got shape {tuple(input.shape)}"
            )
        vbs = _check_vbs(self.virtual_batch_size)
        # Parameters and buffers read once each (nn.Module.__getattr__ is slow on the hot path).
        weight, bias = self.weight, self.bias
        running_mean, running_var, tracked = self.running_mean, self.running_var, self.num_batches_tracked
        bn_training = self.training or (running_mean is None and running_var is None)
        if not bn_training:
            return F.batch_norm(input, running_mean, running_var, weight, bias, False, 0.0, self.eps)
        update = self.training and self.track_running_stats
        if not update:
            running_mean = running_var = None
        momentum = self.momentum
        nbt0 = 0
        if update and tracked is not None:
            if momentum is None:
                nbt0 = int(tracked)  # host read, as nn.BatchNorm does for momentum=None
        elif momentum is None:
            momentum = 0.0  # nn.BatchNorm's factor when nothing is tracked
        n = input.shape[0]
        if n == 0:
            return F.batch_norm(input, running_mean, running_var, weight, bias, True, 0.0, self.eps)
        span = None if self.process_group is None else _rank_span(self.process_group, n, vbs)
        s = math.prod(input.shape[2:])
        if span is None:
            _verify_ghost_size(input, min(vbs, n) * s, min(vbs, n))
            last = n - (-(-n // vbs) - 1) * vbs
            _verify_ghost_size(input, last * s, last)
        num_ghost = 1 if span is not None else -(-n // vbs)
        if _kernel_ok(input, weight, bias, running_mean, running_var):
            out = _GhostBatchNormFunction.apply(
                input, weight, bias, running_mean, running_var, self.eps, momentum, nbt0, vbs,
                self.process_group if span is not None else None,
            )  # fmt: skip
        elif span is not None:
            raise TypeError(
                f"GhostBatchNorm with a process_group needs float32/bfloat16/float16 input on the CPU (or on "
                f"CUDA in a build with the CUDA kernels) and float32 parameters, got input {input.dtype} on "
                f"{input.device}"
            )
        else:
            out = _reference_loop(input, running_mean, running_var, weight, bias, self.eps, momentum, nbt0, vbs)
        if update and tracked is not None:
            tracked.add_(num_ghost)
        return out


class GhostBatchNorm1d(_GhostBatchNorm, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` with statistics over ghost batches of ``virtual_batch_size`` samples.

    Input (N, C) or (N, C, L). Same positional arguments, parameters, buffers and state-dict
    keys as ``nn.BatchNorm1d`` (models and checkpoints swap both ways), plus:

    Args:
        virtual_batch_size: samples per ghost batch (int >= 1, keyword-only, default 64). The
            batch is split as ``x.split(virtual_batch_size)``; ``>= N`` is exactly nn.BatchNorm1d.
        process_group: with a per-rank batch smaller than ``virtual_batch_size`` (and dividing
            it), consecutive ranks of this group form one ghost batch and their statistics are
            combined (SyncBatchNorm over the sub-group) in forward and backward; None: local only.

    Formula (training, ghost batch g, channel c):
        ``y = (x - mean_gc) / sqrt(var_gc + eps) * weight_c + bias_c``; the running-stat EMA is
        applied once per ghost batch with the unbiased variance (playbook, "Batch normalization
        implementation details").

    Example:
        >>> import torch, playbook
        >>> bn = playbook.nn.GhostBatchNorm1d(8, virtual_batch_size=4)
        >>> bn(torch.randn(10, 8)).shape
        torch.Size([10, 8])
        >>> int(bn.num_batches_tracked)  # ghost batches of 4, 4, 2
        3
    """


class GhostBatchNorm2d(_GhostBatchNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (input (N, C, H, W), contiguous or channels_last) with ghost batches.

    See ``GhostBatchNorm1d`` for ``virtual_batch_size``, ``process_group`` and the formula.

    Example:
        >>> import torch, playbook
        >>> bn = playbook.nn.GhostBatchNorm2d(3, virtual_batch_size=2)
        >>> x = torch.randn(5, 3, 4, 4).to(memory_format=torch.channels_last)
        >>> bn(x).is_contiguous(memory_format=torch.channels_last)
        True
    """


class GhostBatchNorm3d(_GhostBatchNorm, nn.BatchNorm3d):
    """``nn.BatchNorm3d`` (input (N, C, D, H, W), contiguous or channels_last_3d) with ghost batches.

    See ``GhostBatchNorm1d`` for ``virtual_batch_size``, ``process_group`` and the formula.
    """


_GHOST_FOR = {nn.BatchNorm1d: GhostBatchNorm1d, nn.BatchNorm2d: GhostBatchNorm2d, nn.BatchNorm3d: GhostBatchNorm3d}


class _GhostBatchNormNd(_GhostBatchNorm):
    """What an nn.SyncBatchNorm becomes: like SyncBatchNorm it takes any input of 2 to 5 dims."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if not 2 <= input.dim() <= 5:
            raise ValueError(f"expected 2D to 5D input (got {input.dim()}D input)")


def convert_to_ghost_bn(module: nn.Module, virtual_batch_size: int = 64, process_group: Any = None) -> nn.Module:
    """Replace every ``nn.BatchNorm1d/2d/3d`` and ``nn.SyncBatchNorm`` in ``module`` by ghost BN.

    The new modules reuse the same Parameter and buffer objects (so an optimizer created before
    the conversion keeps training them), keep device, dtype, ``requires_grad`` and training mode,
    and do not copy hooks. Like ``nn.SyncBatchNorm.convert_sync_batchnorm``, a BatchNorm passed
    as ``module`` itself is returned replaced.

    Args:
        module: the model (converted in place) or a single batch-norm module.
        virtual_batch_size: samples per ghost batch (int >= 1).
        process_group: given to every new module (see ``GhostBatchNorm1d``).

    Returns:
        ``module``, or its replacement if ``module`` is itself a batch norm.

    Example:
        >>> import torch, playbook
        >>> m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
        >>> m = playbook.nn.convert_to_ghost_bn(m, virtual_batch_size=32)
        >>> type(m[1]).__name__
        'GhostBatchNorm2d'
    """
    vbs = _check_vbs(virtual_batch_size)
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, _GhostBatchNorm):
        cls = _GHOST_FOR.get(type(module))
        if cls is None and isinstance(module, nn.SyncBatchNorm):
            cls = _GhostBatchNormNd
        if cls is not None:
            out = cls(
                module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats,
                device="meta", virtual_batch_size=vbs, process_group=process_group,
            )  # fmt: skip
            for name, p in module._parameters.items():
                out._parameters[name] = p
            for name, b in module._buffers.items():
                out._buffers[name] = b
            out.train(module.training)
            return out
    for name, child in module.named_children():
        new = convert_to_ghost_bn(child, vbs, process_group)
        if new is not child:
            setattr(out, name, new)
    return out


def sync_running_stats(module: nn.Module, process_group: Any = None) -> nn.Module:
    """Average ``running_mean`` and ``running_var`` of every BN / ghost-BN module over the group.

    The playbook ("Considerations for multi-host pipelines"): running averages must be
    synchronized across hosts before evaluation and checkpointing. All buffers are flattened into
    one float64 tensor and averaged with one all-reduce (``sum / world_size``), then copied back.
    A no-op when torch.distributed is not initialized.

    Args:
        module: the model.
        process_group: the group to average over (default: the world).

    Returns:
        ``module``.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return module
    buffers = []
    for m in module.modules():
        if isinstance(m, _BatchNorm) and m.running_mean is not None and m.running_var is not None:
            buffers.extend((m.running_mean, m.running_var))
    if not buffers:
        return module
    world = dist.get_world_size(process_group)
    flat = torch.cat([b.detach().reshape(-1).to(torch.float64) for b in buffers])
    dist.all_reduce(flat, group=process_group)
    flat /= world
    offset = 0
    with torch.no_grad():
        for b in buffers:
            b.copy_(flat[offset : offset + b.numel()].view_as(b))
            offset += b.numel()
    return module
