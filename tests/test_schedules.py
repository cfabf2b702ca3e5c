"""playbook.schedules against closed forms (float64) and torch's own schedulers."""

from __future__ import annotations

import math
import pickle

import pytest
import torch

from playbook import schedules


@pytest.mark.parametrize("f", [0.0, 0.1])
def test_linear_decay_closed_form(f):
    fn = schedules.linear_decay(100, final_fraction=f)
    for t in (0, 1, 25, 50, 99, 100, 101, 1000):
        assert fn(t) == pytest.approx(1 - (1 - f) * min(t, 100) / 100, abs=1e-15)
    assert fn(0) == 1.0 and fn(100) == pytest.approx(f) and fn(500) == pytest.approx(f)


@pytest.mark.parametrize("f", [0.0, 0.05])
def test_cosine_decay_closed_form(f):
    fn = schedules.cosine_decay(200, final_fraction=f)
    for t in (0, 1, 50, 100, 150, 199, 200, 300):
        expected = f + (1 - f) * (1 + math.cos(math.pi * min(t, 200) / 200)) / 2
        assert fn(t) == pytest.approx(expected, abs=1e-15)
    assert fn(100) == pytest.approx(f + (1 - f) / 2)


def test_rsqrt_constant_and_warmup_closed_forms():
    r = schedules.rsqrt_decay(10)
    assert [r(t) for t in (0, 10, 30)] == pytest.approx([1.0, 1 / math.sqrt(2), 0.5])
    assert schedules.constant()(12345) == 1.0
    # playbook: 10,000 max_train_steps + 1,000 warmup steps = 11,000 steps in total
    w = schedules.warmup(schedules.linear_decay(10_000), warmup_steps=1_000)
    assert [w(0), w(250), w(999), w(1_000), w(6_000), w(11_000)] == pytest.approx([0.0, 0.25, 0.999, 1.0, 0.5, 0.0])
    assert schedules.warmup(r, 0) is r


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: schedules.linear_decay(0), "total_steps"),
        (lambda: schedules.cosine_decay(10, final_fraction=1.5), "final_fraction"),
        (lambda: schedules.rsqrt_decay(0), "timescale"),
        (lambda: schedules.warmup(schedules.constant(), -1), "warmup_steps"),
        (lambda: schedules.warmup(3.0, 10), "callable"),
        (lambda: schedules.constant()(-1), "step"),
        (lambda: schedules.linear_decay(10)(1.5), "step"),
    ],
)
def test_invalid_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def _lrs(sched, opt, steps):
    out = [[g["lr"] for g in opt.param_groups]]
    for _ in range(steps):
        opt.step()
        sched.step()
        out.append([float(g["lr"]) for g in opt.param_groups])
    return out


def _two_group_opt(lr_a=0.1, lr_b=0.02):
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    return torch.optim.SGD([{"params": [a], "lr": lr_a}, {"params": [b], "lr": lr_b}], lr=lr_a)


def test_matches_torch_cosine_annealing_and_linear_lr_per_group():
    T = 37
    ours = _two_group_opt()
    theirs = _two_group_opt()
    got = _lrs(schedules.scheduler(ours, schedules.cosine_decay(T, final_fraction=0.0)), ours, T)
    ref = _lrs(torch.optim.lr_scheduler.CosineAnnealingLR(theirs, T_max=T, eta_min=0.0), theirs, T)
    torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), torch.tensor(ref, dtype=torch.float64),
                               rtol=1e-9, atol=1e-12)

    ours = _two_group_opt()
    theirs = _two_group_opt()
    got = _lrs(schedules.scheduler(ours, schedules.linear_decay(T, final_fraction=0.25)), ours, T + 5)
    ref = _lrs(torch.optim.lr_scheduler.LinearLR(theirs, start_factor=1.0, end_factor=0.25, total_iters=T), theirs, T + 5)
    torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), torch.tensor(ref, dtype=torch.float64),
                               rtol=1e-9, atol=1e-12)


def test_scheduler_sets_base_lr_times_multiplier_and_round_trips_state_dict():
    fn = schedules.warmup(schedules.cosine_decay(20, 0.1), 5)
    opt = _two_group_opt(0.3, 0.03)
    sched = schedules.scheduler(opt, fn)
    lrs = _lrs(sched, opt, 12)
    for t, row in enumerate(lrs):
        assert row == pytest.approx([0.3 * fn(t), 0.03 * fn(t)], rel=1e-12, abs=1e-15)
    state = pickle.loads(pickle.dumps(sched.state_dict()))
    assert "fn" not in state and "optimizer" not in state
    opt2 = _two_group_opt(0.3, 0.03)
    sched2 = schedules.scheduler(opt2, fn)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(state)
    assert _lrs(sched2, opt2, 8)[1:] == _lrs(sched, opt, 8)[1:]
    assert isinstance(sched, torch.optim.lr_scheduler.LRScheduler)


def test_tensor_lr_is_written_in_place():
    p = torch.nn.Parameter(torch.zeros(2))
    lr = torch.tensor(0.5)
    opt = torch.optim.Adam([p], lr=lr, capturable=False)
    tensor_lr = opt.param_groups[0]["lr"]
    sched = schedules.scheduler(opt, schedules.warmup(schedules.constant(), 4))
    assert tensor_lr.item() == 0.0
    for t in range(1, 7):
        p.grad = torch.ones(2)
        opt.step()
        sched.step()
        assert opt.param_groups[0]["lr"] is tensor_lr
        assert tensor_lr.item() == pytest.approx(0.5 * min(t / 4, 1.0))


def test_schedules_pickle():
    fn = schedules.warmup(schedules.rsqrt_decay(100), 10)
    assert pickle.loads(pickle.dumps(fn))(57) == fn(57)
