"""End to end on real data: Adam vs SGD-Nesterov on scikit-learn's 8x8 digits, with checkpoints.

A small CNN on the 1,797 bundled digit images (no download). The scientific hyperparameter is
the optimizer; the learning rate and weight decay are nuisance hyperparameters searched
quasi-randomly; ``max_train_steps`` and the warmup are fixed (playbook 4.4, "Deciding how long to
train"). Every trial trains with playbook's fused optimizers and global-norm clipping at the
90th percentile of the gradient norms of a short unclipped run (7.8), a linear warmup followed by
cosine decay, reports its validation error (retrospective checkpoint selection, 6.2) and keeps
its best and latest checkpoints through ``trial.checkpoints()``. Kill it at any moment and run
it again: finished trials are kept and interrupted ones continue from their latest checkpoint.

    python -m pip install ".[examples]"
    python examples/digits.py --trials 16 --workers 2 --out out/digits
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from pathlib import Path

import torch

import playbook
from playbook import ckpt, schedules, stats, tune


def space(max_train_steps: int, warmup_steps: int) -> tune.SearchSpace:
    return tune.SearchSpace({
        "optimizer": tune.Categorical(
            ["adam", "nesterov"],
            role="scientific",
            branches={
                "adam": {"lr": tune.Real(1e-4, 3e-2, scale="log")},
                "nesterov": {"lr": tune.Real(1e-3, 1.0, scale="log")},
            },
        ),
        "weight_decay": tune.Real(1e-6, 1e-2, scale="log"),
        "max_train_steps": tune.Fixed(max_train_steps),
        "warmup_steps": tune.Fixed(warmup_steps),
        "batch_size": tune.Fixed(64),
    })


def load_digits() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The digits as ``(N, 1, 8, 8)`` float tensors in [0, 1]: 1,437 train, 360 validation images."""
    try:
        from sklearn.datasets import load_digits as _load
    except ImportError:
        raise ImportError(
            "examples/digits.py needs scikit-learn for its bundled digits data set: "
            "python -m pip install 'playbook[examples]' (or scikit-learn)."
        ) from None
    data = _load()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return (x[:1437], y[:1437]), (x[1437:], y[1437:])


def make_model() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(32 * 4 * 4, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10),
    )


def make_optimizer(params, p: dict, max_grad_norm: float | None) -> torch.optim.Optimizer:
    if p["optimizer"] == "adam":
        return playbook.optim.AdamW(params, lr=p["lr"], weight_decay=p["weight_decay"], max_grad_norm=max_grad_norm)
    return playbook.optim.SGD(params, lr=p["lr"], momentum=0.9, nesterov=True, weight_decay=p["weight_decay"],
                              max_grad_norm=max_grad_norm)


def suggest_clip(steps: int = 100) -> float:
    """The 90th percentile of the gradient norms of a short unclipped Adam run (playbook 7.8)."""
    torch.manual_seed(0)
    (xt, yt), _ = load_digits()
    model = make_model()
    opt = playbook.optim.Adam(model.parameters(), lr=1e-3, max_grad_norm=None)
    for _ in range(steps):
        idx = torch.randint(0, len(yt), (64,))
        loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(stats.suggest_max_grad_norm(opt.grad_norms()))


def objective(trial: tune.Trial, *, max_grad_norm: float, eval_every: int) -> None:
    """Train one trial; resume from its latest checkpoint if it ran before (module level, so
    that worker processes can import it)."""
    p = trial.params
    torch.set_num_threads(1)
    torch.manual_seed(trial.index)
    (xt, yt), (xv, yv) = load_digits()
    model = make_model()
    opt = make_optimizer(model.parameters(), p, max_grad_norm)
    total = p["max_train_steps"]
    sched = schedules.scheduler(opt, schedules.warmup(schedules.cosine_decay(total - p["warmup_steps"]), p["warmup_steps"]))
    mgr = trial.checkpoints(keep_best=1, keep_latest=1)
    start = mgr.restore_into(model=model, optimizer=opt, scheduler=sched, rng=ckpt.rng_state())
    log = trial.directory / "attempts.jsonl"  # one line per attempt: where it started, first report
    with open(log, "a") as f:
        f.write(json.dumps({"start": start, "pid": os.getpid()}) + "\n")
    first_report = None
    for step in range(start, total):
        idx = torch.randint(0, len(yt), (p["batch_size"],))
        loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % eval_every == 0 or step + 1 == total:
            model.eval()
            with torch.no_grad():
                err = (model(xv).argmax(1) != yv).float().mean().item()
            model.train()
            trial.report(step, val_error=err, train_loss=loss.item())  # report, then checkpoint
            mgr.save(step, {"model": model, "optimizer": opt, "scheduler": sched, "rng": ckpt.rng_state()},
                     metrics={"val_error": err})
            if first_report is None:
                first_report = step
                with open(log, "a") as f:
                    f.write(json.dumps({"first_report": step, "pid": os.getpid()}) + "\n")
    mgr.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=1500, help="max_train_steps of every trial")
    ap.add_argument("--warmup", type=int, default=None, help="warmup steps (default: 5%% of --steps)")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--storage", default="sqlite:///examples_studies.db")
    ap.add_argument("--out", default="out/digits")
    ap.add_argument("--heartbeat-timeout", type=float, default=10.0,
                    help="seconds after which the trial of a killed worker is re-queued (and resumed)")
    args = ap.parse_args(argv)
    warmup = args.warmup if args.warmup is not None else max(1, args.steps // 20)
    study = tune.Study.create(
        "digits-optimizer", space(args.steps, warmup), storage=args.storage, seed=0, num_trials=args.trials,
        metric="val_error", mode="min", notes="examples/digits.py: Adam vs SGD-Nesterov on sklearn digits",
    )
    clip_file = Path(study.artifacts) / "max_grad_norm.json"  # computed once, kept across re-runs
    if clip_file.exists():
        max_grad_norm = json.loads(clip_file.read_text())["max_grad_norm"]
    else:
        max_grad_norm = suggest_clip()
        clip_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = clip_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"max_grad_norm": max_grad_norm}))
        os.replace(tmp, clip_file)
    print(f"max_grad_norm={max_grad_norm:.4g} (90th percentile of an unclipped run)", flush=True)
    fn = functools.partial(objective, max_grad_norm=max_grad_norm, eval_every=args.eval_every)
    study.run(fn, n_workers=args.workers, heartbeat_timeout=args.heartbeat_timeout)
    for rec in study.best_trials(k=3):
        print(f"trial {rec.index}: val_error={rec.score:.4f} at step {rec.best_step} "
              f"(attempts {rec.attempts}) {rec.params}")
    analysis = study.analysis()
    for line in analysis.warnings():
        print("warning:", line)
    print("report:", analysis.report(args.out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
