"""Optimizer edge cases (issue 7, items 1, 2, 4, 5, 6), against torch.optim where the semantics
match: load_state_dict pre-hooks, groups without grads, the all-or-nothing step, deepcopy and
pickle of the norm statistics, repr and construction-time checks, and torch.compile."""

from __future__ import annotations

import contextlib
import copy
import logging
import pickle
import warnings

import pytest
import torch

import playbook

STATEFUL = [
    ("adam", playbook.optim.Adam, torch.optim.Adam, dict(lr=1e-2)),
    ("adam-amsgrad", playbook.optim.Adam, torch.optim.Adam, dict(lr=1e-2, amsgrad=True, weight_decay=1e-2)),
    ("adamw-amsgrad", playbook.optim.AdamW, torch.optim.AdamW, dict(lr=1e-2, amsgrad=True, weight_decay=0.1)),
    ("nadam", playbook.optim.NAdam, torch.optim.NAdam, dict(lr=1e-2)),
    ("sgd-momentum", playbook.optim.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.1)),
    ("sgd-nesterov", playbook.optim.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True)),
]
STATEFUL_IDS = [f[0] for f in STATEFUL]
BUFFERS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer")


def _params(shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]


def _clone(params):
    return [torch.nn.Parameter(p.detach().clone()) for p in params]


def _set_grads(params, gen):
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)


def _assert_state_close(pb_opt, torch_opt, pb_params, torch_params):
    """The moments and step counts of every param match torch's (and exist for the same params)."""
    for p, q in zip(pb_params, torch_params):
        assert (p in pb_opt.state) == (q in torch_opt.state)
        for key, value in torch_opt.state.get(q, {}).items():
            if key in BUFFERS or key in ("step", "mu_product"):
                torch.testing.assert_close(pb_opt.state[p][key], value.float(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- 1. load pre-hooks
def _trained_torch(torch_cls, kwargs, params, steps=3, seed=1):
    opt = torch_cls(params, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        _set_grads([p for _, p in params] if isinstance(params[0], tuple) else params, gen)
        opt.step()
    return opt


def _halve_buffers(opt, state_dict):
    """A pre-hook that edits the loaded state by returning a new dict (torch's documented use)."""
    state = {
        k: {key: v * 0.5 if key in BUFFERS else v for key, v in st.items()} for k, st in state_dict["state"].items()
    }
    return {**state_dict, "state": state}


@pytest.mark.parametrize("family", STATEFUL, ids=STATEFUL_IDS)
def test_load_state_dict_uses_state_returned_by_pre_hook(family):
    _, pb_cls, torch_cls, kwargs = family
    src = _params([(5, 3), (3,)])
    sd = _trained_torch(torch_cls, kwargs, src).state_dict()
    pb_params, t_params = _clone(src), _clone(src)
    pb_opt, t_opt = pb_cls(pb_params, **kwargs), torch_cls(t_params, **kwargs)
    for opt in (pb_opt, t_opt):
        opt.register_load_state_dict_pre_hook(_halve_buffers)
        opt.load_state_dict(sd)
    _assert_state_close(pb_opt, t_opt, pb_params, t_params)
    gen_a, gen_b = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for _ in range(3):
        _set_grads(pb_params, gen_a)
        _set_grads(t_params, gen_b)
        pb_opt.step()
        t_opt.step()
    for p, q in zip(pb_params, t_params):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def _remap_by_name(opt, state_dict):
    """A pre-hook that matches saved params to the optimizer's by name (torch's suggested use)."""
    groups = []
    for saved, current in zip(state_dict["param_groups"], opt.param_groups):
        ids = dict(zip(saved["param_names"], saved["params"]))
        groups.append({**saved, "params": [ids[n] for n in current["param_names"]], "param_names": current["param_names"]})
    return {**state_dict, "param_groups": groups}


@pytest.mark.parametrize("family", STATEFUL, ids=STATEFUL_IDS)
def test_load_state_dict_follows_ids_remapped_by_pre_hook(family):
    _, pb_cls, torch_cls, kwargs = family
    w1, w2, b = _params([(4, 3), (4, 3), (3,)])  # w1 and w2 alike: a mix-up would not fail on shape
    src_opt = _trained_torch(torch_cls, kwargs, [("w1", w1), ("w2", w2), ("b", b)])
    sd = src_opt.state_dict()
    pb_params, t_params = _clone([w2, w1, b]), _clone([w2, w1, b])  # another order in the new model
    pb_opt = pb_cls(list(zip(["w2", "w1", "b"], pb_params)), **kwargs)
    t_opt = torch_cls(list(zip(["w2", "w1", "b"], t_params)), **kwargs)
    for opt in (pb_opt, t_opt):
        opt.register_load_state_dict_pre_hook(_remap_by_name)
        opt.load_state_dict(sd)
    _assert_state_close(pb_opt, t_opt, pb_params, t_params)
    key = "momentum_buffer" if pb_cls is playbook.optim.SGD else "exp_avg"
    assert torch.equal(pb_opt.state[pb_params[0]][key], src_opt.state[w2][key])
    assert torch.equal(pb_opt.state[pb_params[1]][key], src_opt.state[w1][key])


def test_load_state_dict_post_hook_sees_the_float32_buffers():
    p = torch.nn.Parameter(torch.randn(4, 3).bfloat16())
    src = playbook.optim.Adam([p])
    p.grad = torch.randn(4, 3).bfloat16()
    src.step()
    q = torch.nn.Parameter(p.detach().clone())
    opt = playbook.optim.Adam([q])
    seen = []
    opt.register_load_state_dict_post_hook(lambda o: seen.append(o.state[q]["exp_avg"].dtype))
    opt.load_state_dict(src.state_dict())
    assert seen == [torch.float32]
    assert torch.equal(opt.state[q]["exp_avg"], src.state[p]["exp_avg"])


def test_load_state_dict_refuses_a_misshapen_buffer_before_writing():
    src = _params([(4, 3), (3,)])
    sd = _trained_torch(torch.optim.Adam, {}, src).state_dict()
    sd["state"][1]["exp_avg_sq"] = torch.zeros(5)
    params = _clone(src)
    opt = playbook.optim.Adam(params)
    with pytest.raises(ValueError, match=r"'exp_avg_sq' has shape \(5,\), but its param has shape \(3,\)"):
        opt.load_state_dict(sd)
    assert len(opt.state) == 0


# ---------------------------------------------------------------------------- 2. groups without grads
@pytest.mark.parametrize("family", STATEFUL, ids=STATEFUL_IDS)
def test_groups_without_grads_are_skipped_like_torch(family):
    """A step before any backward, a group whose params get grads only from step 3, and a frozen
    group kept in the optimizer: same params and state as torch.optim at every step."""
    _, pb_cls, torch_cls, kwargs = family
    src = _params([(5, 3), (3,), (4,), (2, 2)])
    pb_params, t_params = _clone(src), _clone(src)

    def groups(ps):
        return [{"params": ps[:2]}, {"params": [ps[2]], "lr": 0.02}, {"params": [ps[3]]}]

    pb_opt, t_opt = pb_cls(groups(pb_params), **kwargs), torch_cls(groups(t_params), **kwargs)
    pb_opt.step()  # before any backward: nothing to do
    t_opt.step()
    assert len(pb_opt.state) == 0 and pb_opt.steps_seen == 0
    assert all(torch.equal(p, q) for p, q in zip(pb_params, src))
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for step in range(1, 7):
        live = 3 if step >= 3 else 2  # param 3 (the frozen group) never gets a grad
        for ps, gen in ((pb_params, gen_a), (t_params, gen_b)):
            for p in ps:
                p.grad = None
            _set_grads(ps[:live], gen)
        pb_opt.step()
        t_opt.step()
        for p, q in zip(pb_params, t_params):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    _assert_state_close(pb_opt, t_opt, pb_params, t_params)
    assert pb_params[3] not in pb_opt.state and torch.equal(pb_params[3], src[3])
    assert pb_opt.steps_seen == 6


# ---------------------------------------------------------------------------- 2. all-or-nothing step
def _snapshot(opt, params):
    state = {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in params if p in opt.state}
    return [p.detach().clone() for p in params], state, opt.steps_seen, opt.grad_norms()


def _assert_untouched(opt, params, snap):
    values, state, seen, norms = snap
    for p, v in zip(params, values):
        assert torch.equal(p, v)
    assert {id(p) for p in params if p in opt.state} == set(state)
    for p in params:
        for k, v in state.get(id(p), {}).items():
            assert torch.equal(opt.state[p][k], v), k
    assert opt.steps_seen == seen
    assert torch.equal(opt.grad_norms(), norms)


def _break_variant(opt, params):
    opt.param_groups[1]["variant"] = "keras"


def _break_eps(opt, params):
    opt.param_groups[1]["eps"] = -1e-8


def _break_dampening(opt, params):
    opt.param_groups[1]["dampening"] = "none"


def _break_lr(opt, params):
    opt.param_groups[1]["lr"] = -0.5


def _break_grad_layout(opt, params):
    p = params[2]
    p.grad = torch.randn(p.shape[1], p.shape[0]).t()


def _break_param_dtype(opt, params):
    params[2].data = params[2].data.double()


def _break_grad_shape(opt, params):
    params[2].data = torch.randn(7)  # the grad (4, 2) no longer fits the param


BREAKS = [
    (playbook.optim.Adam, dict(amsgrad=True), _break_variant, ValueError, "Unknown variant: 'keras'"),
    (playbook.optim.Adam, {}, _break_eps, ValueError, "Invalid epsilon value: -1e-08"),
    (playbook.optim.NAdam, {}, _break_lr, ValueError, "Invalid learning rate: -0.5"),
    (playbook.optim.SGD, dict(momentum=0.9), _break_dampening, ValueError, "Invalid dampening value: 'none'"),
    (playbook.optim.SGD, dict(momentum=0.9), _break_grad_layout, ValueError, "stride"),
    (playbook.optim.Adam, {}, _break_param_dtype, TypeError, "param 0 of param group 1 has dtype torch.float64"),
    (playbook.optim.AdamW, {}, _break_grad_shape, ValueError, r"grad of param 0 of param group 1 has shape \(4, 2\)"),
]


@pytest.mark.parametrize("fresh", [False, True], ids=["trained", "fresh"])
@pytest.mark.parametrize("cls, kwargs, brk, exc, match", BREAKS, ids=[b[2].__name__[7:] for b in BREAKS])
def test_failing_check_in_group_2_leaves_group_1_untouched(cls, kwargs, brk, exc, match, fresh):
    """Group 1 is updated by the kernels only once every check of every group has passed;
    ``fresh``: group 1 gets its first grads in the failing step (no state may appear)."""
    params = _params([(5, 3), (3,), (4, 2)])
    opt = cls([{"params": params[:2]}, {"params": params[2:]}], lr=0.01, max_grad_norm=1.0, **kwargs)
    gen = torch.Generator().manual_seed(5)
    if not fresh:
        for _ in range(2):
            _set_grads(params, gen)
            opt.step()
    _set_grads(params, gen)
    brk(opt, params)
    snap = _snapshot(opt, params)
    with pytest.raises(exc, match=match):
        opt.step()
    _assert_untouched(opt, params, snap)


# ---------------------------------------------------------------------------- 4. deepcopy / pickle
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_deepcopy_and_pickle_keep_norm_statistics(how):
    params = _params([(5, 3), (3,)])
    opt = playbook.optim.Adam(params, lr=1e-2, max_grad_norm=1.5, history=8)
    gen = torch.Generator().manual_seed(2)
    for step in range(6):
        _set_grads(params, gen)
        if step % 2:  # norm about 0.4: not clipped
            for p in params:
                p.grad *= 0.1
        if step == 3:
            params[1].grad[0] = float("inf")
        opt.step()
    assert opt.skipped_steps == 1 and 0.0 < opt.clip_fraction() < 1.0
    new = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    assert torch.equal(new.grad_norms(), opt.grad_norms())
    assert new.skipped_steps == 1 and new.steps_seen == 6
    assert new.clip_fraction() == opt.clip_fraction()
    # the copy goes on like the original, and is independent of it
    new_params = [p for g in new.param_groups for p in g["params"]]
    gen_a, gen_b = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    _set_grads(params, gen_a)
    _set_grads(new_params, gen_b)
    opt.step()
    new.step()
    for p, q in zip(params, new_params):
        assert torch.equal(p, q)
    assert torch.equal(new.grad_norms(), opt.grad_norms())
    new_params[0].grad = None
    new.step()
    assert new.steps_seen == 8 and opt.steps_seen == 7


# ---------------------------------------------------------------------------- 5. repr, construction
def test_repr_shows_the_playbook_settings():
    opt = playbook.optim.NAdam(_params([(3,)]), max_grad_norm=2.5, variant="playbook", skip_nonfinite=False, history=7)
    text = repr(opt)
    for line in ("variant: playbook", "max_grad_norm: 2.5", "skip_nonfinite: False", "history: 7"):
        assert f"    {line}\n" in text, line
    assert text.startswith("NAdam (\nParameter Group 0\n") and text.endswith(")")
    assert "max_grad_norm: None" in repr(playbook.optim.SGD(_params([(3,)]), lr=0.1))


def _as_float64(p):
    return p.detach().double()


def _as_transposed(p):
    return torch.randn(p.shape[1], p.shape[0]).t()


@pytest.mark.parametrize(
    "make_bad, exc", [(_as_float64, TypeError), (_as_transposed, ValueError)], ids=["float64", "non-contiguous"]
)
def test_bad_params_are_refused_at_construction_and_add_param_group(make_bad, exc):
    """The same message as step() gives for the same param; nothing is added."""
    a, b = _params([(3,), (4, 2)])
    # at step(): b becomes bad after construction
    opt = playbook.optim.Adam([a, b])
    b.data = make_bad(b)
    b.grad = torch.zeros_like(b)
    with pytest.raises(exc) as at_step:
        opt.step()
    bad = torch.nn.Parameter(b.detach().clone() if make_bad is _as_float64 else make_bad(b))
    assert bad.stride() == b.stride() and bad.dtype == b.dtype
    with pytest.raises(exc) as at_init:
        playbook.optim.Adam([a, bad])
    assert str(at_init.value) == str(at_step.value)
    assert "param 1 of param group 0" in str(at_init.value)
    with pytest.raises(exc) as named:
        playbook.optim.SGD([("a", a), ("bad", bad)], lr=0.1)
    assert str(named.value) == str(at_step.value)
    # add_param_group: the group's index in the message, and the optimizer unchanged
    c = torch.nn.Parameter(torch.randn(2))
    opt2 = playbook.optim.AdamW([c])
    with pytest.raises(exc) as added:
        opt2.add_param_group({"params": (p for p in [a, bad])})
    assert str(added.value) == str(at_step.value).replace("param group 0", "param group 1")
    assert len(opt2.param_groups) == 1
    opt2.add_param_group({"params": (p for p in [a])})  # a generator of good params is read once
    assert opt2.param_groups[1]["params"] == [a]


def test_channels_last_params_are_accepted_and_match_torch():
    src = torch.randn(4, 3, 3, 3).to(memory_format=torch.channels_last)
    p, q = torch.nn.Parameter(src.clone()), torch.nn.Parameter(src.clone())
    assert not p.is_contiguous()
    opt_p, opt_q = playbook.optim.Adam([p], lr=1e-2), torch.optim.Adam([q], lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        g = torch.randn(4, 3, 3, 3, generator=gen).to(memory_format=torch.channels_last)
        p.grad, q.grad = g.clone(), g.clone()
        opt_p.step()
        opt_q.step()
    torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert opt_p.state[p]["exp_avg"].stride() == p.stride()


# ---------------------------------------------------------------------------- 6. torch.compile
def _compile_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def _regression_batches(n):
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(8, 1, generator=gen)
    for _ in range(n):
        x = torch.randn(32, 8, generator=gen)
        yield x, x @ w


@contextlib.contextmanager
def _torch_log_warnings():
    """Collect WARNING+ records of torch's compiler loggers (they do not propagate to the root)."""
    records: list[logging.LogRecord] = []

    class _Collect(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = _Collect(level=logging.WARNING)
    loggers = [logging.getLogger(name) for name in ("torch", "torch._dynamo", "torch._inductor")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield records
    finally:
        for lg in loggers:
            lg.removeHandler(handler)


# Importing inductor emits this DeprecationWarning from torch itself (torch 2.13), whatever is compiled.
TORCH_JIT_DEPRECATION = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"


@pytest.mark.filterwarnings(TORCH_JIT_DEPRECATION)
@pytest.mark.parametrize("what", ["step", pytest.param("model-and-step", marks=pytest.mark.slow)])
def test_compiled_step_trains_like_eager_without_warnings(what):
    """torch.compile(opt.step), alone and with a compiled model: no warning, no graph-break or
    recompile log, the loss goes down and the params follow the eager run."""
    torch._dynamo.reset()
    eager, model = _compile_model(), _compile_model()
    opt_e = playbook.optim.Adam(eager.parameters(), lr=1e-2, max_grad_norm=1.0, amsgrad=True)
    opt_c = playbook.optim.Adam(model.parameters(), lr=1e-2, max_grad_norm=1.0, amsgrad=True)
    compiled = torch.compile(model) if what == "model-and-step" else model
    compiled_step = torch.compile(opt_c.step)

    def train_step(model, step, opt, x, y):
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        step()
        opt.zero_grad()
        return loss.item()

    losses = []
    with warnings.catch_warnings(record=True) as caught, _torch_log_warnings() as logged:
        warnings.filterwarnings("ignore", message="`torch.jit.script_method` is deprecated", category=DeprecationWarning)
        for x, y in _regression_batches(25):
            train_step(eager, opt_e.step, opt_e, x, y)
            losses.append(train_step(compiled, compiled_step, opt_c, x, y))
    assert [str(w.message) for w in caught] == []
    assert [r.getMessage() for r in logged] == []
    assert losses[-1] < 0.5 * losses[0]
    for p, q in zip(model.parameters(), eager.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    assert opt_c.steps_seen == 25
    torch.testing.assert_close(opt_c.grad_norms(), opt_e.grad_norms(), rtol=1e-4, atol=1e-6)
