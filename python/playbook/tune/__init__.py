"""Quasi-random hyperparameter tuning, the Deep Learning Tuning Playbook way (sections 4.4-4.6, FAQ 7.5-7.7).

Pure Python + numpy (no torch import). Build a :class:`SearchSpace` of hyperparameters with
playbook roles (scientific / nuisance / fixed, 4.4) and conditional branches, create a
:class:`Study` in a storage (SQLite by default), and run an objective over the scrambled
:class:`Halton` points with any number of workers::

    from playbook import tune
    space = tune.SearchSpace({
        "optimizer": tune.Categorical(["adam", "nesterov"], role="scientific"),
        "lr": tune.Real(1e-4, 1e-1, scale="log"),
        "weight_decay": tune.Real(1e-6, 1e-2, scale="log"),
        "dropout": tune.Fixed(0.1),
    })
    study = tune.Study.create("wd-vs-optimizer", space, storage="sqlite:///studies.db",
                              seed=0, num_trials=32, metric="val_error", mode="min")
    study.run(objective, n_workers=4)
    study.best_trials(k=3)

Analysis, plots and the CLI live in ``playbook.tune.analysis`` / ``plots`` / ``cli`` (imported on
demand, e.g. by :meth:`Study.analysis`).
"""

from __future__ import annotations

from playbook.tune.designs import best_per_value, joint_study, scientific_values, studies_per_scientific_value
from playbook.tune.halton import Halton
from playbook.tune.space import Categorical, Discrete, Fixed, HParam, Int, Real, SearchSpace, Spec
from playbook.tune.storage import SQLiteStorage, Storage, TrialRecord, open_storage
from playbook.tune.study import Study, list_studies
from playbook.tune.runner import Terminated
from playbook.tune.trial import Trial, TrialInfeasible, TrialLost

__all__ = [
    "SearchSpace",
    "Spec",
    "Real",
    "Int",
    "Discrete",
    "Categorical",
    "Fixed",
    "HParam",
    "Halton",
    "Study",
    "Trial",
    "TrialInfeasible",
    "TrialLost",
    "Terminated",
    "TrialRecord",
    "Storage",
    "SQLiteStorage",
    "open_storage",
    "list_studies",
    "studies_per_scientific_value",
    "joint_study",
    "best_per_value",
    "scientific_values",
]
