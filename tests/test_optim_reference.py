"""Every optimizer and variant against the float64 reference (tests/optim_reference.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

import playbook
from conftest import DEVICES
from optim_reference import Reference


@dataclass
class OptimizerInput:
    cls: type
    kind: str
    kwargs: dict = field(default_factory=dict)
    ref: dict = field(default_factory=dict)
    desc: str = ""


CONFIGS = [
    OptimizerInput(playbook.optim.Adam, "adam", dict(lr=1e-2), desc="adam"),
    OptimizerInput(playbook.optim.Adam, "adam", dict(lr=1e-2, variant="playbook"), dict(variant="playbook"), "adam-playbook"),
    OptimizerInput(playbook.optim.Adam, "adam", dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1), dict(betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1), "adam-l2"),
    OptimizerInput(playbook.optim.Adam, "adam", dict(lr=1e-2, amsgrad=True, maximize=True), dict(amsgrad=True, maximize=True), "adam-amsgrad-max"),
    OptimizerInput(playbook.optim.Adam, "adam", dict(lr=1e-2, betas=(0.3, 0.9)), dict(betas=(0.3, 0.9)), "adam-low-beta1"),
    OptimizerInput(playbook.optim.AdamW, "adam", dict(lr=1e-2, weight_decay=0.05), dict(weight_decay=0.05, decoupled=True), "adamw"),
    OptimizerInput(playbook.optim.AdamW, "adam", dict(lr=1e-2, weight_decay=0.05, variant="playbook"), dict(weight_decay=0.05, decoupled=True, variant="playbook"), "adamw-playbook"),
    OptimizerInput(playbook.optim.NAdam, "nadam", dict(lr=1e-2), desc="nadam"),
    OptimizerInput(playbook.optim.NAdam, "nadam", dict(lr=1e-2, weight_decay=0.01, momentum_decay=0.01), dict(weight_decay=0.01, momentum_decay=0.01), "nadam-l2"),
    OptimizerInput(playbook.optim.NAdam, "nadam", dict(lr=1e-2, weight_decay=0.01, decoupled_weight_decay=True), dict(weight_decay=0.01, decoupled=True), "nadam-decoupled"),
    OptimizerInput(playbook.optim.NAdam, "nadam", dict(lr=1e-2, variant="playbook"), dict(variant="playbook"), "nadam-playbook"),
    OptimizerInput(playbook.optim.SGD, "sgd", dict(lr=0.05), desc="sgd"),
    OptimizerInput(playbook.optim.SGD, "sgd", dict(lr=0.05, momentum=0.9, nesterov=True), dict(momentum=0.9, nesterov=True), "sgd-nesterov"),
    OptimizerInput(playbook.optim.SGD, "sgd", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=1e-3), dict(momentum=0.9, dampening=0.3, weight_decay=1e-3), "sgd-dampening-wd"),
    OptimizerInput(playbook.optim.SGD, "sgd", dict(lr=0.05, momentum=0.5, maximize=True), dict(momentum=0.5, maximize=True), "sgd-maximize"),
]

SIZES = (1, 3, 1000, 4099)
BIG_SIZES = (1, 3, 1000003)  # one tensor over many CPU chunks and CUDA blocks


def _params(device, dtype=torch.float32, sizes=SIZES, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(n, generator=gen).to(device=device, dtype=dtype)) for n in sizes]


def _check_against_reference(cfg, max_norm, device, sizes):
    params = _params(device, sizes=sizes)
    ref = Reference(cfg.kind, params, lr=cfg.kwargs["lr"], **cfg.ref)
    opt = cfg.cls(params, max_grad_norm=max_norm, **cfg.kwargs)
    gen = torch.Generator().manual_seed(1)
    root_n = sum(sizes) ** 0.5
    for step in range(50):
        # fresh random grads every step, with norms (about 0.5 or 50) on both sides of the clip
        scale = (0.5 if step % 3 == 0 else 50.0) / root_n
        grads = [torch.randn(p.shape, generator=gen) * scale for p in params]
        for p, g in zip(params, grads):
            p.grad = g.to(device)
        opt.step()
        ref.step(grads, max_norm)
    for p, r in zip(params, ref.params):
        torch.testing.assert_close(p.detach().double().cpu(), r, rtol=2e-5, atol=2e-5)
    norms = opt.grad_norms().double()
    torch.testing.assert_close(norms, torch.tensor(ref.norms, dtype=torch.float64), rtol=1e-6, atol=0)
    if max_norm is not None:
        clipped = sum(n > max_norm for n in ref.norms) / len(ref.norms)
        assert opt.clip_fraction() == pytest.approx(clipped)
        assert 0 < clipped < 1  # the data exercised both branches


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("max_norm", [None, 1.0], ids=["noclip", "clip"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=[c.desc for c in CONFIGS])
def test_matches_float64_reference(cfg, max_norm, device):
    _check_against_reference(cfg, max_norm, device, SIZES)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cfg", [CONFIGS[1], CONFIGS[7], CONFIGS[12]], ids=lambda c: c.desc)
def test_large_tensor_matches_float64_reference(cfg, device):
    _check_against_reference(cfg, 1.0, device, BIG_SIZES)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[5], CONFIGS[7], CONFIGS[12]], ids=lambda c: c.desc)
def test_low_precision_params_match_reference(cfg, dtype, device):
    """bf16/fp16 params and grads, fp32 math and state: one step equals the float64 formula
    rounded once to the param dtype; 30 steps stay within a few ulps of the reference that rounds
    the params to the same dtype after every step."""
    params = _params(device, dtype, sizes=(3, 1001, 70001))
    ref = Reference(cfg.kind, params, lr=cfg.kwargs["lr"], **cfg.ref)
    opt = cfg.cls(params, max_grad_norm=1.0, **cfg.kwargs)
    gen = torch.Generator().manual_seed(2)
    for step in range(30):
        grads = [(torch.randn(p.shape, generator=gen) * 0.05).to(dtype) for p in params]
        for p, g in zip(params, grads):
            p.grad = g.to(device)
        opt.step()
        ref.step([g.float() for g in grads], 1.0)
        ref.params = [r.to(dtype).double() for r in ref.params]
        if step == 0:
            for p, r in zip(params, ref.params):
                assert p.dtype == dtype
                # within one ulp of the dtype (rounding of a float32 vs float64 result)
                torch.testing.assert_close(p.detach().double().cpu(), r, rtol=2 ** -7 if dtype == torch.bfloat16 else 2 ** -10, atol=1e-6)
    for p, r in zip(params, ref.params):
        torch.testing.assert_close(p.detach().double().cpu(), r, rtol=2 ** -6 if dtype == torch.bfloat16 else 2 ** -9, atol=1e-4)
        assert all(v.dtype == torch.float32 for v in opt.state[p].values())


@pytest.mark.parametrize("device", DEVICES)
def test_mixed_dtypes_in_one_optimizer(device):
    """fp32, bf16 and fp16 params together: one global norm over all of them."""
    params = [
        torch.nn.Parameter(torch.randn(100, device=device)),
        torch.nn.Parameter(torch.randn(200, device=device).bfloat16()),
        torch.nn.Parameter(torch.randn(50, device=device).half()),
    ]
    opt = playbook.optim.Adam(params, lr=1e-2, max_grad_norm=0.5)
    grads = [torch.randn(p.shape, device=device).to(p.dtype) for p in params]
    for p, g in zip(params, grads):
        p.grad = g
    opt.step()
    expect = torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).item()
    assert opt.grad_norms()[0].item() == pytest.approx(expect, rel=1e-6)
    assert {p.dtype for p in params} == {torch.float32, torch.bfloat16, torch.float16}
