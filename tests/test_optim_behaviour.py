"""playbook.optim as a user meets it: parity with torch.optim + clip_grad_norm_, skipped steps,
state dicts both ways, schedulers, GradScaler, threads, SIMD levels and bad input."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

import playbook
from playbook import _C
from conftest import DEVICES

FAMILIES = [
    ("adam", playbook.optim.Adam, torch.optim.Adam, dict(lr=1e-3)),
    ("adamw", playbook.optim.AdamW, torch.optim.AdamW, dict(lr=1e-3, weight_decay=0.1)),
    ("adam-amsgrad", playbook.optim.Adam, torch.optim.Adam, dict(lr=1e-3, amsgrad=True, weight_decay=1e-3)),
    ("nadam", playbook.optim.NAdam, torch.optim.NAdam, dict(lr=2e-3, weight_decay=1e-3)),
    ("nadam-decoupled", playbook.optim.NAdam, torch.optim.NAdam, dict(lr=2e-3, weight_decay=1e-2, decoupled_weight_decay=True)),
    ("sgd-nesterov", playbook.optim.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)),
    ("sgd-dampening", playbook.optim.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.1)),
]
FAMILY_IDS = [f[0] for f in FAMILIES]


def _model(seed=0, device="cpu", dtype=torch.float32):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(20, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 3)
    )
    return model.to(device=device, dtype=dtype)


def _batches(n, device="cpu", seed=1):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(32, 20, generator=gen)
        y = torch.randint(0, 3, (32,), generator=gen)
        yield x.to(device), y.to(device)


def _loss(model, x, y):
    return torch.nn.functional.cross_entropy(model(x.to(next(model.parameters()).dtype)), y)


def _train_pair(pb_cls, torch_cls, kwargs, steps, max_norm, device="cpu"):
    a, b = _model(device=device), _model(device=device)
    opt_a = pb_cls(a.parameters(), max_grad_norm=max_norm, **kwargs)
    opt_b = torch_cls(b.parameters(), **kwargs)
    for x, y in _batches(steps, device):
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            _loss(model, x, y).backward()
        torch.nn.utils.clip_grad_norm_(b.parameters(), max_norm)
        opt_a.step()
        opt_b.step()
    return a, b, opt_a, opt_b


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_trajectory_matches_torch_with_clip_grad_norm(family, device):
    """120 steps of a small MLP: torch.optim.X + clip_grad_norm_ vs playbook.optim.X(max_grad_norm)."""
    _, pb_cls, torch_cls, kwargs = family
    a, b, opt_a, _ = _train_pair(pb_cls, torch_cls, kwargs, 120, 0.5, device)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5)
    assert opt_a.steps_seen == 120
    assert 0.0 < opt_a.clip_fraction() <= 1.0


def test_grad_norms_are_the_unclipped_global_norm():
    model = _model()
    opt = playbook.optim.Adam(model.parameters(), lr=1e-3, max_grad_norm=0.1)
    expected = []
    for x, y in _batches(10):
        opt.zero_grad()
        _loss(model, x, y).backward()
        expected.append(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters())).item())
        per = [p.grad.double().norm().item() for p in model.parameters()]
        opt.step()
        torch.testing.assert_close(opt.grad_norms(per_tensor=True).double(), torch.tensor(per, dtype=torch.float64), rtol=1e-6, atol=0)
    norms = opt.grad_norms()
    assert norms.dtype == torch.float32 and norms.device.type == "cpu"
    torch.testing.assert_close(norms.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=0)


def test_history_ring_keeps_the_most_recent_steps():
    p = torch.nn.Parameter(torch.zeros(4))
    opt = playbook.optim.SGD([p], lr=0.0, history=5)
    for k in range(1, 13):
        p.grad = torch.full((4,), float(k))  # norm = 2k
        opt.step()
    assert opt.grad_norms().tolist() == [2.0 * k for k in range(8, 13)]
    assert opt.steps_seen == 12


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_nonfinite_grad_skips_step_and_leaves_everything_bit_identical(family, bad, device):
    _, pb_cls, _, kwargs = family
    model = _model(device=device)
    opt = pb_cls(model.parameters(), max_grad_norm=1.0, **kwargs)
    batches = list(_batches(4, device))
    for x, y in batches[:2]:
        opt.zero_grad()
        _loss(model, x, y).backward()
        opt.step()
    params_before = [p.detach().clone() for p in model.parameters()]
    state_before = copy.deepcopy(opt.state_dict()["state"])
    opt.zero_grad()
    _loss(model, *batches[2]).backward()
    next(model.parameters()).grad.view(-1)[7] = bad  # one element of one gradient
    opt.step()
    assert opt.skipped_steps == 1
    for p, q in zip(model.parameters(), params_before):
        assert torch.equal(p, q)
    state_after = opt.state_dict()["state"]
    for k, st in state_before.items():
        for key, value in st.items():
            assert torch.equal(state_after[k][key], value), key
    last = opt.grad_norms()[-1].item()
    assert last != last or abs(last) == float("inf")
    # and training goes on normally
    opt.zero_grad()
    _loss(model, *batches[3]).backward()
    opt.step()
    assert opt.skipped_steps == 1 and opt.steps_seen == 4
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), params_before))
    if "step" in state_after[0]:
        assert opt.state_dict()["state"][0]["step"].item() == 3.0


def test_skip_nonfinite_false_applies_the_step():
    p = torch.nn.Parameter(torch.ones(3))
    opt = playbook.optim.SGD([p], lr=0.1, skip_nonfinite=False)
    p.grad = torch.tensor([1.0, float("nan"), 1.0])
    opt.step()
    assert opt.skipped_steps == 0
    assert torch.isnan(p[1]) and p[0].item() == pytest.approx(0.9)


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_state_dict_from_torch_to_playbook_and_back_mid_training(family):
    _, pb_cls, torch_cls, kwargs = family
    # torch trains 15 steps, playbook takes over for 15, torch takes over again for 15;
    # a torch-only run with clip_grad_norm_ is the reference.
    ref = _model()
    ref_opt = torch_cls(ref.parameters(), **kwargs)
    model = _model()
    opt_t = torch_cls(model.parameters(), **kwargs)
    batches = list(_batches(45))

    def torch_step(m, o, x, y):
        o.zero_grad()
        _loss(m, x, y).backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        o.step()

    for x, y in batches:
        torch_step(ref, ref_opt, x, y)
    for x, y in batches[:15]:
        torch_step(model, opt_t, x, y)
    opt_p = pb_cls(model.parameters(), max_grad_norm=1.0, **kwargs)
    opt_p.load_state_dict(opt_t.state_dict())
    for x, y in batches[15:30]:
        opt_p.zero_grad()
        _loss(model, x, y).backward()
        opt_p.step()
    opt_t2 = torch_cls(model.parameters(), **kwargs)
    opt_t2.load_state_dict(opt_p.state_dict())
    for x, y in batches[30:]:
        torch_step(model, opt_t2, x, y)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_state_dict_round_trip_keeps_fp32_state_and_norm_history():
    model = _model(dtype=torch.bfloat16)
    opt = playbook.optim.Adam(model.parameters(), lr=1e-3, max_grad_norm=1.0, history=8)
    for x, y in _batches(5):
        opt.zero_grad()
        _loss(model, x, y).backward()
        opt.step()
    sd = opt.state_dict()
    clone = _model(dtype=torch.bfloat16)
    clone.load_state_dict(model.state_dict())
    opt2 = playbook.optim.Adam(clone.parameters(), lr=1e-3, max_grad_norm=1.0, history=8)
    opt2.load_state_dict(sd)
    for k, st in opt.state_dict()["state"].items():
        for key, value in st.items():
            assert opt2.state_dict()["state"][k][key].dtype == torch.float32
            assert torch.equal(opt2.state_dict()["state"][k][key], value)
    assert torch.equal(opt2.grad_norms(), opt.grad_norms())
    for x, y in _batches(3, seed=5):
        for m, o in ((model, opt), (clone, opt2)):
            o.zero_grad()
            _loss(m, x, y).backward()
            o.step()
    for p, q in zip(model.parameters(), clone.parameters()):
        assert torch.equal(p, q)
    # and torch.optim.Adam accepts the state dict (extra key, fp32 state for bf16 params)
    torch.optim.Adam(_model(dtype=torch.bfloat16).parameters()).load_state_dict(sd)


def test_lr_scheduler_matches_torch():
    a, b = _model(), _model()
    opt_a = playbook.optim.SGD(a.parameters(), lr=0.1, momentum=0.9, max_grad_norm=1.0)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9)
    sched_a = torch.optim.lr_scheduler.OneCycleLR(opt_a, max_lr=0.2, total_steps=40)
    sched_b = torch.optim.lr_scheduler.OneCycleLR(opt_b, max_lr=0.2, total_steps=40)
    for x, y in _batches(40):
        for m, o in ((a, opt_a), (b, opt_b)):
            o.zero_grad()
            _loss(m, x, y).backward()
        torch.nn.utils.clip_grad_norm_(b.parameters(), 1.0)
        opt_a.step()
        opt_b.step()
        sched_a.step()
        sched_b.step()
    assert opt_a.param_groups[0]["lr"] == opt_b.param_groups[0]["lr"]
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_tensor_lr_is_read_from_memory():
    p = torch.nn.Parameter(torch.ones(5))
    lr = torch.tensor(0.5)
    opt = playbook.optim.SGD([p], lr=lr)
    p.grad = torch.ones(5)
    opt.step()
    lr.fill_(0.25)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.full((5,), 1 - 0.5 - 0.25))


def test_param_groups_and_params_without_grads():
    model = _model()
    layers = [m for m in model if isinstance(m, torch.nn.Linear)]
    frozen = layers[1].bias
    opt = playbook.optim.Adam(
        [{"params": layers[0].parameters(), "lr": 1e-2}, {"params": list(layers[1].parameters()) + list(layers[2].parameters())}],
        lr=1e-3, max_grad_norm=1.0,
    )
    frozen.requires_grad_(False)
    before = frozen.detach().clone()
    for x, y in _batches(3):
        opt.zero_grad()
        _loss(model, x, y).backward()
        opt.step()
    assert torch.equal(frozen, before)
    assert frozen not in opt.state
    assert len(opt.state) == 5
    frozen.requires_grad_(True)
    for x, y in _batches(2, seed=3):
        opt.zero_grad()
        _loss(model, x, y).backward()
        opt.step()
    assert opt.state[frozen]["step"].item() == 2.0
    assert opt.state[layers[0].weight]["step"].item() == 5.0
    extra = torch.nn.Parameter(torch.randn(7))
    opt.add_param_group({"params": [extra], "lr": 0.1})
    extra.grad = torch.ones(7)
    opt.step()
    assert opt.state[extra]["step"].item() == 1.0
    assert opt.grad_norms(per_tensor=True).numel() == 7


@pytest.mark.parametrize("scaler_cls", [torch.amp.GradScaler, playbook.amp.GradScaler], ids=["torch-scaler", "playbook-scaler"])
def test_grad_scaler(scaler_cls):
    """scaler.step(opt) unscales inside the fused kernels: same trajectory as torch's
    unscale_ + clip_grad_norm_ + step; an overflow skips the step and halves the scale."""
    a, b = _model(), _model()
    opt_a = playbook.optim.Adam(a.parameters(), lr=1e-3, max_grad_norm=0.5)
    opt_b = torch.optim.Adam(b.parameters(), lr=1e-3)
    sa = scaler_cls("cpu", init_scale=1024.0, growth_interval=3)
    sb = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3)
    for i, (x, y) in enumerate(_batches(12)):
        for m, o, s in ((a, opt_a, sa), (b, opt_b, sb)):
            o.zero_grad()
            s.scale(_loss(m, x, y)).backward()
            if i == 5:
                next(m.parameters()).grad.view(-1)[0] = float("inf")
        sb.unscale_(opt_b)
        torch.nn.utils.clip_grad_norm_(b.parameters(), 0.5)
        sa.step(opt_a)
        sb.step(opt_b)
        sa.update()
        sb.update()
        assert sa.get_scale() == sb.get_scale()
    assert opt_a.skipped_steps == 1
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    norms = opt_a.grad_norms()
    assert norms.numel() == 12 and norms[5].item() == float("inf")


def test_playbook_grad_scaler_skips_torchs_inf_check_pass(monkeypatch):
    calls = []
    orig = torch.amp.GradScaler._unscale_grads_
    monkeypatch.setattr(torch.amp.GradScaler, "_unscale_grads_", lambda *a, **k: calls.append(1) or orig(*a, **k))
    model = _model()
    opt = playbook.optim.Adam(model.parameters(), lr=1e-3, max_grad_norm=1.0)
    scaler = playbook.amp.GradScaler("cpu")
    for x, y in _batches(3):
        opt.zero_grad()
        scaler.scale(_loss(model, x, y)).backward()
        scaler.step(opt)
        scaler.update()
    assert calls == []


def test_norms_bitwise_identical_across_thread_counts_and_simd_levels():
    gen = torch.Generator().manual_seed(3)
    sizes = (1, 17, 16384 * 5 + 3, 600001, 4099, 70001)  # > 512K elements: both threads work
    dtypes = (torch.float32,) * 4 + (torch.bfloat16, torch.float16)
    grads = [(torch.randn(n, generator=gen) * 3).to(dt) for n, dt in zip(sizes, dtypes)]
    results = []
    levels = playbook.build_info()["simd_levels"]
    try:
        for level in levels:
            if not _C.set_simd_level(level):
                continue  # this CPU lacks the level
            for threads in (1, 2):
                torch.set_num_threads(threads)
                params = [torch.nn.Parameter(torch.ones(n, dtype=dt)) for n, dt in zip(sizes, dtypes)]
                opt = playbook.optim.Adam(params, lr=1e-3, max_grad_norm=1.0)
                for p, g in zip(params, grads):
                    p.grad = g.clone()
                opt.step()
                results.append((level, threads, opt.grad_norms(), opt.grad_norms(per_tensor=True), [p.detach().clone() for p in params]))
    finally:
        _C.set_simd_level("auto")
    assert len(results) >= 2
    _, _, norms0, per0, params0 = results[0]
    for level, threads, norms, per, params in results[1:]:
        assert torch.equal(norms, norms0), (level, threads)
        assert torch.equal(per, per0), (level, threads)
        for p, q in zip(params, params0):
            assert torch.equal(p, q), (level, threads)
    expect = torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).item()
    assert norms0.item() == pytest.approx(expect, rel=1e-6)


def test_pickle_and_deepcopy_keep_settings():
    model = _model()
    opt = playbook.optim.NAdam(model.parameters(), max_grad_norm=2.5, history=7, variant="playbook")
    for o in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert o.max_grad_norm == 2.5 and o.history == 7
        assert o.param_groups[0]["variant"] == "playbook"


# ---------------------------------------------------------------------------- bad input
def _trained_opt():
    model = _model()
    opt = playbook.optim.Adam(model.parameters(), lr=1e-3, max_grad_norm=1.0)
    for x, y in _batches(2):
        opt.zero_grad()
        _loss(model, x, y).backward()
        opt.step()
    opt.zero_grad()
    for x, y in _batches(1, seed=9):
        _loss(model, x, y).backward()
    return model, opt


def _snapshot(model, opt):
    return [p.detach().clone() for p in model.parameters()], copy.deepcopy(opt.state_dict())


def _assert_unchanged(model, opt, snap):
    params, sd = snap
    for p, q in zip(model.parameters(), params):
        assert torch.equal(p, q)
    now = opt.state_dict()
    for k, st in sd["state"].items():
        for key, value in st.items():
            assert torch.equal(now["state"][k][key], value)
    assert torch.equal(now["grad_norm_stats"]["counters"], sd["grad_norm_stats"]["counters"])


def test_sparse_grad_is_refused_without_mutation():
    model, opt = _trained_opt()
    snap = _snapshot(model, opt)
    w = model[0].weight
    w.grad = w.grad.to_sparse()
    with pytest.raises(TypeError, match="sparse"):
        opt.step()
    _assert_unchanged(model, opt, snap)


def test_non_contiguous_grad_is_refused_without_mutation():
    model, opt = _trained_opt()
    snap = _snapshot(model, opt)
    w = model[2].weight
    w.grad = torch.randn(w.shape[1], w.shape[0]).t()
    with pytest.raises(ValueError, match="stride"):
        opt.step()
    _assert_unchanged(model, opt, snap)


def test_complex_and_integer_params_are_refused():
    with pytest.raises(TypeError, match="complex"):
        playbook.optim.Adam([torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))]).step()
    p = torch.nn.Parameter(torch.randn(3, dtype=torch.float64))
    p.grad = torch.randn(3, dtype=torch.float64)
    with pytest.raises(TypeError, match="float64"):
        playbook.optim.SGD([p], lr=0.1).step()
    assert p.grad is not None


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda ps: playbook.optim.Adam(ps, max_grad_norm=0.0), ValueError, "max_grad_norm: 0.0"),
        (lambda ps: playbook.optim.Adam(ps, max_grad_norm=-1.0), ValueError, "max_grad_norm: -1.0"),
        (lambda ps: playbook.optim.SGD(ps, max_grad_norm=float("nan")), ValueError, "max_grad_norm: nan"),
        (lambda ps: playbook.optim.Adam(ps, max_grad_norm="1"), TypeError, "max_grad_norm: '1'"),
        (lambda ps: playbook.optim.Adam(ps, lr=-1e-3), ValueError, "learning rate: -0.001"),
        (lambda ps: playbook.optim.SGD(ps, lr=-0.1), ValueError, "learning rate: -0.1"),
        (lambda ps: playbook.optim.Adam(ps, eps=-1e-8), ValueError, "epsilon value: -1e-08"),
        (lambda ps: playbook.optim.Adam(ps, betas=(1.0, 0.999)), ValueError, "index 0: 1.0"),
        (lambda ps: playbook.optim.AdamW(ps, betas=(0.9, -0.1)), ValueError, "index 1: -0.1"),
        (lambda ps: playbook.optim.NAdam(ps, betas=(0.9, 1.5)), ValueError, "index 1: 1.5"),
        (lambda ps: playbook.optim.Adam(ps, variant="keras"), ValueError, "Unknown variant: 'keras'"),
        (lambda ps: playbook.optim.Adam(ps, history=0), ValueError, "history: 0"),
        (lambda ps: playbook.optim.SGD(ps, lr=0.1, nesterov=True), ValueError, "Nesterov momentum requires"),
        (lambda ps: playbook.optim.Adam(ps, differentiable=True), ValueError, "differentiable"),
        (lambda ps: playbook.optim.Adam(ps, weight_decay=-1.0), ValueError, "weight_decay value: -1.0"),
    ],
)
def test_bad_hyperparameters(make, exc, match):
    with pytest.raises(exc, match=match):
        make([torch.nn.Parameter(torch.randn(3))])


def test_bad_group_hyperparameter_is_caught_before_any_state_is_made():
    p = torch.nn.Parameter(torch.randn(3))
    opt = playbook.optim.Adam([{"params": [p], "betas": (0.9, 1.2)}], lr=1e-3)
    p.grad = torch.ones(3)
    with pytest.raises(ValueError, match="index 1: 1.2"):
        opt.step()
    assert p not in opt.state
