"""GradScaler semantics of the finalize step and the multi-device plumbing around it.

The reference is the rule from issue 6 / NOTE: [GradScaler semantics] (csrc/cpu/norm.cpp):
``skip = found_inf or (skip_nonfinite and nonfinite)``; ``found_inf`` is set exactly when the step
is skipped, on the caller's own tensor; a non-finite norm never counts as clipped. The CUDA kernel
runs the same statements (csrc/cuda/norm.cu); it is checked here only through the CPU path.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import playbook
from playbook import _C
from playbook.optim._base import FusedOptimizer

INF, NAN = float("inf"), float("nan")


def _reference(total, max_norm, skip_nonfinite, scale, found_in):
    """The spec, in float64 NumPy; the norm is rounded to float32 like the kernels store it."""
    norm = np.float32(math.sqrt(total) / scale) if total >= 0 else np.float32(NAN)
    nonfinite = not np.isfinite(norm)
    skip = bool(found_in) or (skip_nonfinite and nonfinite)
    clipping = (not nonfinite) and max_norm > 0 and math.isfinite(max_norm) and float(norm) > max_norm
    factor = np.float32((float(np.float32(max_norm / float(norm))) if clipping else 1.0) / scale)
    return {
        "norm": norm, "factor": factor, "skip": skip,
        "found_out": 1.0 if skip else float(found_in),
        "counters": [1, int(skip), int(clipping and not skip)],
    }


TOTALS = [4.0, 0.25, INF, NAN]  # norm 2, norm 0.5, inf, NaN (before the scale)
CASES = list(itertools.product(TOTALS, [True, False], [0.0, 1.0], [None, 0.0, 1.0], [1.0, 0.5]))


def _case_id(c):
    total, skip_nf, found, max_norm, scale = c
    return f"total{total}-skipnf{int(skip_nf)}-found{int(found)}-max{max_norm}-scale{scale}"


@pytest.mark.parametrize("total,skip_nonfinite,found_in,max_norm,scale", CASES, ids=[_case_id(c) for c in CASES])
def test_finalize_against_the_rule(total, skip_nonfinite, found_in, max_norm, scale):
    total_t = torch.tensor([total], dtype=torch.float64)
    values = torch.full((_C.kStepValues,), -7.0)
    counters = torch.zeros(_C.kCounters, dtype=torch.int64)
    history = torch.full((4,), -1.0)
    found = torch.tensor(found_in)
    grad_scale = torch.tensor(scale)
    _C.finalize_grad_norm(
        -1, total_t.data_ptr(), 0.0 if max_norm is None else max_norm, skip_nonfinite,
        grad_scale.data_ptr(), found.data_ptr(), values.data_ptr(), counters.data_ptr(),
        history.data_ptr(), history.numel(), 0,
    )
    ref = _reference(total, 0.0 if max_norm is None else max_norm, skip_nonfinite, scale, found_in)
    np.testing.assert_array_equal(values[_C.kNormIdx].numpy(), ref["norm"])
    np.testing.assert_array_equal(history[0].numpy(), ref["norm"])
    assert values[_C.kSkipIdx].item() == float(ref["skip"])
    assert values[_C.kGradFactorIdx].item() == float(ref["factor"])
    assert found.item() == ref["found_out"]
    assert counters.tolist() == ref["counters"]


def _model_and_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    x = torch.randn(8, 4, generator=g)
    return model, x


@pytest.mark.parametrize("skip_nonfinite", [True, False])
def test_playbook_scaler_backs_off_only_when_the_step_is_skipped(skip_nonfinite):
    model, x = _model_and_batch()
    opt = playbook.optim.SGD(model.parameters(), lr=0.1, max_grad_norm=1.0, skip_nonfinite=skip_nonfinite)
    scaler = playbook.amp.GradScaler("cpu", init_scale=8.0, growth_interval=1000)
    before = [p.detach().clone() for p in model.parameters()]
    scaler.scale(model(x).sum()).backward()
    model.weight.grad[0, 0] = INF  # an overflow in the scaled grads
    scaler.step(opt)
    scaler.update()
    if skip_nonfinite:
        assert opt.skipped_steps == 1
        assert scaler.get_scale() == 4.0  # backed off: the step did not happen
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    else:
        assert opt.skipped_steps == 0
        assert scaler.get_scale() == 8.0  # the step happened: no back-off
        assert not torch.isfinite(model.weight[0, 0])  # applied with the unclipped inf grad
        assert torch.isfinite(model.weight[1:]).all() and torch.isfinite(model.bias).all()
    assert opt.clip_fraction() == 0.0  # a non-finite norm is never counted as clipped
    assert opt._gn.counters[_C.kClippedIdx].item() == 0


def test_nonfinite_applied_step_uses_unclipped_grads():
    """skip_nonfinite=False: an inf grad is applied as is (not scaled by max_norm / inf = 0)."""
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
    opt = playbook.optim.SGD([p], lr=0.5, max_grad_norm=1.0, skip_nonfinite=False)
    p.grad = torch.tensor([INF, 4.0, -2.0])
    opt.step()
    assert p[0].item() == -INF  # 1 - 0.5 * inf, not NaN from inf * 0
    assert p[1].item() == 0.0 and p[2].item() == 4.0  # factor 1: unclipped
    assert opt.clip_fraction() == 0.0


def test_found_inf_from_torch_scaler_skips_even_without_skip_nonfinite():
    model, x = _model_and_batch(1)
    opt = playbook.optim.Adam(model.parameters(), lr=0.1, skip_nonfinite=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    before = [p.detach().clone() for p in model.parameters()]
    scaler.scale(model(x).sum()).backward()
    model.bias.grad[1] = NAN
    scaler.step(opt)
    scaler.update()
    assert opt.skipped_steps == 1 and scaler.get_scale() == 4.0
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_found_inf_written_back_to_the_callers_tensor(dtype):
    """A flag the finalize cannot write in place (another dtype here, another device on a GPU
    machine) is copied, and the result written back to the caller's own tensor."""
    p = torch.nn.Parameter(torch.ones(3))
    opt = playbook.optim.SGD([p], lr=0.1)
    flag = torch.zeros((), dtype=dtype)
    opt.found_inf = flag
    p.grad = torch.tensor([1.0, INF, 1.0])
    opt.step()
    assert flag.item() == 1.0 and flag.dtype == dtype
    assert opt.skipped_steps == 1 and torch.equal(p, torch.ones(3))
    flag.zero_()
    p.grad = torch.tensor([1.0, 1.0, 1.0])
    opt.step()
    assert flag.item() == 0.0  # an applied step leaves the flag alone


def test_primary_device_prefers_found_inf_then_cuda():
    cpu, c0, c1 = torch.device("cpu"), torch.device("cuda", 0), torch.device("cuda", 1)
    pick = FusedOptimizer._primary_device
    assert pick([cpu], None) == cpu
    assert pick([cpu, c0], None) == c0  # never finalize on the CPU while a CUDA total is pending
    assert pick([cpu, c1, c0], None) == c1
    flag = lambda d: type("Flag", (), {"device": d})()  # noqa: E731 (only .device is looked at)
    assert pick([c1, c0], flag(c0)) == c0  # the scaler's flag is written in place
    assert pick([cpu, c1], flag(c0)) == c1  # flag elsewhere: copied, then written back
    assert pick([cpu, c0], flag(cpu)) == c0  # a CPU flag never pulls the finalize to the host
    assert pick([cpu], flag(cpu)) == cpu
