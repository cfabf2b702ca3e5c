"""Fused optimizers under torch.distributed, against single-process torch.optim references.

2 and 4 real gloo processes on 127.0.0.1, spawned once per world size (tests/dist_workers.py runs
every scenario in that one process group). The references are one process training the
unsharded model on the whole batch with ``torch.optim`` + ``clip_grad_norm_``.
"""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn

import dist_workers as W
import playbook

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is unavailable")

SPAWN_TIMEOUT = 900.0  # seconds; a hang fails the test instead of blocking the suite


@pytest.fixture(scope="module", params=[2, 4], ids=["world2", "world4"])
def ranks(request, tmp_path_factory) -> list[dict]:
    world = request.param
    tmp = tmp_path_factory.mktemp(f"dist{world}")
    (tmp / "ckpt").mkdir()
    init_method = f"tcp://127.0.0.1:{W.free_port()}"
    ctx = mp.start_processes(
        W.worker, args=(world, init_method, str(tmp / "ckpt"), str(tmp)), nprocs=world, join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + SPAWN_TIMEOUT
    try:
        while not ctx.join(timeout=5):
            if time.monotonic() > deadline:
                pytest.fail(f"{world} gloo workers did not finish within {SPAWN_TIMEOUT} s")
    finally:
        for p in ctx.processes:  # only the workers this fixture started
            if p.is_alive():
                p.kill()
                p.join()
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(world)]


# ---------------------------------------------------------------------------------- references
def _mlp_reference(opt_cls: type, kwargs: dict, steps: int, skip: int | None = None):
    """(params, global norms) of one process on the whole batch; step ``skip`` is skipped."""
    model = W.make_mlp()
    params = list(model.parameters())
    opt = opt_cls(params, **kwargs)
    norms = []
    for step in range(steps):
        W.loss_fn(model, *W.batch(step)).backward()
        if step == skip:
            norms.append(float("nan"))
        else:
            norms.append(float(nn.utils.clip_grad_norm_(params, W.MAX_NORM)))
            opt.step()
        opt.zero_grad()
    return [p.detach() for p in params], torch.tensor(norms, dtype=torch.float64)


@pytest.fixture(scope="module")
def fsdp_reference():
    return _mlp_reference(torch.optim.Adam, dict(lr=W.LR), W.STEPS, skip=W.NAN_STEP)


def _close(actual, expected, **kw):
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, **kw)


# ---------------------------------------------------------------------------------- FSDP2
@pytest.mark.slow
def test_fsdp2_uneven_shards_match_single_process_adam_with_clip(ranks, fsdp_reference):
    params, _ = fsdp_reference
    world = len(ranks)
    shapes = [r["fsdp"]["local_shapes"] for r in ranks]
    assert [s[0][0] for s in shapes] == [len(c) for c in torch.arange(W.HID).chunk(world)]  # uneven
    if world == 4:
        assert shapes[3][2] == (0, W.HID)  # rank 3 holds an empty shard of the last weight
    for r in ranks:
        _close(r["fsdp"]["params"], params, rtol=1e-5, atol=1e-6)
        assert r["fsdp"]["state_placements_ok"]
        assert 0.0 < r["fsdp"]["clip_fraction"] < 1.0  # the clip was active on some steps only


@pytest.mark.slow
def test_fsdp2_grad_norms_identical_on_all_ranks_and_global(ranks, fsdp_reference):
    _, norms = fsdp_reference
    for r in ranks:
        assert torch.equal(r["fsdp"]["grad_norms"].nan_to_num(-1), ranks[0]["fsdp"]["grad_norms"].nan_to_num(-1))
    torch.testing.assert_close(ranks[0]["fsdp"]["grad_norms"].double(), norms, rtol=1e-5, atol=0, equal_nan=True)


@pytest.mark.slow
def test_fsdp2_nan_on_rank1_only_skips_every_rank(ranks):
    assert not ranks[1]["fsdp"]["nan_local_grad_finite"]
    assert ranks[0]["fsdp"]["nan_local_grad_finite"]  # rank 0's own shard was finite
    for r in ranks:
        assert r["fsdp"]["nan_params_unchanged"] and r["fsdp"]["nan_state_unchanged"]
        assert r["fsdp"]["skipped"] == 1
        assert math.isnan(float(r["fsdp"]["grad_norms"][W.NAN_STEP]))
        assert r["fsdp"]["steps"] == [W.STEPS - 1.0] * 4  # empty shards included


@pytest.mark.slow
def test_fsdp2_state_dict_through_distributed_checkpoint(ranks):
    for r in ranks:
        f = r["fsdp"]
        # (a) get_state_dict / dcp.save / dcp.load / set_state_dict
        _close(f["resumed_a_params"], f["params"], rtol=0, atol=0)
        torch.testing.assert_close(f["resumed_a_norms"][-(W.STEPS - W.CKPT_STEP):], f["grad_norms"][W.CKPT_STEP:])
        # (b) opt.state_dict() itself, grad-norm statistics included
        assert f["resumed_b_step_placements_ok"]
        _close(f["resumed_b_params"], f["params"], rtol=0, atol=0)
        torch.testing.assert_close(f["resumed_b_norms"], f["grad_norms"], equal_nan=True)
        assert f["resumed_b_skipped"] == 1


@pytest.mark.slow
def test_fsdp2_grad_scaler_backs_off_alike_on_every_rank(ranks):
    params, norms = _mlp_reference(torch.optim.Adam, dict(lr=W.LR), W.AMP_STEPS, skip=W.NAN_STEP)
    scales = ranks[0]["amp"]["scales"]
    assert scales[W.NAN_STEP] == scales[W.NAN_STEP - 1] / 2  # backed off once, at the NaN step
    assert max(scales) > 2.0**10  # and grew in between
    for r in ranks:
        assert r["amp"]["scales"] == scales
        assert r["amp"]["skipped"] == 1
        _close(r["amp"]["params"], params, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r["amp"]["grad_norms"].double(), norms, rtol=1e-5, atol=0, equal_nan=True)


# ---------------------------------------------------------------------------------- tensor parallel
@pytest.mark.slow
def test_dtensor_replicate_counts_once(ranks):
    params = [p.clone().requires_grad_() for p in W.tp_tensors(None)]
    opt = torch.optim.Adam(params, lr=W.LR)
    norms = []
    for step in range(W.SHORT_STEPS):
        for p, g in zip(params, W.tp_tensors(step)):
            p.grad = g
        norms.append(float(nn.utils.clip_grad_norm_(params, W.MAX_NORM)))
        opt.step()
    assert max(norms) > W.MAX_NORM  # clipped
    for r in ranks:
        _close(r["tp"]["params"], [p.detach() for p in params], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r["tp"]["grad_norms"].double(), torch.tensor(norms, dtype=torch.float64), rtol=1e-5, atol=0)


# ---------------------------------------------------------------------------------- DDP, ZeRO-style
@pytest.mark.slow
def test_ddp_matches_single_process_on_concatenated_batch(ranks):
    params, norms = _mlp_reference(torch.optim.Adam, dict(lr=W.LR), W.SHORT_STEPS)
    for r in ranks:
        _close(r["ddp"]["params"], params, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r["ddp"]["grad_norms"].double(), norms, rtol=1e-5, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(W.ZERO_CONFIGS))
def test_process_group_zero_style_slices(ranks, name):
    _, torch_cls, kwargs = W.ZERO_CONFIGS[name]
    params, norms = _mlp_reference(getattr(torch.optim, torch_cls), kwargs, W.SHORT_STEPS)
    expected = nn.utils.parameters_to_vector(params)
    slices = [r["zero"][name]["slice"] for r in ranks]
    assert len({hi - lo for lo, hi in slices}) == 2  # uneven slices
    for r in ranks:
        torch.testing.assert_close(r["zero"][name]["params"], expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r["zero"][name]["grad_norms"].double(), norms, rtol=1e-5, atol=0)
        assert torch.equal(r["zero"][name]["grad_norms"], ranks[0]["zero"][name]["grad_norms"])


# ---------------------------------------------------------------------------------- bad input
@pytest.mark.slow
def test_dtensor_bad_layouts_raise_and_mutate_nothing(ranks):
    for r in ranks:
        bad = r["bad"]
        msg = bad["grad_error"]  # from the pre-step check (param index) or the build (param shape)
        assert "is a DTensor with placements (Replicate(),)" in msg
        assert "param 0 of param group 0" in msg or "param of shape (5, 3)" in msg
        assert "(Shard(dim=0),)" in bad["grad_error"]
        assert bad["unchanged"]
        assert "Partial placement" in bad["partial_error"]


@pytest.mark.parametrize("cls", [playbook.optim.Adam, playbook.optim.AdamW, playbook.optim.NAdam, playbook.optim.SGD])
def test_process_group_must_be_a_process_group(cls):
    p = nn.Parameter(torch.randn(3))
    with pytest.raises(TypeError, match="Invalid process_group: 'world'"):
        cls([p], process_group="world")
