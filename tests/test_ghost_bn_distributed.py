"""Ghost batch norm across ranks: 2 real gloo processes on 127.0.0.1 (no mocks).

- process_group=: per-rank batch 16 with virtual_batch_size 32 equals one process with batch 32
  (outputs, input grads, summed weight/bias grads, running stats, num_batches_tracked);
  per-rank batch >= virtual_batch_size communicates nothing and equals the local computation.
- sync_running_stats averages running_mean/var of every BN and ghost-BN module over the ranks.
"""

from __future__ import annotations

import os
import socket
import traceback
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import playbook
from playbook.nn import GhostBatchNorm1d, GhostBatchNorm2d, sync_running_stats

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _inputs(channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(32, 5, 4, 3, generator=gen) * 2 + 1
    dy = torch.randn(32, 5, 4, 3, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, dy


def _make(vbs: int, momentum, process_group=None) -> GhostBatchNorm2d:
    bn = GhostBatchNorm2d(5, momentum=momentum, virtual_batch_size=vbs, process_group=process_group)
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 1.5, 5))
        bn.bias.copy_(torch.linspace(-1, 1, 5))
    return bn


def _run(bn: torch.nn.Module, x: torch.Tensor, dy: torch.Tensor, steps: int = 2) -> dict:
    out = {}
    for step in range(steps):
        xg = x.clone().requires_grad_()
        y = bn(xg)
        y.backward(dy)
        out[f"y{step}"] = y.detach()
        out[f"dx{step}"] = xg.grad
    out["gw"] = bn.weight.grad.clone()
    out["gb"] = bn.bias.grad.clone()
    out["rm"] = bn.running_mean.clone()
    out["rv"] = bn.running_var.clone()
    out["nbt"] = int(bn.num_batches_tracked)
    return out


def _worker(rank: int, port: int, outdir: str) -> None:
    import torch.distributed as dist

    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
        torch.set_num_threads(1)
        results = {}
        for channels_last in (False, True):
            for momentum in (0.1, None):
                x, dy = _inputs(channels_last)
                mine = slice(16 * rank, 16 * rank + 16)
                # Cross-rank ghost batch: per-rank batch 16, vbs 32.
                bn = _make(32, momentum, process_group=dist.group.WORLD)
                results[("cross", channels_last, momentum)] = _run(bn, x[mine], dy[mine])
                # Per-rank batch >= vbs: local ghost batches, no communication.
                bn = _make(8, momentum, process_group=dist.group.WORLD)
                results[("local", channels_last, momentum)] = _run(bn, x[mine], dy[mine])
        # A per-rank batch that does not divide the virtual batch size is refused on every rank.
        try:
            _make(32, 0.1, process_group=dist.group.WORLD)(torch.randn(12, 5, 2, 2))
            results["indivisible"] = "no error"
        except ValueError as e:
            results["indivisible"] = str(e)
        # Different per-rank batch sizes within one cross-rank ghost batch are refused on every rank.
        try:
            _make(32, 0.1, process_group=dist.group.WORLD)(torch.randn(16 if rank == 0 else 8, 5, 2, 2))
            results["unequal"] = "no error"
        except ValueError as e:
            results["unequal"] = str(e)
        # sync_running_stats: rank-dependent buffers in a BN and a ghost BN, averaged.
        model = torch.nn.Sequential(torch.nn.BatchNorm2d(3), GhostBatchNorm1d(4, virtual_batch_size=2))
        with torch.no_grad():
            model[0].running_mean.fill_(float(rank))
            model[0].running_var.fill_(1.0 + 2 * rank)
            model[1].running_mean.copy_(torch.arange(4.0) * (rank + 1))
            model[1].running_var.fill_(3.0 * rank + 0.5)
        assert sync_running_stats(model) is model
        results["sync"] = {k: v.clone() for k, v in model.state_dict().items()}
        torch.save(results, os.path.join(outdir, f"rank{rank}.pt"))
        dist.barrier()
        dist.destroy_process_group()
    except Exception:
        Path(outdir, f"rank{rank}.err").write_text(traceback.format_exc())
        raise


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    outdir = tmp_path_factory.mktemp("gbn_dist")
    try:
        mp.spawn(_worker, args=(_free_port(), str(outdir)), nprocs=WORLD, join=True)
    except Exception as e:  # show the worker's traceback
        errs = "\n".join(p.read_text() for p in outdir.glob("*.err"))
        raise AssertionError(f"gloo workers failed: {e}\n{errs}") from e
    return [torch.load(outdir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.slow
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cross_rank_ghost_batch_equals_one_process(distributed_results, channels_last, momentum) -> None:
    x, dy = _inputs(channels_last)
    single = _run(_make(32, momentum), x, dy)
    ranks = [r[("cross", channels_last, momentum)] for r in distributed_results]
    tol = dict(atol=1e-5, rtol=1e-5)
    for step in range(2):
        torch.testing.assert_close(torch.cat([r[f"y{step}"] for r in ranks]), single[f"y{step}"], **tol)
        torch.testing.assert_close(torch.cat([r[f"dx{step}"] for r in ranks]), single[f"dx{step}"], **tol)
    # Parameter grads are each rank's contribution (DDP sums them), as in SyncBatchNorm.
    torch.testing.assert_close(ranks[0]["gw"] + ranks[1]["gw"], single["gw"], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(ranks[0]["gb"] + ranks[1]["gb"], single["gb"], atol=1e-4, rtol=1e-5)
    for r in ranks:
        torch.testing.assert_close(r["rm"], single["rm"], **tol)
        torch.testing.assert_close(r["rv"], single["rv"], **tol)
        assert r["nbt"] == single["nbt"] == 2
    if channels_last:
        assert ranks[0]["y0"].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.slow
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("channels_last", [False, True])
def test_per_rank_batch_at_least_vbs_is_local(distributed_results, channels_last, momentum) -> None:
    x, dy = _inputs(channels_last)
    for rank, res in enumerate(distributed_results):
        mine = slice(16 * rank, 16 * rank + 16)
        local = _run(_make(8, momentum), x[mine], dy[mine])
        got = res[("local", channels_last, momentum)]
        for key, value in local.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(got[key], value), key
            else:
                assert got[key] == value


@pytest.mark.slow
def test_unequal_per_rank_batches_are_refused(distributed_results) -> None:
    for r in distributed_results:
        assert "same per-rank batch size" in r["unequal"] and "[16, 8]" in r["unequal"]


def test_merge_moments_matches_float64_two_pass() -> None:
    """The cross-rank merge (torch ops, any device) against mean and M2 of the concatenation."""
    from playbook.nn.ghost_bn import _merge_moments

    gen = torch.Generator().manual_seed(3)
    c = 7
    parts = [torch.randn(k, c, generator=gen, dtype=torch.float64) * 3 + 1e4 for k in (5, 12, 1, 9)]
    rows = [
        torch.cat([torch.tensor([float(len(p))], dtype=torch.float64), p.mean(0), ((p - p.mean(0)) ** 2).sum(0)])
        for p in parts
    ]
    mean, m2 = _merge_moments(rows, c)
    whole = torch.cat(parts)
    torch.testing.assert_close(mean, whole.mean(0), rtol=1e-14, atol=0)
    torch.testing.assert_close(m2, ((whole - whole.mean(0)) ** 2).sum(0), rtol=1e-10, atol=0)
    # One row is that row.
    one_mean, one_m2 = _merge_moments(rows[:1], c)
    assert torch.equal(one_mean, parts[0].mean(0)) and torch.equal(one_m2, rows[0][1 + c :])


@pytest.mark.slow
def test_indivisible_per_rank_batch_is_refused(distributed_results) -> None:
    for r in distributed_results:
        assert "must divide it" in r["indivisible"] and "12" in r["indivisible"]


@pytest.mark.slow
def test_sync_running_stats_averages_over_ranks(distributed_results) -> None:
    for r in distributed_results:
        sd = r["sync"]
        torch.testing.assert_close(sd["0.running_mean"], torch.full((3,), 0.5))
        torch.testing.assert_close(sd["0.running_var"], torch.full((3,), 2.0))
        torch.testing.assert_close(sd["1.running_mean"], torch.arange(4.0) * 1.5)
        torch.testing.assert_close(sd["1.running_var"], torch.full((4,), 2.0))


def test_sync_running_stats_without_process_group_is_a_noop() -> None:
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(3), playbook.nn.GhostBatchNorm2d(3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert sync_running_stats(model) is model
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
