"""End to end: a playbook-style study comparing Adam and SGD-Nesterov on a small MLP.

The scientific hyperparameter is the optimizer; the learning rate (and each optimizer's own
knobs) are nuisance hyperparameters searched quasi-randomly; dropout is fixed (playbook 4.4).
Every trial trains with playbook's fused optimizers and global-norm clipping (7.8), reports its
validation error as it goes (training curves, retrospective best step: 6.2), and the study ends
with the analysis report (4.5-4.6).

    python examples/tune_mlp.py --trials 16 --workers 2 --out out/
"""

from __future__ import annotations

import argparse

import torch

import playbook
from playbook import tune

SPACE = tune.SearchSpace({
    "optimizer": tune.Categorical(
        ["adam", "nesterov"],
        role="scientific",
        branches={
            "adam": {"lr": tune.Real(1e-4, 3e-1, scale="log"), "beta1": tune.Real(0.5, 0.99, scale="reverse_log")},
            "nesterov": {"lr": tune.Real(1e-3, 3.0, scale="log"), "momentum": tune.Real(0.5, 0.99, scale="reverse_log")},
        },
    ),
    "max_grad_norm": tune.Real(0.1, 10.0, scale="log"),
    "dropout": tune.Fixed(0.1),
})


def _data(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(20, 3, generator=gen)
    x = torch.randn(2048, 20, generator=gen)
    y = (x @ w + 0.5 * torch.randn(2048, 3, generator=gen)).argmax(1)
    return (x[:1536], y[:1536]), (x[1536:], y[1536:])


def objective(trial: tune.Trial) -> None:
    """Train for 300 steps; report validation error every 50 (a module-level function, so that
    worker processes can import it)."""
    p = trial.params
    torch.manual_seed(trial.index)
    torch.set_num_threads(1)
    (xt, yt), (xv, yv) = _data()
    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Dropout(p["dropout"]), torch.nn.Linear(64, 3))
    if p["optimizer"] == "adam":
        opt = playbook.optim.Adam(model.parameters(), lr=p["lr"], betas=(p["beta1"], 0.999), max_grad_norm=p["max_grad_norm"])
    else:
        opt = playbook.optim.SGD(model.parameters(), lr=p["lr"], momentum=p["momentum"], nesterov=True, max_grad_norm=p["max_grad_norm"])
    for step in range(1, 301):
        idx = torch.randint(0, xt.shape[0], (64,))
        loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            model.eval()
            with torch.no_grad():
                err = (model(xv).argmax(1) != yv).float().mean().item()
            model.train()
            trial.report(step, val_error=err, train_loss=loss.item())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--storage", default="sqlite:///examples_studies.db")
    ap.add_argument("--out", default="out/tune_mlp")
    args = ap.parse_args(argv)
    study = tune.Study.create(
        "mlp-optimizer", SPACE, storage=args.storage, seed=0, num_trials=args.trials,
        metric="val_error", mode="min", notes="examples/tune_mlp.py: Adam vs SGD-Nesterov",
    )
    study.run(objective, n_workers=args.workers)
    for rec in study.best_trials(k=3):
        print(f"trial {rec.index}: val_error={rec.score:.4f} at step {rec.best_step} {rec.params}")
    analysis = study.analysis()
    for line in analysis.warnings():
        print("warning:", line)
    print("report:", analysis.report(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
