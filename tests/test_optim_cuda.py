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
