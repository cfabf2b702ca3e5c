"""Ghost batch norm against the float64 split-loop reference (F.batch_norm over x.split(vbs)).

Every output, gradient (input, weight, bias), running stat and num_batches_tracked is compared
with the reference over two training steps, then in eval mode; plus nn.BatchNorm equality for
vbs >= N, conversion, state dicts, determinism and bad input.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Optional

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import playbook
from playbook import _C
from playbook.nn import GhostBatchNorm1d, GhostBatchNorm2d, GhostBatchNorm3d, convert_to_ghost_bn

from conftest import requires_cuda

GHOST = {1: GhostBatchNorm1d, 2: GhostBatchNorm2d, 3: GhostBatchNorm3d}
PLAIN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def _kind(shape: tuple[int, ...]) -> int:
    return {2: 1, 3: 1, 4: 2, 5: 3}[len(shape)]


def _fmt(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    if not channels_last:
        return t.contiguous()
    return t.contiguous(memory_format=torch.channels_last if t.dim() == 4 else torch.channels_last_3d)


class _Reference:
    """The definition in float64: F.batch_norm over x.split(vbs), EMA once per ghost batch."""

    def __init__(self, bn: nn.Module) -> None:
        self.weight = None if bn.weight is None else bn.weight.detach().double().clone().requires_grad_()
        self.bias = None if bn.bias is None else bn.bias.detach().double().clone().requires_grad_()
        self.running_mean = None if bn.running_mean is None else bn.running_mean.double().clone()
        self.running_var = None if bn.running_var is None else bn.running_var.double().clone()
        self.nbt = 0 if bn.num_batches_tracked is None else int(bn.num_batches_tracked)
        self.momentum = bn.momentum
        self.eps = bn.eps
        self.vbs = bn.virtual_batch_size
        self.track = bn.track_running_stats

    def __call__(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        if not training and self.running_mean is not None:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        update = training and self.track
        outs = []
        for chunk in x.split(self.vbs):
            if update:
                self.nbt += 1
            factor = self.momentum if self.momentum is not None else (1.0 / self.nbt if update else 0.0)
            rm = self.running_mean if update else None
            rv = self.running_var if update else None
            outs.append(F.batch_norm(chunk, rm, rv, self.weight, self.bias, True, factor, self.eps))
        return torch.cat(outs)


def _tol(dtype: torch.dtype) -> dict[str, float]:
    return {
        torch.float32: dict(atol=2e-5, rtol=2e-5),
        torch.bfloat16: dict(atol=3e-2, rtol=1e-2),
        torch.float16: dict(atol=4e-3, rtol=2e-3),
    }[dtype]


@dataclass
class Case:
    shape: tuple[int, ...]
    vbs: int
    channels_last: bool = False
    dtype: torch.dtype = torch.float32
    kwargs: dict[str, Any] = field(default_factory=dict)
    desc: str = ""


CASES = [
    Case((16, 4, 5, 6), 4, desc="2d-divides"),
    Case((16, 4, 5, 6), 4, channels_last=True, desc="2d-cl-divides"),
    Case((19, 3, 4, 5), 6, desc="2d-not-dividing"),
    Case((19, 3, 4, 5), 6, channels_last=True, desc="2d-cl-not-dividing"),
    Case((12, 5, 3, 3), 11, desc="2d-vbs-one-short"),
    Case((12, 5, 3, 3), 11, channels_last=True, desc="2d-cl-vbs-one-short"),
    Case((12, 5, 3, 3), 12, desc="2d-vbs-eq-n"),
    Case((12, 5, 3, 3), 100, channels_last=True, desc="2d-cl-vbs-gt-n"),
    Case((40, 7), 8, desc="1d-nc"),
    Case((43, 7), 8, desc="1d-nc-not-dividing"),
    Case((10, 6, 9), 3, desc="1d-ncl"),
    Case((10, 6, 9), 3, kwargs=dict(affine=False), desc="1d-ncl-no-affine"),
    Case((9, 3, 2, 3, 4), 4, desc="3d"),
    Case((9, 3, 2, 3, 4), 4, channels_last=True, desc="3d-cl"),
    Case((16, 4, 5, 6), 4, kwargs=dict(affine=False), desc="2d-no-affine"),
    Case((16, 4, 5, 6), 4, channels_last=True, kwargs=dict(track_running_stats=False), desc="2d-cl-no-tracking"),
    Case((16, 4, 5, 6), 5, kwargs=dict(momentum=None), desc="2d-cumulative"),
    Case((16, 4, 5, 6), 5, channels_last=True, kwargs=dict(momentum=None), desc="2d-cl-cumulative"),
    Case((16, 4, 5, 6), 3, kwargs=dict(momentum=0.5, eps=1e-3), desc="2d-momentum-eps"),
    Case((8, 1, 6, 6), 3, desc="C=1"),
    Case((8, 1, 6, 6), 3, channels_last=True, desc="C=1-cl"),
    Case((8, 3, 1, 1), 4, desc="HW=1"),
    Case((8, 3, 1, 1), 4, channels_last=True, desc="HW=1-cl"),
    Case((6, 700, 2, 2), 3, channels_last=True, desc="cl-wide-rows"),
    Case((3, 2, 33, 40), 2, desc="long-planes"),
    Case((16, 4, 5, 6), 4, dtype=torch.bfloat16, desc="bf16"),
    Case((16, 4, 5, 6), 4, channels_last=True, dtype=torch.bfloat16, desc="bf16-cl"),
    Case((16, 4, 5, 6), 5, dtype=torch.float16, desc="fp16"),
    Case((16, 4, 5, 6), 5, channels_last=True, dtype=torch.float16, desc="fp16-cl"),
    Case((64, 24), 16, dtype=torch.bfloat16, desc="1d-bf16"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.desc for c in CASES])
def test_matches_float64_split_loop(case: Case) -> None:
    gen = torch.Generator().manual_seed(len(case.desc) * 7 + case.vbs)
    C = case.shape[1]
    bn = GHOST[_kind(case.shape)](C, virtual_batch_size=case.vbs, **case.kwargs)
    if bn.affine:
        with torch.no_grad():
            bn.weight.copy_(torch.rand(C, generator=gen) + 0.5)
            bn.bias.copy_(torch.randn(C, generator=gen))
    ref = _Reference(bn)
    tol = _tol(case.dtype)
    for step in range(2):
        x = (torch.randn(case.shape, generator=gen) * 3 + 1.5).to(case.dtype)
        x = _fmt(x, case.channels_last).requires_grad_()
        dy = _fmt(torch.randn(case.shape, generator=gen).to(case.dtype), case.channels_last)
        y = bn(x)
        y.backward(dy)
        xr = x.detach().double().requires_grad_()
        yr = ref(xr, training=True)
        yr.backward(dy.double())
        assert y.dtype == case.dtype and y.shape == x.shape
        if case.channels_last and math.prod(case.shape[2:]) > 1:
            assert y.is_contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
        else:
            assert y.is_contiguous()
        torch.testing.assert_close(y.double(), yr, **tol, msg=f"output, step {step}")
        torch.testing.assert_close(x.grad.double(), xr.grad, **tol, msg=f"grad_input, step {step}")
        if bn.affine:
            scale = math.sqrt(yr.numel() / C)  # sums over many elements
            gtol = dict(atol=tol["atol"] * scale, rtol=tol["rtol"])
            torch.testing.assert_close(bn.weight.grad.double(), ref.weight.grad, **gtol)
            torch.testing.assert_close(bn.bias.grad.double(), ref.bias.grad, **gtol)
            bn.weight.grad = bn.bias.grad = None
            ref.weight.grad = ref.bias.grad = None
        if bn.track_running_stats:
            torch.testing.assert_close(bn.running_mean.double(), ref.running_mean, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(bn.running_var.double(), ref.running_var, atol=1e-5, rtol=1e-5)
            assert int(bn.num_batches_tracked) == ref.nbt
    bn.eval()
    x = _fmt((torch.randn(case.shape, generator=gen) * 3 + 1.5).to(case.dtype), case.channels_last)
    torch.testing.assert_close(bn(x).double(), ref(x.double(), training=False), **tol)


@pytest.mark.parametrize(
    "shape, channels_last",
    [((12, 5, 7, 3), False), ((12, 5, 7, 3), True), ((12, 5), False), ((12, 5, 9), False),
     ((6, 2, 3, 4, 5), False), ((6, 2, 3, 4, 5), True)],
)  # fmt: skip
def test_vbs_at_least_n_equals_nn_batchnorm(shape: tuple[int, ...], channels_last: bool) -> None:
    torch.manual_seed(0)
    plain = PLAIN[_kind(shape)](shape[1], momentum=None)
    ghost = GHOST[_kind(shape)](shape[1], momentum=None, virtual_batch_size=shape[0])
    with torch.no_grad():
        plain.weight.uniform_(0.5, 1.5)
        plain.bias.normal_()
    ghost.load_state_dict(plain.state_dict())
    for _ in range(3):
        x = _fmt(torch.randn(shape) * 2 - 1, channels_last)
        dy = torch.randn(shape)
        xp = x.clone().requires_grad_()
        xg = x.clone().requires_grad_()
        yp = plain(xp)
        yp.backward(dy)
        yg = ghost(xg)
        yg.backward(dy)
        assert yg.stride() == yp.stride()
        torch.testing.assert_close(yg, yp, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(xg.grad, xp.grad, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ghost.weight.grad, plain.weight.grad, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(ghost.bias.grad, plain.bias.grad, atol=1e-4, rtol=1e-5)
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(ghost.state_dict()[key], value, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_large_mean_small_variance_is_well_conditioned(channels_last: bool) -> None:
    # E[x^2] - E[x]^2 in fp32 would lose every digit here; the shifted double sums do not.
    gen = torch.Generator().manual_seed(5)
    x = _fmt(1e4 + 0.01 * torch.randn(32, 3, 8, 8, generator=gen), channels_last)
    bn = GhostBatchNorm2d(3, virtual_batch_size=8)
    ref = _Reference(bn)
    y = bn(x)
    yr = ref(x.double(), training=True)
    # fp32 x itself is quantized to ~1e-3 at 1e4; compare against the same quantized input.
    torch.testing.assert_close(y.double(), yr, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(bn.running_var.double(), ref.running_var, atol=1e-9, rtol=1e-5)


def test_zero_variance_channels() -> None:
    x = torch.randn(8, 3, 4, 4)
    x[:, 1] = 2.5  # constant channel: output is the bias, gradient finite
    x[:4, 2] = -1.0  # constant in the first ghost batch only
    bn = GhostBatchNorm2d(3, virtual_batch_size=4)
    ref = _Reference(bn)
    xg = x.clone().requires_grad_()
    y = bn(xg)
    dy = torch.randn_like(y)
    y.backward(dy)
    xr = x.double().requires_grad_()
    yr = ref(xr, training=True)
    yr.backward(dy.double())
    assert torch.isfinite(y).all() and torch.isfinite(xg.grad).all()
    torch.testing.assert_close(y.double(), yr, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(xg.grad.double(), xr.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(bn.running_var.double(), ref.running_var, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("channels_last", [False, True])
def test_nan_confined_to_its_ghost_batch_and_channel(channels_last: bool) -> None:
    x = torch.randn(12, 3, 4, 4)
    x[5, 1, 2, 3] = float("nan")  # ghost batch 1 (samples 4..7), channel 1
    bn = GhostBatchNorm2d(3, virtual_batch_size=4)
    y = bn(_fmt(x, channels_last))
    nan = torch.isnan(y)
    expected = torch.zeros_like(nan)
    expected[4:8, 1] = True
    assert torch.equal(nan, expected)
    ref = _Reference(GhostBatchNorm2d(3, virtual_batch_size=4))
    ref(x.double(), training=True)
    assert torch.equal(torch.isnan(bn.running_mean), torch.isnan(ref.running_mean))


def test_eval_after_train_and_train_after_eval() -> None:
    torch.manual_seed(1)
    bn = GhostBatchNorm2d(4, virtual_batch_size=3)
    ref = _Reference(bn)
    for _ in range(3):
        x = torch.randn(10, 4, 3, 3) * 2 + 1
        bn(x)
        ref(x.double(), training=True)
    bn.eval()
    x = torch.randn(5, 4, 3, 3)
    torch.testing.assert_close(bn(x).double(), ref(x.double(), training=False), atol=1e-5, rtol=1e-5)
    before = bn.state_dict()
    bn(torch.randn(1, 4, 3, 3))  # eval works for any N and changes nothing
    for k, v in bn.state_dict().items():
        assert torch.equal(v, before[k])


def test_single_value_ghost_batch_raises_like_nn_batchnorm() -> None:
    bn = GhostBatchNorm1d(4, virtual_batch_size=4)
    before = copy.deepcopy(bn.state_dict())
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        bn(torch.randn(9, 4))  # ghost batches 4, 4, 1
    for k, v in bn.state_dict().items():
        assert torch.equal(v, before[k])  # nothing mutated
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        GhostBatchNorm1d(4, virtual_batch_size=1)(torch.randn(3, 4))
    GhostBatchNorm1d(4, virtual_batch_size=1)(torch.randn(3, 4, 2))  # 2 values per channel: fine


def test_state_dicts_swap_both_ways() -> None:
    torch.manual_seed(2)
    plain = nn.BatchNorm2d(6)
    plain(torch.randn(8, 6, 3, 3))
    ghost = GhostBatchNorm2d(6, virtual_batch_size=2)
    assert set(ghost.state_dict()) == set(plain.state_dict())
    ghost.load_state_dict(plain.state_dict())
    ghost(torch.randn(8, 6, 3, 3))
    back = nn.BatchNorm2d(6)
    back.load_state_dict(ghost.state_dict())
    for k, v in ghost.state_dict().items():
        assert torch.equal(back.state_dict()[k], v)
    assert isinstance(ghost, nn.BatchNorm2d)
    assert "virtual_batch_size=2" in repr(ghost)


def test_factory_kwargs_and_fallbacks() -> None:
    bn = GhostBatchNorm2d(3, 1e-3, 0.2, True, True, dtype=torch.float64, virtual_batch_size=2)
    assert bn.weight.dtype == torch.float64 and bn.eps == 1e-3 and bn.momentum == 0.2
    ref = _Reference(bn)
    x = torch.randn(5, 3, 2, 2, dtype=torch.float64)
    # float64 is not a kernel dtype: the documented fallback is the reference loop itself.
    torch.testing.assert_close(bn(x), ref(x, training=True))
    torch.testing.assert_close(bn.running_var, ref.running_var)
    # Other strides: copied to contiguous, same values.
    bn32 = GhostBatchNorm2d(3, virtual_batch_size=2)
    ref32 = _Reference(bn32)
    xs = torch.randn(5, 3, 4, 6)[:, :, :, ::2]
    torch.testing.assert_close(bn32(xs).double(), ref32(xs.double(), training=True), atol=1e-5, rtol=1e-5)


def _resnet_block() -> nn.Module:
    class BasicBlock(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(8)
            self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(8)
            self.downsample = nn.Sequential(nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8))
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 6 * 6, 16), nn.BatchNorm1d(16), nn.Linear(16, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = torch.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.head(torch.relu(out + self.downsample(x)))

    return BasicBlock()


def test_convert_resnet_block_keeps_parameters_and_optimizer() -> None:
    torch.manual_seed(3)
    model = _resnet_block()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(16, 8, 6, 6)
    target = torch.randint(0, 3, (16,))
    F.cross_entropy(model(x), target).backward()
    opt.step()
    opt.zero_grad()
    reference = copy.deepcopy(model)
    ids = {name: id(p) for name, p in model.named_parameters()}
    bn1_weight = model.bn1.weight
    out = convert_to_ghost_bn(model, virtual_batch_size=16)  # vbs == batch: identical to BatchNorm
    assert out is model
    assert type(model.bn1) is GhostBatchNorm2d and type(model.downsample[1]) is GhostBatchNorm2d
    assert type(model.head[2]) is GhostBatchNorm1d
    assert model.bn1.weight is bn1_weight
    assert {name: id(p) for name, p in model.named_parameters()} == ids
    assert model.bn1.training
    # The optimizer created before the conversion keeps training the same parameters; the model
    # follows the unconverted copy step for step.
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    ref_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    for _ in range(3):
        for m, o in ((model, opt), (reference, ref_opt)):
            F.cross_entropy(m(x), target).backward()
            o.step()
            o.zero_grad()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, atol=1e-4, rtol=1e-4, msg=lambda m: f"{name}: {m}")
    for (name, b), c in zip(model.named_buffers(), reference.buffers()):
        torch.testing.assert_close(b, c, atol=1e-4, rtol=1e-4, msg=lambda m: f"{name}: {m}")


def test_convert_keeps_mode_requires_grad_and_converts_syncbn() -> None:
    model = nn.Sequential(nn.BatchNorm2d(3, affine=True), nn.SyncBatchNorm(3), nn.BatchNorm3d(2, track_running_stats=False))
    model[0].weight.requires_grad_(False)
    model.eval()
    convert_to_ghost_bn(model, virtual_batch_size=4)
    assert isinstance(model[0], GhostBatchNorm2d) and not model[0].training
    assert not model[0].weight.requires_grad
    assert model[1].virtual_batch_size == 4 and isinstance(model[1], nn.modules.batchnorm._BatchNorm)
    assert isinstance(model[2], GhostBatchNorm3d) and model[2].running_mean is None
    single = convert_to_ghost_bn(nn.BatchNorm1d(5), 8)
    assert isinstance(single, GhostBatchNorm1d) and single.virtual_batch_size == 8
    # A converted SyncBatchNorm is ghost BN on the CPU without a process group.
    model.train()
    y = model[1](torch.randn(8, 3, 2, 2))
    assert y.shape == (8, 3, 2, 2)


@pytest.mark.parametrize(
    "channels_last, dtype, shape, vbs",
    [
        (False, torch.float32, (48, 24, 20, 20), 16),  # large enough for the pool
        (True, torch.float32, (48, 24, 20, 20), 16),
        (False, torch.bfloat16, (48, 24, 20, 20), 16),
        (True, torch.bfloat16, (48, 24, 20, 20), 16),
        # 8 MB float32: streaming stores at the AVX2/AVX-512 levels, plain stores at the portable one
        (False, torch.float32, (64, 32, 33, 31), 24),
        (True, torch.float32, (64, 32, 33, 31), 24),
        (False, torch.float32, (2048, 1025), 64),  # rows: each cached ghost batch in one pass
        (False, torch.float32, (96, 32, 40, 40), 20),  # 19.7 MB: the contiguous forward in windows
        (True, torch.float32, (96, 32, 40, 40), 20),  # 4 MB ghost batches: fused at 1 thread, not at 3
        (True, torch.float32, (48, 32, 40, 40), 24),  # 4.9 MB ghost batches: backward in windows
    ],
)
def test_bitwise_independent_of_threads_and_simd_level(
    channels_last: bool, dtype: torch.dtype, shape: tuple[int, ...], vbs: int
) -> None:
    gen = torch.Generator().manual_seed(4)
    x = _fmt((torch.randn(shape, generator=gen) * 2 + 3).to(dtype), channels_last)
    dy = _fmt(torch.randn(shape, generator=gen).to(dtype), channels_last)
    results = []
    try:
        for level in playbook.build_info()["simd_levels"]:
            if not _C.set_simd_level(level):
                continue
            for threads in (1, 2, 3):
                torch.set_num_threads(threads)
                module = GhostBatchNorm2d if len(shape) == 4 else GhostBatchNorm1d
                bn = module(shape[1], virtual_batch_size=vbs)
                xg = x.clone().requires_grad_()
                y = bn(xg)
                y.backward(dy)
                results.append((level, threads, y, xg.grad, bn.weight.grad, bn.bias.grad, bn.running_mean, bn.running_var))
    finally:
        _C.set_simd_level("auto")
    assert len(results) >= 3
    first = results[0]
    for r in results[1:]:
        for a, b in zip(first[2:], r[2:]):
            assert torch.equal(a, b), (r[0], r[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last, vbs, per_piece", [(False, 20, 2), (True, 48, 1)])
def test_large_input_equals_ghost_batches_run_apart(
    dtype: torch.dtype, channels_last: bool, vbs: int, per_piece: int
) -> None:
    # Ghost batches are independent, so the output and the input gradient of a large batch equal,
    # bit for bit, those of its ghost batches run as separate smaller batches. Here the whole batch
    # (19.7 MB float32) is normalized in windows of whole ghost batches (contiguous: 4 MB ghost
    # batches, the 2-ghost-batch pieces (8 MB) in one pass; channels_last: 9.8 MB ghost batches, too
    # large for one item per thread, so both the forward and the backward run in windows), the
    # pieces of `per_piece` ghost batches apart.
    gen = torch.Generator().manual_seed(7)
    shape = (96, 32, 40, 40)
    x = _fmt((torch.randn(shape, generator=gen) * 2 + 3).to(dtype), channels_last)
    dy = _fmt(torch.randn(shape, generator=gen).to(dtype), channels_last)
    bn = GhostBatchNorm2d(32, virtual_batch_size=vbs)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5, generator=gen)
        bn.bias.uniform_(-1, 1, generator=gen)
    xg = x.clone().requires_grad_()
    y = bn(xg)
    y.backward(dy)
    step = per_piece * vbs
    for start in range(0, shape[0], step):
        piece = x[start : start + step].clone().requires_grad_()
        yp = bn(piece)
        yp.backward(dy[start : start + step])
        assert torch.equal(yp, y[start : start + step])
        assert torch.equal(piece.grad, xg.grad[start : start + step])


def test_bad_input_clear_errors_and_no_mutation() -> None:
    for bad in (0, -3, 1.5, True, "64"):
        with pytest.raises(ValueError, match="Invalid virtual_batch_size"):
            GhostBatchNorm2d(4, virtual_batch_size=bad)
        with pytest.raises(ValueError, match="Invalid virtual_batch_size"):
            convert_to_ghost_bn(nn.BatchNorm2d(4), virtual_batch_size=bad)
    with pytest.raises(TypeError):
        GhostBatchNorm2d(4, 1e-5, 0.1, True, True, None, None, 32)  # virtual_batch_size is keyword-only
    bn = GhostBatchNorm2d(4, virtual_batch_size=2)
    before = copy.deepcopy(bn.state_dict())
    with pytest.raises(ValueError, match="Expected input with 4 channels"):
        bn(torch.randn(6, 3, 2, 2))
    with pytest.raises(ValueError, match="expected 4D input"):
        bn(torch.tensor(1.0))
    with pytest.raises(ValueError, match="expected 2D or 3D input"):
        GhostBatchNorm1d(4)(torch.tensor(1.0))
    bn.virtual_batch_size = 0
    with pytest.raises(ValueError, match="Invalid virtual_batch_size: 0"):
        bn(torch.randn(6, 4, 2, 2))
    for k, v in bn.state_dict().items():
        assert torch.equal(v, before[k])


def test_core_rejects_bad_shapes() -> None:
    x = torch.randn(4, 3)
    mean = torch.empty(1, 3, dtype=torch.float64)
    m2 = torch.empty_like(mean)
    with pytest.raises(ValueError, match="Invalid virtual_batch_size: 0"):
        _C.ghost_bn_stats(-1, 4, 3, 1, 0, True, 0, x.data_ptr(), mean.data_ptr(), m2.data_ptr(), 1, 0)
    with pytest.raises(ValueError, match="dtype code 7"):
        _C.ghost_bn_stats(-1, 4, 3, 1, 4, True, 7, x.data_ptr(), mean.data_ptr(), m2.data_ptr(), 1, 0)
    if not _C.cuda_compiled():
        with pytest.raises(RuntimeError, match="built without CUDA kernels"):
            _C.ghost_bn_stats(0, 4, 3, 1, 4, True, 0, x.data_ptr(), mean.data_ptr(), m2.data_ptr(), 1, 0)
    with pytest.raises(ValueError, match="invalid device -2"):
        _C.ghost_bn_stats(-2, 4, 3, 1, 4, True, 0, x.data_ptr(), mean.data_ptr(), m2.data_ptr(), 1, 0)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cuda_matches_float64_split_loop(channels_last: bool, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(9)
    bn = GhostBatchNorm2d(6, virtual_batch_size=5).cuda()
    ref = _Reference(bn)
    x = _fmt((torch.randn(13, 6, 7, 5, generator=gen) * 2 + 1).to(dtype), channels_last)
    dy = _fmt(torch.randn(13, 6, 7, 5, generator=gen).to(dtype), channels_last)
    xg = x.cuda().requires_grad_()
    y = bn(xg)
    y.backward(dy.cuda())
    xr = x.double().requires_grad_()
    yr = ref(xr, training=True)
    yr.backward(dy.double())
    tol = _tol(dtype)
    torch.testing.assert_close(y.double().cpu(), yr, **tol)
    torch.testing.assert_close(xg.grad.double().cpu(), xr.grad, **tol)
    torch.testing.assert_close(bn.running_var.double().cpu(), ref.running_var, atol=1e-5, rtol=1e-5)
    assert int(bn.num_batches_tracked) == ref.nbt
