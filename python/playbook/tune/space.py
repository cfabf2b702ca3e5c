"""Search spaces: hyperparameter specs, roles, conditional branches (playbook 4.4, FAQ 7.5).

A :class:`SearchSpace` maps names to specs:

- :class:`Real` ``(lo, hi, scale="linear" | "log" | "reverse_log")``
- :class:`Int` ``(lo, hi, scale="linear" | "log")``
- :class:`Discrete` ``(values)``: ordered numbers (e.g. batch sizes)
- :class:`Categorical` ``(values, branches=None)``: unordered choices, optionally each bringing
  its own conditional sub-space
- :class:`Fixed` ``(value)``

Each spec carries the playbook's role (4.4): ``"nuisance"`` (default; optimized over),
``"scientific"`` (the effect we measure) or ``"fixed"`` (held constant; only :class:`Fixed`).

Conditional hyperparameters (playbook 4.4: "the value optimizer=Nesterov_momentum introduces
{learning_rate, momentum}, but optimizer=Adam introduces {learning_rate, beta1, beta2, epsilon}")
are written as ``branches`` of a categorical parent::

    Categorical(["adam", "nesterov"], role="scientific", branches={
        "adam": {"lr": Real(1e-4, 1e-2, scale="log"), "beta1": Real(0.8, 0.999, scale="reverse_log")},
        "nesterov": {"lr": Real(1e-3, 1.0, scale="log"), "momentum": Real(0.8, 0.99, scale="reverse_log")},
    })

The two ``lr`` are different hyperparameters (keys ``optimizer=adam/lr`` and
``optimizer=nesterov/lr``) with their own Halton dimensions; in ``trial.params`` both appear as
``"lr"`` (only one is ever active). Branches nest.

Every varied hyperparameter (all but :class:`Fixed`), active or not, owns one dimension of the
unit cube, so each branch is sampled by its own well-spread Halton coordinates whatever the
parent's value. Mapping from ``u`` in ``[0, 1)``:

- ``Real`` linear: ``lo + u (hi - lo)``; log: ``exp(log lo + u (log hi - log lo))``;
  reverse_log (for values close to 1 such as Adam's beta2):
  ``1 - exp(log(1 - lo) + u (log(1 - hi) - log(1 - lo)))``.
- ``Int`` linear: ``floor(lo + u (hi - lo + 1))`` clipped to ``hi`` (every integer gets the same
  share, no end bias); log: ``floor(exp(log lo + u (log(hi + 1) - log lo)))`` clipped.
- ``Discrete`` / ``Categorical``: ``values[floor(u k)]``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterator, Mapping, Sequence, Union

import numpy as np

__all__ = [
    "ROLES",
    "Spec",
    "Real",
    "Int",
    "Discrete",
    "Categorical",
    "Fixed",
    "HParam",
    "SearchSpace",
]

ROLES = ("nuisance", "scientific", "fixed")
_REAL_SCALES = ("linear", "log", "reverse_log")
_INT_SCALES = ("linear", "log")
_FORMAT_VERSION = 1
_MISSING = object()

JSONScalar = Union[str, int, float, bool, None]


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _py_scalar(x: Any) -> Any:
    """numpy scalars -> Python scalars (so params are JSON-friendly and compare simply)."""
    if isinstance(x, np.generic):
        return x.item()
    return x


def _check_role(role: object, allowed: Sequence[str] = ROLES, what: str = "") -> str:
    if role not in allowed:
        raise ValueError(f"Unknown role: {role!r}{what}. It needs to be one of {list(allowed)}.")
    return str(role)


def _same(a: Any, b: Any) -> bool:
    """Value equality that keeps ``True``, ``1`` and ``"1"`` apart (but ``1 == 1.0``)."""
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    return type(a) is type(b) and bool(a == b)


def _check_unique(values: Sequence[Any], kind: str) -> None:
    seen: list[Any] = []
    for v in values:
        if any(_same(v, s) for s in seen):
            raise ValueError(f"Duplicate value {v!r} in {kind}({list(values)!r}); values must be unique.")
        seen.append(v)


def _clip_unit(u: float) -> float:
    u = float(u)
    if not 0.0 <= u <= 1.0 or math.isnan(u):
        raise ValueError(f"Unit-cube coordinate must be in [0, 1], got {u!r}")
    return u


class Spec:
    """Base class of hyperparameter specs.

    Attributes:
        role: ``"nuisance"``, ``"scientific"`` or ``"fixed"`` (playbook 4.4).
    """

    role: str
    kind: str = ""

    @property
    def is_log(self) -> bool:
        """True for log or reverse_log scales."""
        return False

    @property
    def varied(self) -> bool:
        """True when the spec takes a Halton dimension (everything but :class:`Fixed`)."""
        return True

    def from_unit(self, u: float) -> Any:
        """Map a unit-cube coordinate ``u`` in ``[0, 1)`` to a value."""
        raise NotImplementedError

    def to_unit(self, value: Any) -> float:
        """Inverse of :meth:`from_unit` (for plots): position of ``value`` in ``[0, 1]``."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly description; :func:`spec_from_dict` reverses it."""
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.to_dict() == self.to_dict()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def __repr__(self) -> str:
        d = self.to_dict()
        d.pop("type")
        args = ", ".join(f"{k}={v!r}" for k, v in d.items())
        return f"{type(self).__name__}({args})"


class Real(Spec):
    """A real hyperparameter in ``[lo, hi]``.

    Args:
        lo: Lower bound (finite; ``> 0`` for log scale).
        hi: Upper bound (finite, ``> lo``; ``< 1`` for reverse_log scale).
        scale: ``"linear"``, ``"log"`` (learning rates, weight decay) or ``"reverse_log"``
            (values close to 1 such as momentum or Adam's beta2: ``1 - x`` is log-uniform).
        role: ``"nuisance"`` (default) or ``"scientific"`` (playbook 4.4).

    Example:
        >>> Real(1e-4, 1e-1, scale="log").from_unit(0.5)  # doctest: +ELLIPSIS
        0.00316...
    """

    kind = "real"

    def __init__(self, lo: float, hi: float, scale: str = "linear", *, role: str = "nuisance") -> None:
        if not _is_number(lo) or not math.isfinite(lo):
            raise ValueError(f"Real lower bound lo={lo!r} must be a finite number.")
        if not _is_number(hi) or not math.isfinite(hi):
            raise ValueError(f"Real upper bound hi={hi!r} must be a finite number.")
        if scale not in _REAL_SCALES:
            raise ValueError(f"Unknown scale: {scale!r}. It needs to be one of {list(_REAL_SCALES)}.")
        if not lo < hi:
            raise ValueError(f"Real needs lo < hi, got lo={lo!r} >= hi={hi!r}.")
        if scale == "log" and lo <= 0:
            raise ValueError(f"Real with scale='log' needs lo > 0, got lo={lo!r}.")
        if scale == "reverse_log" and hi >= 1:
            raise ValueError(f"Real with scale='reverse_log' needs hi < 1 (it samples 1 - x on a log scale), got hi={hi!r}.")
        self.role = _check_role(role, ("nuisance", "scientific"), f" for Real({lo!r}, {hi!r}) (use Fixed(value) for a fixed hyperparameter)")
        self.lo = float(lo)
        self.hi = float(hi)
        self.scale = str(scale)

    @property
    def is_log(self) -> bool:
        return self.scale in ("log", "reverse_log")

    def _warp(self, x: float) -> float:
        if self.scale == "log":
            return math.log(x)
        if self.scale == "reverse_log":
            return math.log1p(-x)
        return x

    def _unwarp(self, y: float) -> float:
        if self.scale == "log":
            return math.exp(y)
        if self.scale == "reverse_log":
            return -math.expm1(y)
        return y

    def from_unit(self, u: float) -> float:
        u = _clip_unit(u)
        a, b = self._warp(self.lo), self._warp(self.hi)
        return min(max(self._unwarp(a + u * (b - a)), self.lo), self.hi)

    def to_unit(self, value: float) -> float:
        a, b = self._warp(self.lo), self._warp(self.hi)
        v = min(max(float(value), self.lo), self.hi)
        return min(max((self._warp(v) - a) / (b - a), 0.0), 1.0)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "lo": self.lo, "hi": self.hi, "scale": self.scale, "role": self.role}


class Int(Spec):
    """An integer hyperparameter in ``[lo, hi]`` (both included).

    Every integer gets the same share of the unit interval (linear) or a share proportional to
    ``log((m + 1) / m)`` (log): ``floor(lo + u (hi - lo + 1))``, no end bias.

    Args:
        lo: Lower bound (``>= 1`` for log scale).
        hi: Upper bound (``> lo``).
        scale: ``"linear"`` or ``"log"``.
        role: ``"nuisance"`` (default) or ``"scientific"``.
    """

    kind = "int"

    def __init__(self, lo: int, hi: int, scale: str = "linear", *, role: str = "nuisance") -> None:
        if not _is_int(lo):
            raise ValueError(f"Int lower bound lo={lo!r} must be an int.")
        if not _is_int(hi):
            raise ValueError(f"Int upper bound hi={hi!r} must be an int.")
        if scale not in _INT_SCALES:
            raise ValueError(f"Unknown scale: {scale!r} for Int. It needs to be one of {list(_INT_SCALES)}.")
        if not lo < hi:
            raise ValueError(f"Int needs lo < hi, got lo={lo!r} >= hi={hi!r} (use Fixed for a single value).")
        if scale == "log" and lo < 1:
            raise ValueError(f"Int with scale='log' needs lo >= 1, got lo={lo!r}.")
        self.role = _check_role(role, ("nuisance", "scientific"), f" for Int({lo!r}, {hi!r}) (use Fixed(value) for a fixed hyperparameter)")
        self.lo = int(lo)
        self.hi = int(hi)
        self.scale = str(scale)

    @property
    def is_log(self) -> bool:
        return self.scale == "log"

    def _bounds(self) -> tuple[float, float]:
        if self.scale == "log":
            return math.log(self.lo), math.log(self.hi + 1)
        return float(self.lo), float(self.hi + 1)

    def from_unit(self, u: float) -> int:
        u = _clip_unit(u)
        a, b = self._bounds()
        y = a + u * (b - a)
        x = math.exp(y) if self.scale == "log" else y
        return min(max(int(math.floor(x)), self.lo), self.hi)

    def to_unit(self, value: int) -> float:
        a, b = self._bounds()
        v = min(max(float(value), self.lo), self.hi)
        if self.scale == "log":
            mid = 0.5 * (math.log(v) + math.log(v + 1))
        else:
            mid = v + 0.5
        return min(max((mid - a) / (b - a), 0.0), 1.0)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "lo": self.lo, "hi": self.hi, "scale": self.scale, "role": self.role}


class _Choice(Spec):
    values: tuple[Any, ...]

    def from_unit(self, u: float) -> Any:
        u = _clip_unit(u)
        k = len(self.values)
        return self.values[min(int(math.floor(u * k)), k - 1)]

    def index(self, value: Any) -> int:
        """Position of ``value`` in :attr:`values` (ValueError naming the valid values)."""
        for i, v in enumerate(self.values):
            if _same(v, value):
                return i
        raise ValueError(f"Unknown value {value!r} for {type(self).__name__}; valid values: {list(self.values)!r}.")

    def to_unit(self, value: Any) -> float:
        return (self.index(value) + 0.5) / len(self.values)


class Discrete(_Choice):
    """An ordered set of numbers, e.g. batch sizes ``[64, 128, 256]`` (stored sorted).

    ``values[floor(u k)]``: each value gets the same share.

    Args:
        values: At least one number, all different.
        role: ``"nuisance"`` (default) or ``"scientific"``.
    """

    kind = "discrete"

    def __init__(self, values: Sequence[float], *, role: str = "nuisance") -> None:
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) and not isinstance(values, np.ndarray):
            raise ValueError(f"Discrete values must be a list of numbers, got {values!r}.")
        values = [_py_scalar(v) for v in values]
        if not values:
            raise ValueError("Discrete needs at least one value, got [] (empty choices).")
        for v in values:
            if not _is_number(v) or not math.isfinite(v):
                raise ValueError(f"Discrete value {v!r} must be a finite number (use Categorical for other values).")
        _check_unique(values, "Discrete")
        self.role = _check_role(role, ("nuisance", "scientific"), f" for Discrete({values!r}) (use Fixed(value) for a fixed hyperparameter)")
        self.values = tuple(sorted(values))

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "values": list(self.values), "role": self.role}


class Categorical(_Choice):
    """An unordered choice, optionally with conditional sub-spaces (playbook 4.4).

    Args:
        values: At least one JSON scalar (str, int, float, bool or None), all different.
        role: ``"nuisance"`` (default) or ``"scientific"``.
        branches: Optional ``{value: {name: spec}}``: the hyperparameters each value brings
            (conditional hyperparameters). Values without a branch bring nothing. Names in a branch
            may repeat names of other branches of the same parent (they are different
            hyperparameters that are never active together) but not names of the parent level.

    Example:
        >>> opt = Categorical(["adam", "sgd"], branches={"adam": {"beta1": Real(0.8, 0.99)}})
        >>> opt.from_unit(0.7)
        'sgd'
    """

    kind = "categorical"

    def __init__(
        self,
        values: Sequence[JSONScalar],
        *,
        role: str = "nuisance",
        branches: Mapping[Any, Mapping[str, Spec]] | None = None,
    ) -> None:
        if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
            raise ValueError(f"Categorical values must be a list, got {values!r}.")
        values = [_py_scalar(v) for v in values]
        if not values:
            raise ValueError("Categorical needs at least one value, got [] (empty choices).")
        for v in values:
            if not (v is None or isinstance(v, (str, int, float, bool))):
                raise ValueError(f"Categorical value {v!r} must be a str, int, float, bool or None (JSON scalar).")
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"Categorical value {v!r} must be finite.")
        _check_unique(values, "Categorical")
        self.role = _check_role(role, ("nuisance", "scientific"), f" for Categorical({values!r}) (use Fixed(value) for a fixed hyperparameter)")
        self.values = tuple(values)
        self._branches: dict[int, dict[str, Spec]] = {}
        if branches is not None:
            if not isinstance(branches, Mapping):
                raise ValueError(f"Categorical branches must be a dict {{value: {{name: spec}}}}, got {branches!r}.")
            for value, sub in branches.items():
                value = _py_scalar(value)
                try:
                    i = self.index(value)
                except ValueError:
                    raise ValueError(
                        f"Condition on value {value!r} that the parent Categorical does not have; valid values: {list(self.values)!r}."
                    ) from None
                if not isinstance(sub, Mapping):
                    raise ValueError(f"Branch for value {value!r} must be a dict {{name: spec}}, got {sub!r}.")
                self._branches[i] = {name: _check_spec(name, spec) for name, spec in sub.items()}

    @property
    def branches(self) -> dict[Any, dict[str, Spec]]:
        """``{value: {name: spec}}`` for the values that bring a sub-space."""
        return {self.values[i]: dict(sub) for i, sub in sorted(self._branches.items())}

    def branch(self, value: Any) -> dict[str, Spec]:
        """The sub-space brought by ``value`` (empty dict when it brings nothing)."""
        return dict(self._branches.get(self.index(value), {}))

    def __repr__(self) -> str:
        args = [repr(list(self.values)), f"role={self.role!r}"]
        if self._branches:
            args.append(f"branches={self.branches!r}")
        return f"Categorical({', '.join(args)})"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.kind, "values": list(self.values), "role": self.role}
        if self._branches:
            d["branches"] = [[self.values[i], _params_to_list(sub)] for i, sub in sorted(self._branches.items())]
        return d


class Fixed(Spec):
    """A hyperparameter held at one value (playbook 4.4: a fixed hyperparameter).

    Takes no Halton dimension. ``role`` is ``"fixed"`` by default; ``"scientific"`` marks a
    scientific hyperparameter pinned to one value, as in the one-study-per-value design.

    Args:
        value: Any JSON-serializable value.
        role: ``"fixed"`` (default) or ``"scientific"``.
    """

    kind = "fixed"

    def __init__(self, value: Any, *, role: str = "fixed") -> None:
        value = _py_scalar(value)
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise ValueError(f"Fixed value {value!r} must be JSON-serializable (and finite).") from None
        self.role = _check_role(role, ("fixed", "scientific"), f" for Fixed({value!r}) (a fixed value is not searched)")
        self.value = value

    @property
    def varied(self) -> bool:
        return False

    def from_unit(self, u: float) -> Any:
        return self.value

    def to_unit(self, value: Any) -> float:
        return 0.5

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "value": self.value, "role": self.role}


_SPEC_TYPES: dict[str, type[Spec]] = {
    "real": Real,
    "int": Int,
    "discrete": Discrete,
    "categorical": Categorical,
    "fixed": Fixed,
}


def _check_spec(name: object, spec: object) -> Spec:
    if not isinstance(name, str) or not name:
        raise ValueError(f"Hyperparameter names must be non-empty strings, got {name!r}.")
    if "/" in name or "=" in name:
        raise ValueError(f"Hyperparameter name {name!r} must not contain '/' or '='.")
    if not isinstance(spec, Spec):
        raise ValueError(
            f"Hyperparameter {name!r} has spec {spec!r}; it needs to be one of Real, Int, Discrete, Categorical, Fixed."
        )
    return spec


def _params_to_list(params: Mapping[str, Spec]) -> list[dict[str, Any]]:
    return [{"name": name, **spec.to_dict()} for name, spec in params.items()]


def spec_from_dict(d: Mapping[str, Any]) -> Spec:
    """Rebuild a spec from :meth:`Spec.to_dict` output (the ``name`` key, if any, is ignored)."""
    if not isinstance(d, Mapping) or "type" not in d:
        raise ValueError(f"Spec dict needs a 'type' key, got {d!r}.")
    kind = d["type"]
    if kind not in _SPEC_TYPES:
        raise ValueError(f"Unknown spec type: {kind!r}. It needs to be one of {list(_SPEC_TYPES)}.")
    args = {k: v for k, v in d.items() if k not in ("type", "name")}
    if kind == "categorical" and "branches" in args:
        args["branches"] = {_py_scalar(v): _params_from_list(sub) for v, sub in args["branches"]}
    if kind == "fixed":
        return Fixed(args["value"], role=args.get("role", "fixed"))
    if kind in ("discrete", "categorical"):
        values = args.pop("values")
        return _SPEC_TYPES[kind](values, **args)  # type: ignore[call-arg]
    return _SPEC_TYPES[kind](args.pop("lo"), args.pop("hi"), **args)  # type: ignore[call-arg]


def _params_from_list(items: Sequence[Mapping[str, Any]]) -> dict[str, Spec]:
    if not isinstance(items, Sequence):
        raise ValueError(f"Expected a list of hyperparameter dicts, got {items!r}.")
    out: dict[str, Spec] = {}
    for item in items:
        if not isinstance(item, Mapping) or "name" not in item:
            raise ValueError(f"Hyperparameter dict needs a 'name' key, got {item!r}.")
        if item["name"] in out:
            raise ValueError(f"Duplicate hyperparameter name {item['name']!r} in the same level.")
        out[item["name"]] = spec_from_dict(item)
    return out


@dataclass(frozen=True, eq=False)
class HParam:
    """One leaf of a search space (conditional ones included).

    Attributes:
        key: Unique id: ``"lr"`` at the top level, ``"optimizer=adam/lr"`` inside a branch.
        name: The key used in ``trial.params`` (``"lr"``).
        spec: The :class:`Real` / :class:`Int` / :class:`Discrete` / :class:`Categorical` /
            :class:`Fixed` object.
        condition: ``None`` at the top level, else ``(parent_name, parent_value)``.
        path: All conditions from the top level down, ``((parent_name, value), ...)``.
        dim: Index of its Halton dimension, ``None`` for non-varied ones.
    """

    key: str
    name: str
    spec: Spec
    condition: tuple[str, Any] | None
    path: tuple[tuple[str, Any], ...]
    dim: int | None

    @property
    def role(self) -> str:
        """``"nuisance"``, ``"scientific"`` or ``"fixed"`` (playbook 4.4)."""
        return self.spec.role

    @property
    def varied(self) -> bool:
        """False for :class:`Fixed` specs (and role ``"fixed"``)."""
        return self.spec.varied and self.role != "fixed"

    def active(self, params: Mapping[str, Any]) -> bool:
        """Whether this hyperparameter is in effect for ``params`` (all its conditions hold)."""
        for parent, value in self.path:
            got = params.get(parent, _MISSING)
            if got is _MISSING or not _same(got, value):
                return False
        return True

    def __repr__(self) -> str:
        return f"HParam(key={self.key!r}, spec={self.spec!r})"


def _exclusive(a: tuple[tuple[str, Any], ...], b: tuple[tuple[str, Any], ...]) -> bool:
    """True when two condition paths can never hold together (same parent, different value)."""
    for (pa, va), (pb, vb) in zip(a, b):
        if pa != pb:
            return False
        if not _same(va, vb):
            return True
    return False


class SearchSpace:
    """A search space: names mapped to specs, with conditional branches (playbook 4.4, 7.5).

    Args:
        params: ``{name: spec}`` in the order the hyperparameters should get Halton dimensions.

    Example:
        >>> space = SearchSpace({
        ...     "optimizer": Categorical(["adam", "nesterov"], role="scientific", branches={
        ...         "adam": {"lr": Real(1e-4, 1e-2, scale="log")},
        ...         "nesterov": {"lr": Real(1e-3, 1.0, scale="log"), "momentum": Real(0.8, 0.99)},
        ...     }),
        ...     "dropout": Fixed(0.1),
        ... })
        >>> [h.key for h in space.hyperparameters()]
        ['optimizer', 'optimizer=adam/lr', 'optimizer=nesterov/lr', 'optimizer=nesterov/momentum', 'dropout']
        >>> space.num_dims
        4
        >>> sorted(space.sample(0, seed=0))
        ['dropout', 'lr', 'optimizer']
    """

    def __init__(self, params: Mapping[str, Spec]) -> None:
        if isinstance(params, SearchSpace):
            params = params.params
        if not isinstance(params, Mapping):
            raise ValueError(f"SearchSpace needs a dict {{name: spec}}, got {params!r}.")
        self.params: dict[str, Spec] = {name: _check_spec(name, spec) for name, spec in params.items()}
        self._hparams = self._flatten()

    def _flatten(self) -> list[HParam]:
        out: list[HParam] = []
        dim = 0

        def walk(params: Mapping[str, Spec], prefix: str, path: tuple[tuple[str, Any], ...]) -> None:
            nonlocal dim
            for name, spec in params.items():
                key = f"{prefix}{name}"
                varied = spec.varied and spec.role != "fixed"
                hp = HParam(
                    key=key,
                    name=name,
                    spec=spec,
                    condition=path[-1] if path else None,
                    path=path,
                    dim=dim if varied else None,
                )
                dim += int(varied)
                out.append(hp)
                if isinstance(spec, Categorical):
                    for i, value in enumerate(spec.values):
                        if i in spec._branches:
                            walk(spec._branches[i], f"{key}={value}/", path + ((name, value),))

        walk(self.params, "", ())
        by_name: dict[str, list[HParam]] = {}
        for hp in out:
            for other in by_name.get(hp.name, []):
                if not _exclusive(hp.path, other.path):
                    raise ValueError(
                        f"Hyperparameter name {hp.name!r} is used by both {other.key!r} and {hp.key!r}, "
                        "which can be active together; rename one."
                    )
            by_name.setdefault(hp.name, []).append(hp)
        keys = [hp.key for hp in out]
        if len(set(keys)) != len(keys):
            raise ValueError(f"Duplicate hyperparameter keys in {keys!r}.")
        return out

    # -- structure --------------------------------------------------------------------------------

    def hyperparameters(self) -> list[HParam]:
        """Every leaf, conditional ones included, depth first in definition order."""
        return list(self._hparams)

    def __getitem__(self, key: str) -> HParam:
        for hp in self._hparams:
            if hp.key == key:
                return hp
        raise KeyError(f"No hyperparameter with key {key!r}; keys: {[h.key for h in self._hparams]!r}")

    def __iter__(self) -> Iterator[HParam]:
        return iter(self._hparams)

    def __len__(self) -> int:
        return len(self._hparams)

    @property
    def num_dims(self) -> int:
        """Number of Halton dimensions (varied hyperparameters, conditional ones included)."""
        return sum(hp.dim is not None for hp in self._hparams)

    def by_role(self, role: str) -> list[HParam]:
        """Hyperparameters with the given role (``"nuisance"``, ``"scientific"``, ``"fixed"``)."""
        _check_role(role)
        return [hp for hp in self._hparams if hp.role == role]

    def scientific(self) -> list[HParam]:
        """The scientific hyperparameters (playbook 4.4)."""
        return self.by_role("scientific")

    # -- sampling ---------------------------------------------------------------------------------

    def point_to_params(self, u: Sequence[float] | np.ndarray) -> dict[str, Any]:
        """Map a point of ``[0, 1)^num_dims`` to the flat params dict a trial sees.

        Inactive conditional hyperparameters are left out; fixed ones are included.

        Args:
            u: One coordinate per Halton dimension (see :attr:`num_dims`).

        Returns:
            ``{name: value}`` with Python scalars.
        """
        u = np.asarray(u, dtype=np.float64).reshape(-1)
        if u.shape[0] != self.num_dims:
            raise ValueError(f"Point has {u.shape[0]} coordinates, the space has {self.num_dims} dimensions.")
        params: dict[str, Any] = {}
        for hp in self._hparams:
            if not hp.active(params):
                continue
            if hp.dim is None:
                params[hp.name] = hp.spec.from_unit(0.5)
            else:
                params[hp.name] = _py_scalar(hp.spec.from_unit(float(u[hp.dim])))
        return params

    def sample(self, i: int, seed: int) -> dict[str, Any]:
        """Params of trial ``i``: a pure function of ``(space, seed, i)`` (playbook 7.5).

        Uses point ``i`` of the scrambled :class:`~playbook.tune.halton.Halton` sequence of
        dimension :attr:`num_dims` seeded with ``seed``.
        """
        return self.samples([i], seed)[0]

    def samples(self, indices: Sequence[int] | int, seed: int) -> list[dict[str, Any]]:
        """Params for several trial indices (``int n`` means ``range(n)``)."""
        from playbook.tune.halton import _check_seed, halton_points

        idx = np.arange(indices) if isinstance(indices, (int, np.integer)) else np.asarray(indices, dtype=np.int64)
        seed = _check_seed(seed)
        if self.num_dims == 0:
            return [self.point_to_params(np.zeros(0)) for _ in idx]
        pts = halton_points(idx, self.num_dims, scramble=True, seed=seed)
        return [self.point_to_params(p) for p in pts]

    # -- transformations --------------------------------------------------------------------------

    def fix(self, **values: Any) -> SearchSpace:
        """A copy with top-level hyperparameters pinned: ``space.fix(optimizer="adam")``.

        The pinned hyperparameter becomes ``Fixed(value, role=...)`` keeping the scientific role
        if it had it (``"fixed"`` otherwise), and the branch of that value, if any, is spliced in
        right after it (its hyperparameters lose the ``optimizer=adam/`` key prefix). Used by the
        one-study-per-scientific-value design (playbook 4.4).
        """
        for name in values:
            if name not in self.params:
                raise ValueError(f"Cannot fix {name!r}: not a top-level hyperparameter; valid names: {list(self.params)!r}.")
        new: dict[str, Spec] = {}
        for name, spec in self.params.items():
            if name not in values:
                new[name] = spec
                continue
            value = _py_scalar(values[name])
            role = "scientific" if spec.role == "scientific" else "fixed"
            if isinstance(spec, _Choice):
                value = spec.values[spec.index(value)]
            elif isinstance(spec, Fixed):
                if spec.value != value:
                    raise ValueError(f"Cannot fix {name!r} to {value!r}: it is Fixed({spec.value!r}).")
            elif isinstance(spec, (Real, Int)):
                if not _is_number(value) or not spec.lo <= value <= spec.hi:
                    raise ValueError(f"Cannot fix {name!r} to {value!r}: outside [{spec.lo}, {spec.hi}].")
            new[name] = Fixed(value, role=role)
            if isinstance(spec, Categorical):
                for sub_name, sub_spec in spec.branch(value).items():
                    if sub_name in self.params or sub_name in new:
                        raise ValueError(f"Cannot splice branch {name}={value!r}: name {sub_name!r} exists at the top level.")
                    new[sub_name] = sub_spec
        return SearchSpace(new)

    # -- serialization ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly dict (what a study stores as its config)."""
        return {"version": _FORMAT_VERSION, "params": _params_to_list(self.params)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SearchSpace:
        """Rebuild a space from :meth:`to_dict` output (validated like the constructor)."""
        if not isinstance(d, Mapping) or "params" not in d:
            raise ValueError(f"SearchSpace dict needs a 'params' key, got {d!r}.")
        version = d.get("version", _FORMAT_VERSION)
        if version != _FORMAT_VERSION:
            raise ValueError(f"Unknown SearchSpace format version {version!r}; this library reads version {_FORMAT_VERSION}.")
        return cls(_params_from_list(d["params"]))

    def to_json(self) -> str:
        """:meth:`to_dict` as a JSON string."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, s: str) -> SearchSpace:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(s))

    @cached_property
    def _canonical(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SearchSpace) and other._canonical == self._canonical

    def __hash__(self) -> int:
        return hash(self._canonical)

    def __repr__(self) -> str:
        inner = ", ".join(f"{name!r}: {spec!r}" for name, spec in self.params.items())
        return f"SearchSpace({{{inner}}})"
