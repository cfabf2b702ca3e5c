"""Worker side of tests/test_optim_distributed.py: real gloo processes on 127.0.0.1.

Every rank runs every scenario in one process group (one spawn per world size keeps the suite
fast) and saves what the parent asserts on to ``<outdir>/rank<r>.pt``. The parent computes the
single-process references (``torch.optim`` + ``clip_grad_norm_``) from the same ``make_mlp``,
``batch`` and ``tp_tensors``.
"""

from __future__ import annotations

import os
import socket
import traceback

import torch
import torch.distributed as dist
import torch.nn as nn

# MLP 6 -> 7 -> 3: 7 and 3 rows split unevenly over 2 and 4 ranks (4 ranks: 2,2,2,1 and 1,1,1,0,
# so rank 3 holds an empty shard); 73 params in all (uneven ZeRO-style slices too).
IN, HID, OUT = 6, 7, 3
GLOBAL_BATCH = 12  # divisible by 2 and 4: every rank gets the same number of rows
STEPS = 30
NAN_STEP = 12  # rank 1 (only) gets a NaN in its local grad shard at this step
CKPT_STEP = 15
LR = 1e-2
MAX_NORM = 2.0
SHORT_STEPS = 10  # DDP, ZeRO-style and tensor-parallel runs
AMP_STEPS = NAN_STEP + 3  # FSDP2 + GradScaler run

ZERO_CONFIGS = {  # name: (playbook class name, torch class name, kwargs)
    "adam": ("Adam", "Adam", dict(lr=LR)),
    "adamw": ("AdamW", "AdamW", dict(lr=LR, weight_decay=0.1)),
    "nadam": ("NAdam", "NAdam", dict(lr=LR)),
    "sgd": ("SGD", "SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
}


def make_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(IN, HID), nn.Tanh(), nn.Linear(HID, OUT))


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(GLOBAL_BATCH, IN, generator=g), 3.0 * torch.randn(GLOBAL_BATCH, OUT, generator=g)


def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((model(x) - y) ** 2).mean()


def tp_tensors(step: int | None) -> list[torch.Tensor]:
    """Initial values (step None) or the grads of step ``step`` of the tensor-parallel params."""
    g = torch.Generator().manual_seed(7 if step is None else 2000 + step)
    shapes = [(5, 3), (3, 5), (4,), (2,)]
    return [torch.randn(*s, generator=g) for s in shapes]


def tp_placements(world: int) -> list[tuple]:
    from torch.distributed.tensor import Replicate, Shard

    if world == 2:  # 1-D mesh
        return [(Shard(0),), (Shard(1),), (Replicate(),)]
    return [(Replicate(), Shard(0)), (Shard(1), Replicate()), (Replicate(), Replicate())]  # 2x2 mesh


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------- scenarios
def _local_rows(step: int, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = batch(step)
    per = GLOBAL_BATCH // world
    return x[rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per]


def _make_fsdp() -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    model = make_mlp()
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model


def _fsdp_steps(model, opt, rank, world, start, stop, out, scaler=None) -> None:
    for step in range(start, stop):
        loss = loss_fn(model, *_local_rows(step, rank, world))
        (loss if scaler is None else scaler.scale(loss)).backward()
        if step == NAN_STEP:
            first = next(model.parameters())
            if rank == 1:
                first.grad._local_tensor.view(-1)[0] = float("nan")
            out["nan_local_grad_finite"] = bool(torch.isfinite(first.grad._local_tensor).all())
            before = [p._local_tensor.clone() for p in model.parameters()]
            state_before = [{k: v.clone() for k, v in opt.state[p].items()} for p in model.parameters()]
        if scaler is None:
            opt.step()
        else:
            scaler.step(opt)
            scaler.update()
            out.setdefault("scales", []).append(float(scaler.get_scale()))
        opt.zero_grad()
        if step == NAN_STEP:
            out["nan_params_unchanged"] = all(torch.equal(b, p._local_tensor) for b, p in zip(before, model.parameters()))
            out["nan_state_unchanged"] = all(
                torch.equal(getattr(v, "_local_tensor", v), getattr(opt.state[p][k], "_local_tensor", opt.state[p][k]))
                for sb, p in zip(state_before, model.parameters()) for k, v in sb.items()
            )


def _full(model) -> list[torch.Tensor]:
    return [p.full_tensor().detach().clone() for p in model.parameters()]


def fsdp_scenario(rank: int, world: int, tmpdir: str) -> dict:
    import playbook
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.tensor import DTensor

    out: dict = {}
    model = _make_fsdp()
    opt = playbook.optim.Adam(model.parameters(), lr=LR, max_grad_norm=MAX_NORM)
    _fsdp_steps(model, opt, rank, world, 0, STEPS, out)
    out["local_shapes"] = [tuple(p._local_tensor.shape) for p in model.parameters()]
    out["state_placements_ok"] = all(
        isinstance(opt.state[p][k], DTensor) and opt.state[p][k].placements == p.placements
        and opt.state[p][k].device_mesh == p.device_mesh
        for p in model.parameters() for k in ("exp_avg", "exp_avg_sq")
    )
    out["params"] = _full(model)
    out["grad_norms"] = opt.grad_norms()
    out["skipped"] = opt.skipped_steps
    out["clip_fraction"] = opt.clip_fraction()
    out["steps"] = [float(opt.state[p]["step"]) for p in model.parameters()]

    # Checkpoint at CKPT_STEP through torch.distributed.checkpoint, resume, finish: must equal the
    # uninterrupted run. (a) torch's get_state_dict/set_state_dict; (b) opt.state_dict() itself.
    model = _make_fsdp()
    opt = playbook.optim.Adam(model.parameters(), lr=LR, max_grad_norm=MAX_NORM)
    _fsdp_steps(model, opt, rank, world, 0, CKPT_STEP, {})
    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=os.path.join(tmpdir, "a"))
    dcp.save({"model": model.state_dict(), "optim": opt.state_dict()}, checkpoint_id=os.path.join(tmpdir, "b"))
    del model, opt

    model = _make_fsdp()
    opt = playbook.optim.Adam(model.parameters(), lr=LR, max_grad_norm=MAX_NORM)
    msd, osd = get_state_dict(model, opt)
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=os.path.join(tmpdir, "a"))
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    _fsdp_steps(model, opt, rank, world, CKPT_STEP, STEPS, {})
    out["resumed_a_params"] = _full(model)
    out["resumed_a_norms"] = opt.grad_norms()

    model = _make_fsdp()
    opt = playbook.optim.Adam(model.parameters(), lr=LR, max_grad_norm=MAX_NORM)
    _fsdp_steps(model, opt, rank, world, 100, 103, {})  # other data: state and statistics that differ
    state = {"model": model.state_dict(), "optim": opt.state_dict()}
    dcp.load(state, checkpoint_id=os.path.join(tmpdir, "b"))
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optim"])
    out["resumed_b_step_placements_ok"] = all(
        opt.state[p]["exp_avg"].placements == p.placements for p in model.parameters()
    )
    _fsdp_steps(model, opt, rank, world, CKPT_STEP, STEPS, {})
    out["resumed_b_params"] = _full(model)
    out["resumed_b_norms"] = opt.grad_norms()
    out["resumed_b_skipped"] = opt.skipped_steps
    return out


def amp_scenario(rank: int, world: int) -> dict:
    """FSDP2 + playbook.amp.GradScaler: the inf flag comes from the all-reduced norm, so a NaN on
    rank 1 only backs the scale off on every rank alike."""
    import playbook

    out: dict = {}
    model = _make_fsdp()
    opt = playbook.optim.Adam(model.parameters(), lr=LR, max_grad_norm=MAX_NORM)
    scaler = playbook.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=4)
    _fsdp_steps(model, opt, rank, world, 0, AMP_STEPS, out, scaler)
    out["params"] = _full(model)
    out["grad_norms"] = opt.grad_norms()
    out["skipped"] = opt.skipped_steps
    return out


def tp_scenario(rank: int, world: int) -> dict:
    """DTensor params with Shard and Replicate placements (1-D mesh, or 2x2 with 4 ranks) plus
    one plain (replicated) param, grads set directly: the global norm counts every element once."""
    import playbook
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import distribute_tensor

    mesh = init_device_mesh("cpu", (world,) if world == 2 else (2, 2))
    placements = tp_placements(world)
    init = tp_tensors(None)
    params = [nn.Parameter(distribute_tensor(t, mesh, pl)) for t, pl in zip(init, placements)]
    params.append(nn.Parameter(init[3].clone()))
    opt = playbook.optim.Adam(params, lr=LR, max_grad_norm=MAX_NORM)
    for step in range(SHORT_STEPS):
        grads = tp_tensors(step)
        for p, g, pl in zip(params, grads, placements):
            p.grad = distribute_tensor(g, mesh, pl)
        params[3].grad = grads[3].clone()
        opt.step()
    return {
        "params": [p.full_tensor().detach().clone() for p in params[:3]] + [params[3].detach().clone()],
        "grad_norms": opt.grad_norms(),
    }


def bad_input_scenario(rank: int, world: int) -> dict:
    """A DTensor grad laid out unlike its param, a Partial param: clear errors, nothing mutated."""
    import playbook
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    full = tp_tensors(None)[0]
    p = nn.Parameter(distribute_tensor(full, mesh, (Shard(0),)))
    opt = playbook.optim.Adam([p], lr=LR, max_grad_norm=MAX_NORM)
    p.grad = distribute_tensor(full, mesh, (Shard(0),))
    opt.step()
    before = p._local_tensor.clone()
    state = {k: v.clone() for k, v in opt.state[p].items()}
    p.grad = distribute_tensor(full, mesh, (Replicate(),))
    out = {}
    try:
        opt.step()
    except ValueError as e:
        out["grad_error"] = str(e)
    out["unchanged"] = torch.equal(before, p._local_tensor) and all(
        torch.equal(v, opt.state[p][k]) for k, v in state.items()
    )
    partial = nn.Parameter(DTensor.from_local(full.clone(), mesh, (Partial(),), run_check=False))
    partial.grad = torch.zeros_like(partial)
    try:
        playbook.optim.Adam([partial]).step()
    except ValueError as e:
        out["partial_error"] = str(e)
    return out


def ddp_scenario(rank: int, world: int) -> dict:
    import playbook
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = DDP(make_mlp())
    opt = playbook.optim.Adam(model.parameters(), lr=LR, max_grad_norm=MAX_NORM)
    for step in range(SHORT_STEPS):
        loss_fn(model, *_local_rows(step, rank, world)).backward()
        opt.step()
        opt.zero_grad()
    return {"params": [p.detach().clone() for p in model.module.parameters()], "grad_norms": opt.grad_norms()}


def zero_scenario(rank: int, world: int) -> dict:
    """ZeRO-style: each rank owns an uneven slice of the flat params, steps it with
    ``process_group=WORLD`` (global norm over the slices), and the slices are gathered back."""
    import playbook

    out = {}
    for name, (cls, _, kwargs) in ZERO_CONFIGS.items():
        model = make_mlp()
        params = list(model.parameters())
        flat = nn.utils.parameters_to_vector(params)
        bounds = torch.tensor_split(torch.arange(flat.numel()), world)[rank]
        lo, hi = int(bounds[0]), int(bounds[-1]) + 1
        shard = nn.Parameter(flat[lo:hi].detach().clone())
        opt = getattr(playbook.optim, cls)([shard], max_grad_norm=MAX_NORM, process_group=dist.group.WORLD, **kwargs)
        for step in range(SHORT_STEPS):
            loss_fn(model, *_local_rows(step, rank, world)).backward()
            grad = torch.cat([p.grad.reshape(-1) for p in params])
            dist.all_reduce(grad)
            shard.grad = grad[lo:hi] / world
            opt.step()
            full = torch.zeros_like(flat)
            full[lo:hi] = shard.detach()
            dist.all_reduce(full)  # gather the slices back
            nn.utils.vector_to_parameters(full, params)
            model.zero_grad()
        out[name] = {
            "params": nn.utils.parameters_to_vector(params).detach().clone(),
            "grad_norms": opt.grad_norms(),
            "slice": (lo, hi),
        }
    return out


def worker(rank: int, world: int, init_method: str, tmpdir: str, outdir: str) -> None:
    torch.set_num_threads(1)  # 2 cores shared by up to 4 ranks
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
    try:
        result = {
            "fsdp": fsdp_scenario(rank, world, tmpdir),
            "amp": amp_scenario(rank, world),
            "tp": tp_scenario(rank, world),
            "bad": bad_input_scenario(rank, world),
            "ddp": ddp_scenario(rank, world),
            "zero": zero_scenario(rank, world),
        }
        torch.save(result, os.path.join(outdir, f"rank{rank}.pt"))
        dist.barrier()  # nobody tears the group down while a peer still talks to it
    except BaseException:
        traceback.print_exc()
        raise
    finally:
        dist.destroy_process_group()
