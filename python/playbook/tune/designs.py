"""The playbook's two study designs for comparing scientific hyperparameters (playbook 4.5).

1. One study per value of the scientific hyperparameters, each searching over the nuisance
   hyperparameters of that value ("the simplest case", 4.5): :func:`studies_per_scientific_value`.
   Conditional hyperparameters are no problem: the study for ``optimizer="adam"`` searches exactly
   the Adam branch.
2. One joint study whose search space includes the scientific hyperparameters (4.5, "the more
   complicated case"): :func:`joint_study`. Quasi-random search then samples the scientific
   values uniformly, which is why the playbook prefers it there.

Either way, compare values by the best trial of each (:func:`best_per_value`).
"""

from __future__ import annotations

import itertools
from typing import Any, Mapping

from playbook.tune.halton import _check_seed, new_seed
from playbook.tune.space import Categorical, Discrete, Fixed, SearchSpace, Spec
from playbook.tune.storage import Storage, TrialRecord
from playbook.tune.study import DEFAULT_STORAGE, Study

__all__ = ["scientific_values", "studies_per_scientific_value", "joint_study", "best_per_value"]


def scientific_values(space: SearchSpace) -> dict[str, tuple[Any, ...]]:
    """``{name: values}`` of the top-level scientific hyperparameters of ``space``.

    Raises:
        ValueError: a scientific hyperparameter is continuous (Real/Int: use Discrete to name
            the values to compare) or conditional.
    """
    out: dict[str, tuple[Any, ...]] = {}
    for hp in space.scientific():
        if hp.condition is not None:
            raise ValueError(
                f"Scientific hyperparameter {hp.key!r} is conditional; only top-level scientific "
                "hyperparameters can define one study per value."
            )
        spec = hp.spec
        if isinstance(spec, (Categorical, Discrete)):
            out[hp.name] = tuple(spec.values)
        elif isinstance(spec, Fixed):
            out[hp.name] = (spec.value,)
        else:
            raise ValueError(
                f"Scientific hyperparameter {hp.name!r} is {spec!r}: one study per value needs a "
                "finite set of values (Categorical or Discrete)."
            )
    return out


def _value_label(name: str, value: Any) -> str:
    return f"{name}={value}"


def studies_per_scientific_value(
    base_name: str,
    space: SearchSpace | Mapping[str, Spec],
    storage: str | Storage = DEFAULT_STORAGE,
    seed: int | None = None,
    num_trials: int = 32,
    metric: str = "val_error",
    mode: str = "min",
    notes: str = "",
) -> dict[Any, Study]:
    """One study per value of the scientific hyperparameters (playbook 4.5, simplest case).

    Each study's space is ``space.fix(**{name: value})``: the scientific hyperparameter pinned
    (``Fixed(value, role="scientific")``) and its conditional branch, if any, spliced in, so each
    study searches exactly the nuisance hyperparameters that value brings. All studies share one
    seed (drawn once when ``None``), so studies with the same nuisance dimensions see the same
    quasi-random points: a paired comparison.

    Args:
        base_name: Studies are named ``f"{base_name}/{name}={value}"`` (joined by ``,`` when
            there are several scientific hyperparameters).
        space: Search space with at least one top-level Categorical/Discrete scientific
            hyperparameter.
        storage, seed, num_trials, metric, mode, notes: As :meth:`Study.create` (``num_trials``
            is per study).

    Returns:
        ``{value: Study}`` for one scientific hyperparameter, ``{(v1, v2, ...): Study}`` over the
        Cartesian product for several.

    Example:
        >>> from playbook import tune
        >>> space = tune.SearchSpace({
        ...     "optimizer": tune.Categorical(["adam", "nesterov"], role="scientific", branches={
        ...         "adam": {"lr": tune.Real(1e-4, 1e-2, scale="log")},
        ...         "nesterov": {"lr": tune.Real(1e-3, 1.0, scale="log"),
        ...                      "momentum": tune.Real(0.8, 0.99, scale="reverse_log")}})})
        >>> studies = tune.studies_per_scientific_value("opt", space, "sqlite:///s.db",
        ...                                             num_trials=16)  # doctest: +SKIP
        >>> studies["adam"].name  # doctest: +SKIP
        'opt/optimizer=adam'
    """
    if not isinstance(space, SearchSpace):
        space = SearchSpace(space)
    values = scientific_values(space)
    if not values:
        raise ValueError(
            "The space has no scientific hyperparameter (role='scientific'); "
            f"hyperparameters: {[h.key for h in space.hyperparameters()]!r}."
        )
    seed = new_seed() if seed is None else _check_seed(seed)
    names = list(values)
    out: dict[Any, Study] = {}
    for combo in itertools.product(*(values[n] for n in names)):
        pinned = dict(zip(names, combo))
        label = ",".join(_value_label(n, v) for n, v in pinned.items())
        study = Study.create(
            f"{base_name}/{label}",
            space.fix(**pinned),
            storage,
            seed=seed,
            num_trials=num_trials,
            metric=metric,
            mode=mode,
            notes=notes,
        )
        out[combo[0] if len(names) == 1 else combo] = study
    return out


def joint_study(
    name: str,
    space: SearchSpace | Mapping[str, Spec],
    storage: str | Storage = DEFAULT_STORAGE,
    seed: int | None = None,
    num_trials: int = 32,
    metric: str = "val_error",
    mode: str = "min",
    notes: str = "",
) -> Study:
    """One study sampling scientific and nuisance hyperparameters together (playbook 4.5).

    Same as :meth:`Study.create`, after checking that the space has a scientific hyperparameter.
    Conditional branches each get their own Halton dimensions, so every scientific value gets
    about ``num_trials / k`` trials with well-spread nuisance values.
    """
    if not isinstance(space, SearchSpace):
        space = SearchSpace(space)
    if not space.scientific():
        raise ValueError(
            "joint_study needs a scientific hyperparameter (role='scientific'); "
            f"hyperparameters: {[h.key for h in space.hyperparameters()]!r}."
        )
    return Study.create(name, space, storage, seed, num_trials, metric, mode, notes)


def best_per_value(study_or_studies: Study | Mapping[Any, Study], name: str | None = None) -> dict[Any, TrialRecord | None]:
    """The best trial for each value of a scientific hyperparameter (playbook 4.5).

    Args:
        study_or_studies: The dict returned by :func:`studies_per_scientific_value`, or a joint
            study.
        name: For a joint study, the scientific hyperparameter to group by (default: the only
            top-level scientific one).

    Returns:
        ``{value: best TrialRecord or None}`` (``None`` when no trial of that value completed).
    """
    if isinstance(study_or_studies, Mapping):
        return {v: (s.best_trials(1) or [None])[0] for v, s in study_or_studies.items()}
    study = study_or_studies
    values = scientific_values(study.space)
    if name is None:
        if len(values) != 1:
            raise ValueError(f"Pass name=...: the study has scientific hyperparameters {list(values)!r}.")
        (name,) = values
    if name not in values:
        raise ValueError(f"Unknown scientific hyperparameter {name!r}; valid names: {list(values)!r}.")
    ranked = study.best_trials(k=study.num_trials)
    out: dict[Any, TrialRecord | None] = dict.fromkeys(values[name])
    for t in ranked:
        v = t.params.get(name)
        if v in out and out[v] is None:
            out[v] = t
    return out
