"""CUDA-only behaviour: no host sync in a step, CUDA-graph capture, CPU/CUDA agreement, params on
two devices. Skipped without a GPU and a build with the CUDA kernels."""

from __future__ import annotations

import pytest
import torch

import playbook
from conftest import requires_cuda

pytestmark = [pytest.mark.cuda, requires_cuda]


def _params(device, sizes=(3, 1000, 70001, 300000), dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(n, generator=gen).to(device=device, dtype=dtype)) for n in sizes]


def _grads(params, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=gen).to(p.dtype) * 0.05 for p in params]


@pytest.mark.parametrize("cls, kwargs", [
    (playbook.optim.Adam, dict(lr=1e-2)),
    (playbook.optim.AdamW, dict(lr=1e-2, variant="playbook")),
    (playbook.optim.NAdam, dict(lr=1e-2)),
    (playbook.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True)),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cuda_matches_cpu(cls, kwargs, dtype):
    cpu, gpu = _params("cpu", dtype=dtype), _params("cuda", dtype=dtype)
    opt_c = cls(cpu, max_grad_norm=1.0, **kwargs)
    opt_g = cls(gpu, max_grad_norm=1.0, **kwargs)
    for step in range(20):
        for pc, pg, g in zip(cpu, gpu, _grads(cpu, step)):
            pc.grad = g.clone()
            pg.grad = g.cuda()
        opt_c.step()
        opt_g.step()
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2 ** -7, atol=1e-5)
    for pc, pg in zip(cpu, gpu):
        torch.testing.assert_close(pg.detach().cpu(), pc.detach(), **tol)
    torch.testing.assert_close(opt_g.grad_norms(), opt_c.grad_norms(), rtol=1e-6, atol=0)


def test_step_does_not_sync_the_host():
    params = _params("cuda")
    opt = playbook.optim.Adam(params, lr=1e-3, max_grad_norm=1.0)
    for p, g in zip(params, _grads(params, 0)):
        p.grad = g.cuda()
    opt.step()  # plans and state are built on the first step
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert opt.steps_seen == 4


def test_nonfinite_skip_on_cuda_is_bit_identical():
    params = _params("cuda")
    opt = playbook.optim.NAdam(params, lr=1e-3, max_grad_norm=1.0)
    for p, g in zip(params, _grads(params, 0)):
        p.grad = g.cuda()
    opt.step()
    before = [p.detach().clone() for p in params]
    state = {k: v.clone() for k, v in opt.state[params[2]].items()}
    params[2].grad[5] = float("nan")
    opt.step()
    assert opt.skipped_steps == 1
    assert all(torch.equal(p, q) for p, q in zip(params, before))
    assert all(torch.equal(opt.state[params[2]][k], v) for k, v in state.items())


def test_step_is_capturable_in_a_cuda_graph():
    params = _params("cuda")
    ref = [torch.nn.Parameter(p.detach().clone()) for p in params]
    lr = torch.tensor(1e-3, device="cuda")
    opt = playbook.optim.Adam(params, lr=lr, max_grad_norm=1.0, capturable=True)
    ref_opt = playbook.optim.Adam(ref, lr=1e-3, max_grad_norm=1.0)
    static_grads = [torch.zeros_like(p) for p in params]
    for p, g in zip(params, static_grads):
        p.grad = g
    # warm up on a side stream (plans and state are built here), then capture
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for g, new in zip(static_grads, _grads(params, 100)):
            g.copy_(new.cuda())
        opt.step()
    torch.cuda.current_stream().wait_stream(s)
    for p, g in zip(ref, _grads(params, 100)):
        p.grad = g.cuda()
    ref_opt.step()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    for step in range(5):
        grads = _grads(params, step)
        for g, new in zip(static_grads, grads):
            g.copy_(new.cuda())
        graph.replay()
        for p, new in zip(ref, grads):
            p.grad = new.cuda()
        ref_opt.step()
    torch.cuda.synchronize()
    for p, q in zip(params, ref):
        torch.testing.assert_close(p, q)
    assert opt.steps_seen == 6


def test_params_on_cpu_and_cuda_share_one_global_norm():
    cpu = _params("cpu", sizes=(1000,))
    gpu = _params("cuda", sizes=(2000,), seed=1)
    opt = playbook.optim.SGD(cpu + gpu, lr=0.1, max_grad_norm=0.5)
    gc, gg = torch.randn(1000), torch.randn(2000)
    cpu[0].grad, gpu[0].grad = gc.clone(), gg.cuda()
    before_c, before_g = cpu[0].detach().clone(), gpu[0].detach().cpu()
    opt.step()
    n = torch.sqrt((gc.double() ** 2).sum() + (gg.double() ** 2).sum()).item()
    assert opt.grad_norms()[0].item() == pytest.approx(n, rel=1e-6)
    torch.testing.assert_close(cpu[0].detach(), before_c - 0.1 * gc * (0.5 / n))
    torch.testing.assert_close(gpu[0].detach().cpu(), before_g - 0.1 * gg * (0.5 / n))


@pytest.mark.parametrize("order", ["cpu-first", "cuda-first"])
def test_cpu_and_cuda_params_finalize_on_cuda_with_a_cuda_lr(order):
    """Issue 6 item 2: the CUDA partial total is never read by the host before it is written,
    and a CUDA lr reaches the CPU params by a synchronous copy. Repeated with big grads so a
    read of an unwritten total or lr would show."""
    cpu = _params("cpu", sizes=(1000, 70001))
    gpu = _params("cuda", sizes=(300000, 2000), seed=1)
    ref = [torch.nn.Parameter(p.detach().double().cpu()) for p in cpu + gpu]
    params = cpu + gpu if order == "cpu-first" else gpu + cpu
    lr = torch.tensor(0.1, device="cuda")
    opt = playbook.optim.SGD(params, lr=lr, max_grad_norm=0.5)
    for step in range(5):
        grads = _grads(cpu + gpu, step)
        for p, g in zip(cpu + gpu, grads):
            p.grad = g.to(p.device)
        opt.step()
        n = torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).item()
        for r, g in zip(ref, grads):
            r.data -= 0.1 * g.double() * min(1.0, 0.5 / n)
        assert opt.grad_norms()[-1].item() == pytest.approx(n, rel=1e-6)
    for p, r in zip(cpu + gpu, ref):
        torch.testing.assert_close(p.detach().double().cpu(), r.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("skip_nonfinite", [True, False])
def test_grad_scaler_on_cuda_flags_only_skipped_steps(skip_nonfinite):
    params = _params("cuda", sizes=(1000,))
    opt = playbook.optim.Adam(params, lr=1e-3, skip_nonfinite=skip_nonfinite, max_grad_norm=1.0)
    scaler = playbook.amp.GradScaler("cuda", init_scale=8.0)
    scaler.scale(params[0].sum()).backward()
    params[0].grad[3] = float("inf")
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == (4.0 if skip_nonfinite else 8.0)
    assert opt.skipped_steps == int(skip_nonfinite) and opt.clip_fraction() == 0.0


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_found_inf_on_another_gpu_is_written_back():
    params = _params("cuda:0", sizes=(1000,))
    opt = playbook.optim.SGD(params, lr=0.1)
    flag = torch.zeros((), device="cuda:1")
    opt.found_inf = flag
    params[0].grad = torch.full((1000,), float("nan"), device="cuda:0")
    opt.step()
    assert flag.item() == 1.0 and opt.skipped_steps == 1


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_step_on_gpu1_creates_no_context_on_gpu0():
    """NOTE: [Device guard without stray contexts]: a fresh process steps params on cuda:1 from a
    thread with no current context; GPU 0 must not get a primary context."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import threading, torch, playbook
        p = torch.nn.Parameter(torch.ones(1000, device="cuda:1"))
        p.grad = torch.ones(1000, device="cuda:1")
        opt = playbook.optim.Adam([p], lr=0.1)
        t = threading.Thread(target=opt.step)
        t.start(); t.join()
        torch.cuda.synchronize(1)
        print(int(torch._C._cuda_hasPrimaryContext(0)))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "0"


def test_mixed_dtype_step_advances_every_param_once():
    """Two dtype groups, one preflight (NOTE: [All-or-nothing launches]): each param is updated
    once and its step advanced once."""
    params = _params("cuda", sizes=(1000, 3000)) + _params("cuda", sizes=(2000,), dtype=torch.bfloat16, seed=2)
    opt = playbook.optim.Adam(params, lr=1e-3)
    for step in range(3):
        for p, g in zip(params, _grads(params, step)):
            p.grad = g.to("cuda")
        opt.step()
    assert all(opt.state[p]["step"].item() == 3.0 for p in params)
