"""The optimizer's fast paths give the same results as the plain ones.

- bf16 widened and rounded in AVX-512 registers (NOTE: [bf16 in registers]) is bitwise identical
  to the portable level (fp32 blocks, scalar rounding), for the norm and the Adam update, with
  tails, misaligned starts, ties, NaN and inf.
- Small tensors packed into work items (NOTE: [Packed work items]) and scalars computed once per
  distinct step (NOTE: [Scalars per distinct step]) change nothing: bitwise identical across
  thread counts and levels, tensors at different step counts included.
"""

from __future__ import annotations

import inspect

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


def _assert_same_bits_on_1_and_2_threads_and_close_to_torch(build):
    """build(_) -> (playbook's params, torch.optim's params) after the same steps: playbook's are the
    same bits on one and two threads, and torch's trajectory within float32 rounding."""
    threads = torch.get_num_threads()
    try:
        (one, ref), (two, _) = _run("auto", 1, build, 0), _run("auto", 2, build, 0)
    finally:
        torch.set_num_threads(threads)
    for a, b, r in zip(one, two, ref):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-6)


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
        inv_bc2_sqrt = torch.tensor(1 / (1 - 0.999 ** t) ** 0.5, dtype=torch.float64).float()
        ref = ref + (-step_size) * m / (torch.sqrt(v) * inv_bc2_sqrt + 1e-8)  # NOTE: [Adam denominator]
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


# ---------------------------------------------------------------------------- per-step host work
# A step over many small tensors is mostly host work: the param and grad pointers are gathered in
# one C pass (NOTE: [Step pointers]) while another thread already reduces the grads (NOTE: [Streamed
# sum of squares]), pointer lists stay in C++ (PtrList) or are read directly (StepPtrs), problems
# from 64K elements run on the thread pool (kMinParallelElements) and the step's profiler range
# is entered only while a profiler runs (_profile_hook_step).


def test_200k_params_in_400_tensors_bitwise_across_threads_and_like_torch():
    """bench_optim's size (c): now on two threads; same bits as one thread, and torch.optim's
    trajectory (Adam after clip_grad_norm_)."""

    def build(_):
        gen = torch.Generator().manual_seed(5)
        base = [torch.randn(500, generator=gen) for _ in range(400)]
        ours = [torch.nn.Parameter(b.clone()) for b in base]
        ref = [torch.nn.Parameter(b.clone()) for b in base]
        opt = playbook.optim.Adam(ours, lr=1e-2, max_grad_norm=1.0)
        topt = torch.optim.Adam(ref, lr=1e-2)
        for _ in range(3):
            for p, q in zip(ours, ref):
                p.grad = torch.randn(p.shape, generator=gen)
                q.grad = p.grad.clone()
            opt.step()
            torch.nn.utils.clip_grad_norm_(ref, 1.0)
            topt.step()
        return [p.detach().clone() for p in ours], [q.detach().clone() for q in ref]

    _assert_same_bits_on_1_and_2_threads_and_close_to_torch(build)


def _step_pointers(raw: bool = True):
    """A StepPointers as the optimizer builds it; raw=False without torch's raw data-pointer function
    (NOTE: [Raw data pointer]), the path taken on a torch that does not have it."""
    from playbook.optim._base import _use_raw_data_ptr

    sp = _C.StepPointers(*(inspect.getattr_static(torch.Tensor, n) for n in ("grad", "data_ptr", "is_contiguous")))
    if raw:
        assert _use_raw_data_ptr(sp) and sp.has_raw_data_ptr  # torch 2.13 has it
    assert sp.has_raw_data_ptr == raw
    return sp


class _OwnDataPtr(torch.Tensor):
    """A subclass that overrides data_ptr: StepPointers must call the override, not torch's."""

    calls = 0

    def data_ptr(self):
        type(self).calls += 1
        return super().data_ptr()


@pytest.mark.parametrize("raw", [True, False], ids=["raw-data-ptr", "descriptors"])
def test_step_pointers_check_params_and_gather_grads_or_defer_to_the_checked_path(raw):
    sp = _step_pointers(raw)
    params = [torch.nn.Parameter(torch.randn(4, 3)) for _ in range(5)]
    for p in params:
        p.grad = torch.randn_like(p)
    pptrs = _C.PtrList([p.data_ptr() for p in params])
    got = sp.collect(params, pptrs)
    assert isinstance(got, _C.PtrList) and list(got) == [p.grad.data_ptr() for p in params]
    assert got.tolist() == [p.grad.data_ptr() for p in params] and len(got) == 5 and got[-1] == got[4]
    assert sp.direct(params[0]) and sp.direct(params[0].grad)  # Parameter and Tensor: the C functions
    assert list(sp.collect([], _C.PtrList([]))) == []
    # a param whose storage moved, or a list of another length: False (the plans must be rebuilt)
    assert sp.collect(params[:4], pptrs) is False
    params[3].data = torch.randn(4, 3)
    assert sp.collect(params, pptrs) is False
    pptrs = _C.PtrList([p.data_ptr() for p in params])
    params[2].grad = None
    assert sp.collect(params, pptrs) is None
    params[2].grad = torch.randn(3, 4).t()  # right shape, not contiguous
    assert sp.collect(params, pptrs) is None
    with pytest.raises(AttributeError):
        sp.collect([object()], _C.PtrList([0]))
    # a subclass that overrides a method is called through Python: its override runs
    sub = torch.randn(3).as_subclass(_OwnDataPtr)
    sub.grad = torch.randn(3)
    assert not sp.direct(sub)
    before = _OwnDataPtr.calls
    assert list(sp.collect([sub], _C.PtrList([sub.data_ptr()]))) == [sub.grad.data_ptr()]
    assert _OwnDataPtr.calls == before + 2  # the test's own call and the param check
    # the optimizer turns the non-contiguous grad into its clear error, and writes nothing
    opt = playbook.optim.Adam(params, lr=0.1)
    before = [p.detach().clone() for p in params]
    with pytest.raises(ValueError, match="stride"):
        opt.step()
    assert all(torch.equal(a, p) for a, p in zip(before, params))
    params[2].grad = params[2].grad.contiguous()
    opt.step()
    assert not any(torch.equal(a, p) for a, p in zip(before, params))


def test_step_after_a_param_storage_moves_rebuilds_and_matches_torch():
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(6)) for _ in range(3)]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt = playbook.optim.Adam(ours, lr=0.1)
    topt = torch.optim.Adam(ref, lr=0.1, foreach=False)
    for it in range(4):
        if it == 2:  # new storage for one param: the cached pointer must not be written
            old = ours[1].data
            ours[1].data = old.clone()
            ref[1].data = ref[1].data.clone()
            kept = old.clone()
        for p, q in zip(ours, ref):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        opt.step()
        topt.step()
    assert torch.equal(old, kept)  # the old storage was left alone
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_plan_pointer_lists_take_any_int_sequence_and_reject_others():
    plan = _C.GradNormPlan(-1, [3, 2], [0, 0])
    g = [torch.tensor([1.0, 2.0, 2.0]), torch.tensor([4.0, 0.0])]
    per = torch.zeros(2, dtype=torch.float64)
    total = torch.zeros(1, dtype=torch.float64)
    for ptrs in ([t.data_ptr() for t in g], tuple(t.data_ptr() for t in g)):
        total.zero_()
        plan.sumsq(ptrs, per.data_ptr(), total.data_ptr(), 1, 0, 0, 0)
        assert per.tolist() == [9.0, 16.0] and total.item() == 25.0
    with pytest.raises(TypeError):
        plan.sumsq([g[0].data_ptr(), "x"], per.data_ptr(), total.data_ptr(), 1, 0, 0, 0)
    with pytest.raises(TypeError):
        plan.sumsq([g[0].data_ptr(), 1 << 70], per.data_ptr(), total.data_ptr(), 1, 0, 0, 0)


def _hook_log(make_opt):
    """The order and arguments of global and per-optimizer step hooks around one step."""
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    opt = make_opt([p])
    log = []
    handles = [
        register_optimizer_step_pre_hook(lambda o, a, k: log.append(("global pre", len(a), sorted(k)))),
        opt.register_step_pre_hook(lambda o, a, k: log.append(("pre", len(a), sorted(k)))),
        opt.register_step_post_hook(lambda o, a, k: log.append(("post", len(a), sorted(k)))),
        register_optimizer_step_post_hook(lambda o, a, k: log.append(("global post", len(a), sorted(k)))),
    ]
    # a pre-hook may replace the arguments: here it supplies a closure
    calls = []
    handles.append(opt.register_step_pre_hook(lambda o, a, k: (a, {"closure": lambda: calls.append(1) or 2.0})))
    try:
        loss = opt.step()
    finally:
        for h in handles:
            h.remove()
    return log, loss, calls


def test_step_hooks_run_as_in_torch_and_the_profiler_sees_the_step():
    ours = _hook_log(lambda ps: playbook.optim.Adam(ps, lr=0.1, max_grad_norm=1.0))
    ref = _hook_log(lambda ps: torch.optim.Adam(ps, lr=0.1))
    assert ours == ref
    assert ours[1] == 2.0 and ours[2] == [1]

    p = torch.nn.Parameter(torch.ones(8))
    p.grad = torch.ones(8)
    opt = playbook.optim.Adam([p], lr=0.1)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        opt.step()
    names = {e.name for e in prof.events()}
    assert "Optimizer.step#Adam.step" in names


def _norm_plan_for(params):
    from playbook._tensors import dtype_code

    plan = _C.GradNormPlan(-1, [p.numel() for p in params], [dtype_code(p.dtype, "param") for p in params])
    per = torch.full((len(params),), -1.0, dtype=torch.float64)
    total = torch.full((1,), -1.0, dtype=torch.float64)
    return plan, per, total


@pytest.mark.parametrize("raw", [True, False], ids=["raw-data-ptr", "descriptors"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sumsq_collect_reduces_while_collecting_with_the_bits_of_sumsq(dtype, raw):
    # 300 tensors, 130K elements: above the 2-thread threshold, so the other thread reduces while
    # the calling thread collects (NOTE: [Streamed sum of squares]); uneven sizes cross chunk ends.
    torch.manual_seed(0)
    sizes = [int(s) for s in torch.randint(1, 900, (300,))] + [20000]
    params = [torch.nn.Parameter(torch.randn(n).to(dtype)) for n in sizes]
    for p in params:
        p.grad = torch.randn_like(p)
    sp = _step_pointers(raw)
    plan, per, total = _norm_plan_for(params)
    segments = [(params[:100], _C.PtrList([p.data_ptr() for p in params[:100]])),
                (params[100:], _C.PtrList([p.data_ptr() for p in params[100:]]))]
    threads = torch.get_num_threads()
    try:
        results = []
        for n_threads in (1, 2):
            torch.set_num_threads(n_threads)
            got = plan.sumsq_collect(sp, segments, per.data_ptr(), total.data_ptr(), n_threads)
            assert [list(g) for g in got] == [[p.grad.data_ptr() for p in ps] for ps, _ in segments]
            results.append((per.clone(), total.clone()))
            # the two-pass path: the same bits
            per2, total2 = per.clone().fill_(-1), total.clone().fill_(-1)
            plan.sumsq([p.grad.data_ptr() for p in params], per2.data_ptr(), total2.data_ptr(), n_threads, 0, 0, 0)
            assert torch.equal(per2, per) and torch.equal(total2, total)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    ref = torch.stack([p.grad.double().pow(2).sum() for p in params])
    torch.testing.assert_close(per, ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(total, ref.sum().reshape(1), rtol=1e-12, atol=0)


def test_sumsq_collect_writes_nothing_when_it_stops_or_fails():
    params = [torch.nn.Parameter(torch.randn(700)) for _ in range(200)]  # 140K elements: 2 threads
    for p in params:
        p.grad = torch.randn_like(p)
    sp = _step_pointers()
    plan, per, total = _norm_plan_for(params)
    pptrs = _C.PtrList([p.data_ptr() for p in params])

    def unchanged():
        return bool((per == -1).all()) and float(total) == -1

    threads = max(2, torch.get_num_threads())
    params[150].grad = None  # late in the list: the other thread has reduced earlier grads by then
    assert plan.sumsq_collect(sp, [(params, pptrs)], per.data_ptr(), total.data_ptr(), threads) is None
    assert unchanged()
    params[150].grad = torch.randn(1400)[::2]  # not contiguous
    assert plan.sumsq_collect(sp, [(params, pptrs)], per.data_ptr(), total.data_ptr(), threads) is None
    assert unchanged()
    params[150].grad = torch.randn(700)
    params[7].data = torch.randn(700)  # a param moved: False, before any grad is read
    assert plan.sumsq_collect(sp, [(params, pptrs)], per.data_ptr(), total.data_ptr(), threads) is False
    assert unchanged()
    pptrs = _C.PtrList([p.data_ptr() for p in params])
    bad = list(params)

    class Boom(torch.Tensor):  # an exception raised by torch-level code midway propagates
        @property
        def grad(self):
            raise RuntimeError("boom")

    bad[120] = torch.randn(700).as_subclass(Boom)
    with pytest.raises(RuntimeError, match="boom"):
        plan.sumsq_collect(sp, [(bad, _C.PtrList([p.data_ptr() for p in bad]))], per.data_ptr(), total.data_ptr(), threads)
    assert unchanged()
    got = plan.sumsq_collect(sp, [(params, pptrs)], per.data_ptr(), total.data_ptr(), threads)
    assert list(got[0]) == [p.grad.data_ptr() for p in params]
    ref = torch.stack([p.grad.double().pow(2).sum() for p in params])
    torch.testing.assert_close(per, ref, rtol=1e-12, atol=0)


def test_streamed_step_matches_torch_with_two_groups_and_a_grad_missing_later():
    torch.manual_seed(1)
    shapes = [(300,), (40, 30), (7,), (2000,)] * 30
    ours = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    groups = lambda ps: [{"params": ps[::2]}, {"params": ps[1::2], "weight_decay": 0.1}]  # noqa: E731
    opt = playbook.optim.Adam(groups(ours), lr=1e-2, max_grad_norm=5.0)
    topt = torch.optim.Adam(groups(ref), lr=1e-2, foreach=False)
    for it in range(5):
        for i, (p, q) in enumerate(zip(ours, ref)):
            if it == 3 and i == 57:  # no grad this step: not updated (torch semantics), via the checked path
                p.grad = q.grad = None
                continue
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        want = torch.tensor([float("nan") if q.grad is None else q.grad.double().norm() for q in ref[::2] + ref[1::2]])
        opt.step()
        torch.nn.utils.clip_grad_norm_([q for q in ref if q.grad is not None], 5.0)
        topt.step()
        per = opt.grad_norms(per_tensor=True)
        torch.testing.assert_close(per.double(), want, rtol=1e-6, atol=0, equal_nan=True)
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    # every grad present again: the streamed path applies (the steps above took it too)
    for p in ours:
        p.grad = torch.randn_like(p)
    assert opt._streamed_sumsq(torch.get_num_threads()) is not None


@pytest.mark.filterwarnings("ignore:Sparse invariant checks")
@pytest.mark.parametrize("raw", [True, False], ids=["raw-data-ptr", "descriptors"])
def test_step_pointers_raise_torchs_error_for_a_tensor_without_storage(raw):
    sp = _step_pointers(raw)
    sparse = torch.sparse_coo_tensor([[0, 1]], [1.0, 2.0], (3,))
    with pytest.raises(RuntimeError, match="doesn't have storage"):
        sparse.data_ptr()
    with pytest.raises(RuntimeError, match="doesn't have storage"):
        sp.collect([sparse], _C.PtrList([0]))


@pytest.mark.parametrize("family", ["adam", "nadam", "sgd"])
def test_cached_chunk_schedule_steps_with_every_grad_some_grads_and_every_grad_again(family):
    """A plan's chunk schedule (NOTE: [Cached chunk schedule]) serves the steps in which every param
    has a grad; steps with some grads missing build their own: torch.optim's trajectory either way,
    and the same bits on one and two threads. Sizes cross chunk edges (16384) and the 64K-element
    threshold of the thread pool."""
    sizes = [16384 * 3 + 5, 7, 16384, 1, 40_000, 300] * 4

    def build(_):
        gen = torch.Generator().manual_seed(3)
        base = [torch.randn(n, generator=gen) for n in sizes]
        ours = [torch.nn.Parameter(b.clone()) for b in base]
        ref = [torch.nn.Parameter(b.clone()) for b in base]
        if family == "adam":
            opt, topt = playbook.optim.Adam(ours, lr=1e-2, max_grad_norm=2.0), torch.optim.Adam(ref, lr=1e-2, foreach=False)
        elif family == "nadam":
            opt, topt = playbook.optim.NAdam(ours, lr=1e-2, max_grad_norm=2.0), torch.optim.NAdam(ref, lr=1e-2, foreach=False)
        else:
            opt = playbook.optim.SGD(ours, lr=1e-2, momentum=0.9, nesterov=True, max_grad_norm=2.0)
            topt = torch.optim.SGD(ref, lr=1e-2, momentum=0.9, nesterov=True, foreach=False)
        for it in range(4):
            for i, (p, q) in enumerate(zip(ours, ref)):
                if it == 2 and i % 3 == 1:  # some grads missing: not the plan's schedule
                    p.grad = q.grad = None
                    continue
                p.grad = torch.randn(p.shape, generator=gen)
                q.grad = p.grad.clone()
            opt.step()
            torch.nn.utils.clip_grad_norm_([q for q in ref if q.grad is not None], 2.0)
            topt.step()
        return [p.detach().clone() for p in ours], [q.detach().clone() for q in ref]

    _assert_same_bits_on_1_and_2_threads_and_close_to_torch(build)


def test_bf16_params_in_the_denormal_range_and_nan_round_like_torch_at_every_level():
    """bf16 params whose updates land in the denormal range, and a NaN (skip_nonfinite=False): the
    one-instruction rounding (NOTE: [bf16 rounding instruction]) reads denormals as zero and keeps a
    NaN's payload, so such strips take the integer rounding. Every level gives the same bits as the
    float32 formula rounded to nearest even (torch's conversion), NaN as 0x7fc0."""
    gen = torch.Generator().manual_seed(9)
    n = 4099
    bits = torch.randint(1, 0x80, (n,), generator=gen, dtype=torch.int32)  # bf16 denormal magnitudes
    bits |= torch.randint(0, 2, (n,), generator=gen, dtype=torch.int32) << 15
    bits[::7] = torch.randint(0x0080, 0x7f00, (len(bits[::7]),), generator=gen, dtype=torch.int32)  # some normal
    start = bits.to(torch.int16).view(torch.bfloat16)
    grads = [torch.randn(n, generator=gen).to(torch.bfloat16) for _ in range(3)]
    grads[2][100] = float("nan")  # the last step writes a NaN into strip 6 (skip_nonfinite=False)
    results = {}
    for level in _levels():
        assert _C.set_simd_level(level)
        try:
            p = torch.nn.Parameter(start.clone())
            opt = playbook.optim.Adam([p], lr=1e-39, max_grad_norm=None, skip_nonfinite=False)
            for g in grads:
                p.grad = g.clone()
                opt.step()
            results[level] = p.detach().clone()
        finally:
            _C.set_simd_level("auto")
    ref = start.float()
    m = torch.zeros(n)
    v = torch.zeros(n)
    for t, g in enumerate(grads, start=1):
        gf = g.float()
        m = torch.lerp(m, gf, 0.1)
        v = v * 0.999 + 0.001 * gf * gf
        step_size = torch.tensor(1e-39 / (1 - 0.9 ** t), dtype=torch.float64).float()
        inv_bc2_sqrt = torch.tensor(1 / (1 - 0.999 ** t) ** 0.5, dtype=torch.float64).float()
        ref = (ref + (-step_size) * m / (torch.sqrt(v) * inv_bc2_sqrt + 1e-8)).to(torch.bfloat16).float()
    want = ref.to(torch.bfloat16).view(torch.int16)
    assert (want.view(torch.bfloat16).float().abs() < 1.2e-38).sum() > n // 2  # most stayed denormal
    assert torch.isnan(ref[100])
    want[100] = 0x7FC0  # the NaN of c10::BFloat16's scalar rounding (torch's vectorized .to() keeps the payload)
    for level, got in results.items():
        assert torch.equal(got.view(torch.int16), want), level
