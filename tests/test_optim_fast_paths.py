"""The optimizer's fast paths give the same results as the plain ones.

- bf16 widened and rounded in AVX-512 registers (NOTE: [bf16 in registers]) is bitwise identical
  to the portable level (fp32 blocks, scalar rounding), for the norm and the Adam update, with
  tails, misaligned starts, ties, NaN and inf.
- Small tensors packed into work items (NOTE: [Packed work items]) and scalars computed once per
  distinct step (NOTE: [Scalars per distinct step]) change nothing: bitwise identical across
  thread counts and levels, tensors at different step counts included.
"""

from __future__ import annotations

import pytest
import torch

import playbook
import playbook.optim
from playbook import _C


def _levels():
    return [lv for lv in playbook.build_info()["simd_levels"] if _C.set_simd_level(lv)] or ["auto"]


def _bf16_values(n, gen, specials=True):
    x = torch.randn(n, generator=gen) * 2
    if specials and n > 40:
        # exact ties of the bf16 rounding (low 16 bits 0x8000), both parities, and specials
        bits = torch.randint(0, 1 << 15, (8,), generator=gen, dtype=torch.int32) << 16 | 0x8000
        x[:8] = bits.view(torch.float32)
        x[9], x[21] = float("inf"), float("-inf")
    return x.to(torch.bfloat16)


def _run(level, threads, build, steps):
    try:
        assert _C.set_simd_level(level)
        torch.set_num_threads(threads)
        return build(steps)
    finally:
        _C.set_simd_level("auto")


def _adam_bf16(steps, amsgrad=False, nonfinite=False):
    gen = torch.Generator().manual_seed(11)
    sizes = (1, 15, 16, 17, 1000, 16384 + 33, 600_001)  # tails, a chunk edge, > 512K (threads)
    base = [_bf16_values(n + 1, gen, specials=False) for n in sizes]
    params = [torch.nn.Parameter(b[1:]) for b in base]  # misaligned starts (2-byte offset)
    opt = playbook.optim.Adam(params, lr=1e-2, amsgrad=amsgrad, max_grad_norm=None if nonfinite else 5.0,
                              skip_nonfinite=False)
    out = []
    for k in range(steps):
        for p in params:
            p.grad = _bf16_values(p.numel(), gen, specials=nonfinite and k == steps - 1)
        opt.step()
        out.append([p.detach().clone() for p in params])
    state = [(opt.state[p]["exp_avg"].clone(), opt.state[p]["exp_avg_sq"].clone()) for p in params]
    return out, state, opt.grad_norms(), opt.grad_norms(per_tensor=True)


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("nonfinite", [False, True])
def test_bf16_adam_and_norm_bitwise_identical_across_levels_and_threads(amsgrad, nonfinite):
    results = [(lv, t, _run(lv, t, lambda s: _adam_bf16(s, amsgrad, nonfinite), 3)) for lv in _levels() for t in (1, 2)]
    _, _, (params0, state0, norms0, per0) = results[0]
    for lv, t, (params, state, norms, per) in results[1:]:
        assert torch.equal(norms.nan_to_num(7.0), norms0.nan_to_num(7.0)), (lv, t)
        assert torch.equal(per.nan_to_num(7.0), per0.nan_to_num(7.0)), (lv, t)
        for step0, step in zip(params0, params):
            for a, b in zip(step0, step):
                assert torch.equal(a.view(torch.int16), b.view(torch.int16)), (lv, t)
        for (m0, v0), (m, v) in zip(state0, state):
            assert torch.equal(m0.view(torch.int32), m.view(torch.int32)), (lv, t)
            assert torch.equal(v0.view(torch.int32), v.view(torch.int32)), (lv, t)


def test_bf16_rounding_of_the_update_matches_torch():
    """The params written back are torch's round-to-nearest-even of the fp32 result."""
    gen = torch.Generator().manual_seed(5)
    p = torch.nn.Parameter(_bf16_values(4099, gen, specials=False))
    ref = p.detach().float().clone()
    m = torch.zeros_like(ref)
    v = torch.zeros_like(ref)
    opt = playbook.optim.Adam([p], lr=1e-2)
    for t in range(1, 4):
        g = _bf16_values(4099, gen, specials=False)
        p.grad = g
        opt.step()
        # float32 reference of the same statement order (playbook/math/adam.h), then bf16 rounding
        gf = g.float()
        m = torch.lerp(m, gf, 0.1)
        v = v * 0.999 + 0.001 * gf * gf
        step_size = torch.tensor(1e-2 / (1 - 0.9 ** t), dtype=torch.float64).float()
        bc2_sqrt = torch.tensor((1 - 0.999 ** t) ** 0.5, dtype=torch.float64).float()
        ref = ref + (-step_size) * m / (torch.sqrt(v) / bc2_sqrt + 1e-8)
        ref = ref.to(torch.bfloat16).float()
        torch.testing.assert_close(p.detach().float(), ref, rtol=0, atol=0)


def test_many_small_tensors_at_different_steps_bitwise_across_threads_and_levels():
    """400 small tensors (packed work items), some at other step counts (scalars per step)."""

    def build(_):
        gen = torch.Generator().manual_seed(2)
        sizes = [500 + (i % 7) for i in range(400)] + [700_000]
        params = [torch.nn.Parameter(torch.randn(n, generator=gen)) for n in sizes]
        opt = playbook.optim.NAdam(params, lr=1e-2, max_grad_norm=1.0)
        opt2 = playbook.optim.Adam(params[::2], lr=1e-3)
        for k in range(3):
            for i, p in enumerate(params):
                p.grad = torch.randn(p.shape, generator=gen) if (k > 0 or i % 3) else None
            opt.step()
            opt2.step()
        return [p.detach().clone() for p in params], opt.grad_norms(per_tensor=True)

    results = [(lv, t, _run(lv, t, build, 0)) for lv in _levels() for t in (1, 2)]
    _, _, (params0, per0) = results[0]
    for lv, t, (params, per) in results[1:]:
        assert torch.equal(per, per0), (lv, t)
        for a, b in zip(params0, params):
            assert torch.equal(a, b), (lv, t)


# ---------------------------------------------------------------------------- cached plans
# NOTE: [Fused step] in optim/_base.py: the plans (pointer tables) are reused across steps and
# rebuilt when what they hold changes. Each event below changes something a plan caches; the
# trajectory must stay torch.optim's over the steps after it.


def _pair(n_params=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(3, 5), (17,), (4, 4), (1,), (33,), (2, 3, 2)][:n_params]
    base = [torch.randn(s, generator=gen) for s in shapes]
    ours = [torch.nn.Parameter(b.clone()) for b in base]
    ref = [torch.nn.Parameter(b.clone()) for b in base]
    return ours, ref, gen


def _set_grads(ours, ref, gen, skip=()):
    for i, (p, q) in enumerate(zip(ours, ref)):
        if i in skip:
            p.grad = q.grad = None
            continue
        g = torch.randn(p.shape, generator=gen)
        p.grad, q.grad = g.clone(), g.clone()


def _close(ours, ref):
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=2e-6, atol=1e-7)


def _events():
    def grad_none(o, r, po, pr, gen):  # a grad set to None (param not updated), then re-created
        _set_grads(po, pr, gen, skip={1, 4})

    def grad_recreated_elsewhere(o, r, po, pr, gen):  # new grad tensors at new addresses
        for p, q in zip(po, pr):
            g = torch.randn(p.shape, generator=gen)
            keep = torch.empty(1000)  # shifts the allocator
            p.grad, q.grad = g.clone(), g.clone()
            del keep

    def grad_in_place(o, r, po, pr, gen):  # the same grad tensors, values changed in place
        for p, q in zip(po, pr):
            if p.grad is None:
                p.grad, q.grad = torch.zeros_like(p), torch.zeros_like(q)
            g = torch.randn(p.shape, generator=gen)
            p.grad.copy_(g)
            q.grad.copy_(g)

    def data_replaced(o, r, po, pr, gen):  # a param's storage replaced (same shape)
        for i in (0, 2):
            new = po[i].detach().clone() * 0.5
            po[i].data = new
            pr[i].data = new.clone()
        _set_grads(po, pr, gen)

    def zero_grad_set_to_none(o, r, po, pr, gen):
        o.zero_grad(set_to_none=True)
        r.zero_grad(set_to_none=True)
        _set_grads(po, pr, gen)

    def zero_grad_in_place(o, r, po, pr, gen):
        o.zero_grad(set_to_none=False)
        r.zero_grad(set_to_none=False)
        _set_grads(po, pr, gen)

    def add_param_group(o, r, po, pr, gen):
        gen2 = torch.Generator().manual_seed(99)
        b = torch.randn(9, generator=gen2)
        p, q = torch.nn.Parameter(b.clone()), torch.nn.Parameter(b.clone())
        o.add_param_group({"params": [p], "lr": 0.05})
        r.add_param_group({"params": [q], "lr": 0.05})
        po.append(p)
        pr.append(q)
        _set_grads(po, pr, gen)

    def load_state_dict(o, r, po, pr, gen):  # round trip through torch's state dict
        o.load_state_dict(r.state_dict())
        _set_grads(po, pr, gen)

    return [grad_none, grad_recreated_elsewhere, grad_in_place, data_replaced, zero_grad_set_to_none,
            zero_grad_in_place, add_param_group, load_state_dict]


@pytest.mark.parametrize("event", _events(), ids=lambda f: f.__name__)
@pytest.mark.parametrize("family", ["Adam", "SGD"])
def test_cached_plans_follow_every_change_like_torch(event, family):
    po, pr, gen = _pair()
    if family == "Adam":
        o = playbook.optim.Adam(po, lr=0.01, weight_decay=0.01)
        r = torch.optim.Adam(pr, lr=0.01, weight_decay=0.01, foreach=False)
    else:
        o = playbook.optim.SGD(po, lr=0.05, momentum=0.9)
        r = torch.optim.SGD(pr, lr=0.05, momentum=0.9, foreach=False)
    for _ in range(3):
        _set_grads(po, pr, gen)
        o.step()
        r.step()
    _close(po, pr)
    event(o, r, po, pr, gen)
    o.step()
    r.step()
    _close(po, pr)
    for k in range(3):  # and the steps after it (the grads set to None come back)
        _set_grads(po, pr, gen, skip={3} if k == 0 else ())
        o.step()
        r.step()
    _close(po, pr)
    assert o.skipped_steps == 0
